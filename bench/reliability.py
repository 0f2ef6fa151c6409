"""Runs the reliability checks and records what they tried and found, as
bench/run.py does for speed: `run` writes JSON, `render` turns it into
docs/reliability.md (never typed by hand).

    python bench/reliability.py run --fuzz-runs 100000 --live-rounds 20000 --kills 300 \
        --stateful-examples 1000 --race-runs 30 --json bench/reliability.json
    python bench/reliability.py render bench/reliability.json > docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: str = ROOT) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def fuzz(runs: int) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="shfuzz_")
    corpus = os.path.join(ROOT, "tests", "fuzz", "corpus")
    for name in os.listdir(corpus):
        shutil.copy(os.path.join(corpus, name), work)
    cmd = [
        sys.executable,
        "tests/fuzz/fuzz_arena.py",
        work,
        "-timeout=5",
        f"-runs={runs}",
        f"-artifact_prefix={work}/",
    ]
    rc, out, secs = _run(cmd)
    done = re.search(r"Done (\d+) runs", out)
    artifacts = [n for n in os.listdir(work) if n.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    keep = os.path.join(ROOT, "bench", "fuzz-artifacts")
    for (
        name
    ) in artifacts:  # kept for the corpus: a failure is replayed by tests/fuzz/test_corpus.py once added
        os.makedirs(keep, exist_ok=True)
        shutil.copy(os.path.join(work, name), keep)
    shutil.rmtree(work)
    return {
        "name": "damaged-arena fuzzing (atheris)",
        "command": " ".join(["python", *cmd[1:2], "<copy of tests/fuzz/corpus>", *cmd[3:5]]),
        "cases": int(done.group(1)) if done else 0,
        "failures": len(artifacts) + (rc != 0 and not artifacts),
        "seconds": round(secs, 1),
        "detail": out[-1500:] if rc != 0 else "",
        "what": "byte and word writes into every region of a closed 4 MiB heap left by a killed process, "
        "then attach, check, stats, collect, allocations in every partition (offsets checked against "
        "the mapping and the partition), frees, an agent's life, and a channel the killed process left "
        "with a plain and a leased message queued (stats, a send, every message received, each checked "
        "against `comm`); a crash, a hang over 5 s or an offset outside its partition fails",
    }


def live_damage(rounds: int) -> dict[str, Any]:
    cmd = [sys.executable, "tests/fuzz/live_damage.py", str(rounds), "1"]
    rc, out, secs = _run(cmd)
    done = re.search(r"(\d+) rounds from seed \d+, (\d+) failures", out)
    return {
        "name": "damage to an attached heap",
        "command": " ".join(["python", *cmd[1:]]),
        "cases": int(done.group(1)) if done else 0,
        "failures": int(done.group(2)) if done else 1,
        "seconds": round(secs, 1),
        "detail": out[-1500:] if rc != 0 else "",
        "what": "the same writes into the tables of a heap this process has attached and is using (its own "
        "blocks, an agent, an agent offloaded to SQLite, a LangGraph thread, bound thread caches), so "
        "values it reads again from the arena, the header's included, may be damaged; then the "
        "offloaded agent restored and the thread read, check, stats, collect, info, allocations in "
        "every partition checked against it, frees, agents' lives (a large entry, a snapshot "
        "restored), the listings and the channels, one forked child per seeded round; a crash, a hang "
        "over 5 s, an exception that is not a named error or a block outside its partition fails",
    }


def pytest_case(
    name: str, path: str, env: dict[str, str], cases: int, what: str, options: list[str] | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(options or []), *path.split()]
    rc, out, secs = _run(cmd, env)
    failed = re.search(r"(\d+) failed", out)
    env_prefix = " ".join(f"{k}={v}" for k, v in env.items())
    return {
        "name": name,
        "command": (env_prefix + " " if env_prefix else "")
        + " ".join(["python -m pytest", *(options or []), path]),
        "cases": cases if rc == 0 else 0,
        "failures": int(failed.group(1)) if failed else int(rc != 0),
        "seconds": round(secs, 1),
        "detail": out[-1500:] if rc != 0 else "",
        "what": what,
    }


def run(args: argparse.Namespace) -> None:
    results = [
        fuzz(args.fuzz_runs),
        live_damage(args.live_rounds),
        pytest_case(
            "corpus replay",
            "tests/fuzz/test_corpus.py",
            {},
            len(os.listdir(os.path.join(ROOT, "tests", "fuzz", "corpus"))),
            "every committed fuzz input (seeds and past finds) in a child process",
        ),
        pytest_case(
            "stateful model (hypothesis)",
            "tests/unit/test_stateful.py",
            {},
            60,
            "up to 30 random steps per example of alloc, free, resolve of live and stale handles (here and "
            "in a second process), spawn, put, get, pin, unpin, complete, collect; check() after each step",
        ),
        pytest_case(
            "stateful model of agents' lives (hypothesis)",
            "tests/unit/test_stateful_lives.py",
            {"SWARMHEAP_STATEFUL_EXAMPLES": str(args.stateful_examples)},
            2 * args.stateful_examples,
            "up to 40 random steps per example, in a plain heap and in one whose offload policy acts on "
            "its own: spawn (reserved or not), put, put_many and delete of entries from nursery size to "
            "past a page, reads, pins, agent blocks (checked, freed, stale after an offload or a "
            "recycle), snapshots restored as new agents (an offloaded agent's from the store), offload "
            "and restore (explicit and by a touch), complete of live, pinned and offloaded agents, a "
            "channel against a deque, sweeps; check() after each step",
        ),
        pytest_case(
            "SwarmSaver against InMemorySaver (hypothesis)",
            "tests/unit/test_langgraph_stateful.py",
            {"SWARMHEAP_STATEFUL_EXAMPLES": str(args.stateful_examples)},
            args.stateful_examples,
            "up to 40 random steps per example of the saver API on both savers: puts on three threads "
            "and two namespaces with forks, channels changed, grown, emptied and left alone, pending "
            "writes of several task paths (special ones among them), reads by id and of the latest, "
            "listings with filters, before and limit, thread deletions, copy_thread, prune and "
            "delete_for_runs; an 8 MiB heap whose offload "
            "policy sends threads to SQLite as they go cold; every answer must be the reference's",
        ),
        pytest_case(
            "keep=N's trim from what the saver knows against the reading trim (hypothesis)",
            "tests/unit/test_langgraph_keep.py",
            {"SWARMHEAP_STATEFUL_EXAMPLES": str(args.stateful_examples)},
            args.stateful_examples,
            "up to 30 random calls per example on two savers with keep=1-5, one trimming from what it "
            "knows (lgkeep), one reading the thread at every trim: puts, forks from older checkpoints, "
            "a checkpoint put again, values no checkpoint names, pending writes, another writer's puts, "
            "offloads to SQLite; the threads' entries and checkpoints compared after every call",
        ),
        pytest_case(
            "writers in processes racing (repeated)",
            "tests/unit/test_langgraph_keep.py::"
            "test_writers_in_processes_forking_one_thread_with_keep_read_back_right "
            "tests/unit/test_langgraph_keep.py::"
            "test_writers_in_processes_on_threads_that_go_to_the_store_and_back_read_back_right "
            "tests/unit/test_offload.py::test_processes_sharing_agents_under_pressure_read_back_right",
            {},
            3 * args.race_runs,
            "three processes at once, each test run again and again (pytest-repeat, --count): putting to and "
            "forking one LangGraph thread with keep=3, with pending writes, copies and deletes of runs; "
            "stepping and forking 100 threads in an 8 MiB heap whose threads go to an SQLite store and back "
            "in whichever process touches them; putting, deleting, reading, sweeping, offloading and "
            "snapshotting 40 shared agents in an 8 MiB heap; every value read names its entry and version "
            "and must be that version's bytes",
            [f"--count={args.race_runs}"],
        ),
        pytest_case(
            "crash matrix",
            "tests/unit/test_crash_matrix.py",
            {"SWARMHEAP_CRASH_KILLS": str(args.kills)},
            args.kills,
            "SIGKILLs of workers in tight loops of alloc/free, spawn/complete, put/get and pin/unpin; after "
            "each: sweep, check(), no agent of the dead left, survivors' data verified; at the end "
            "`shared` and `comm` back to their baseline exactly, `context` and `system` within 4 KiB "
            "per hundred kills (two take-then-record windows, docs/design.md)",
        ),
    ]
    doc = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def render(args: argparse.Namespace) -> None:
    with open(args.json) as f:
        doc = json.load(f)
    print("# Reliability runs\n")
    print("Generated by `python bench/reliability.py render bench/reliability.json` from the JSON that")
    print("`python bench/reliability.py run` wrote; not typed. Rerun each check with its command.\n")
    print(f"Machine: {doc['machine']}; run on {doc['date']}.\n")
    print("| check | cases tried | failures | seconds | command |")
    print("|---|---:|---:|---:|---|")
    for r in doc["results"]:
        print(f"| {r['name']} | {r['cases']:,} | {r['failures']} | {r['seconds']} | `{r['command']}` |")
    print()
    for r in doc["results"]:
        print(f"- **{r['name']}**: {r['what']}.")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run the checks and write JSON")
    p.add_argument("--fuzz-runs", type=int, default=100_000)
    p.add_argument("--kills", type=int, default=300)
    p.add_argument("--live-rounds", type=int, default=20_000)
    p.add_argument("--stateful-examples", type=int, default=1000)
    p.add_argument("--race-runs", type=int, default=30)
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "reliability.json"))
    r = sub.add_parser("render", help="JSON to markdown")
    r.add_argument("json")
    args = parser.parse_args()
    run(args) if args.cmd == "run" else render(args)


if __name__ == "__main__":
    main()
