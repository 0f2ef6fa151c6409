"""A thousand seeded rounds of damage to a heap while it is attached and in
use (live_damage.py), in a child process: the seeds are fixed, so a round
that once crashed or hung stays in the run as a regression."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_damage_to_an_attached_heap_gets_answers_not_crashes() -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "live_damage.py"), "1000", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1000 rounds from seed 1, 0 failures" in proc.stdout
