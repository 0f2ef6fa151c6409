"""Every committed fuzz input (the seeds and what the fuzzer once found)
replayed against the damaged-arena target, in a child process: a crash there
is a failed exit, not a dead test run."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

REPLAY = """
import os, sys
sys.path.insert(0, {here!r})
from arena_target import Target
if __name__ == "__main__":
    target = Target()
    for path in sorted(os.listdir({corpus!r})):
        with open(os.path.join({corpus!r}, path), "rb") as f:
            target(f.read())
    print("replayed", len(os.listdir({corpus!r})))
"""


def test_corpus_replays_without_a_crash(tmp_path: object) -> None:
    script = os.path.join(str(tmp_path), "replay.py")
    with open(script, "w") as f:
        f.write(REPLAY.format(here=HERE, corpus=CORPUS))
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"replayed {len(os.listdir(CORPUS))}" in proc.stdout
