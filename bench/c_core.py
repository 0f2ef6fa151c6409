"""Build and run bench/c's benchmark of the C core against glibc, jemalloc and
mimalloc; print its figures as JSON. `swarmheap bench` runs this script when
it finds it (a source checkout): the installed package carries no C
benchmark and runs no make."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "c"


def c_core() -> dict[str, Any]:
    if shutil.which("make") is None or shutil.which("cc") is None:
        return {"skipped": "make and a C compiler are needed to build bench/c"}
    build = subprocess.run(
        ["make", "-s", "-C", str(HERE), "build/bench_core"], capture_output=True, text=True
    )
    if build.returncode:
        return {"skipped": f"bench/c did not build: {build.stderr.strip()[-300:]}"}
    env = dict(os.environ, GLIBC_TUNABLES="glibc.rtld.optional_static_tls=16384")  # jemalloc's TLS, dlopen'ed
    run = subprocess.run(
        [str(HERE / "build" / "bench_core"), "--json"], capture_output=True, text=True, env=env
    )
    if run.returncode:
        return {"skipped": f"bench_core failed: {run.stderr.strip()[-300:]}"}
    result: dict[str, Any] = json.loads(run.stdout)
    result["notes"] = [line for line in run.stderr.splitlines() if line.startswith("note:")]
    result["command"] = "bash bench/c/run.sh"
    return result


if __name__ == "__main__":
    json.dump(c_core(), sys.stdout)
