"""atheris entry: python tests/fuzz/fuzz_arena.py tests/fuzz/corpus -timeout=5 -max_total_time=120

The extension is built with gcc, so libFuzzer's coverage comes from the
Python layer only (atheris instruments it); the C core is reached by the
region-aimed mutations, and a hang is caught by -timeout. See
docs/reliability.md for the recorded runs.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import atheris

with atheris.instrument_imports():
    from arena_target import Target

    import swarmheap  # noqa: F401

if __name__ == "__main__":
    target = Target()
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
