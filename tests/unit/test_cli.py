"""The `swarmheap` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

import swarmheap as sh

pytest.importorskip("matplotlib", reason="the chart checks need the test extra (matplotlib)")


def swarmheap(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmheap", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_png(path: Path) -> tuple[int, int]:
    """A PNG whose chunks all carry correct CRCs; returns (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    return width, height


def shm_entries(prefix: str) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}


def pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def run_leaving_no_heap(
    out: Path, command: str, plot: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """Run `swarmheap COMMAND --quick` with --json and --plot into `out`; assert its heap is gone."""
    prefix = f"swarmheap-{command}-"
    before = shm_entries(prefix)
    run = swarmheap(command, "--quick", "--json", str(out / f"{command}.json"), "--plot", str(out / plot))
    # a heap is named by its process id: one whose process still runs is
    # another run's (a second test session on the machine), not a leftover
    left = {name for name in shm_entries(prefix) - before if not pid_alive(name.rsplit("-", 1)[-1])}
    assert not left, f"{command} left its heap in /dev/shm: {sorted(left)}"
    path = out / f"{command}.json"
    return run, (json.loads(path.read_text()) if path.exists() else {}), out


# ---- demo -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    return run_leaving_no_heap(tmp_path_factory.mktemp("demo"), "demo", "demo.png")


def test_demo_exits_zero_with_a_passing_check(demo_run: Any) -> None:
    run, report, _ = demo_run
    assert run.returncode == 0, run.stderr
    assert report["check_passed"] is True and report["check_message"] == "ok"
    assert [line.split()[-1] for line in run.stdout.splitlines() if line.strip().startswith("check()")] == [
        "passed"
    ]


def test_demo_report_shows_the_swarm_the_kill_and_the_sweep(demo_run: Any) -> None:
    _, report, _ = demo_run
    from swarmheap.tools.demo import ARCHIVE_EVERY, NOTES_PER_ROUND

    archives = -(-20 // ARCHIVE_EVERY)  # one in round 0, one every ARCHIVE_EVERY rounds after
    assert report["workers"] == 4
    # three survivors ran 20 agents, a memory agent, 20 rounds of small notes and their archives each
    assert report["notes"] == 3 * 20 * NOTES_PER_ROUND and report["note_bytes"] > 0
    assert report["archives"] == 3 * archives and report["archive_errors"] == 0
    assert report["agents_run"] == 3 * (20 + 1 + 20 * NOTES_PER_ROUND + archives) + report["agents_swept"]
    assert report["buffers_handed_over"] > 0 and report["bytes_moved_zero_copy"] > 0
    assert report["reclaimed_by_recycle"] > 0
    # the killed worker (at round 10) held its memory agent, the agent of that
    # round, the notes of its first 11 rounds (fewer than it keeps) and 3 archives;
    # a short run never passes the offload policy's mark
    assert report["pressure_offloads"] == 0 and report["stayed_offloaded"] == 0
    assert report["agents_per_worker"] == 20
    assert report["agents_swept"] == 2 + 11 * NOTES_PER_ROUND + 3 and report["reclaimed_by_sweep"] > 0
    assert report["handover_errors"] == 0 and report["workers_failed"] == []
    assert [e["event"] for e in report["events"]] == ["killed", "swept"]
    assert all({"t", "context", "shared", "comm", "system"} <= set(s) for s in report["samples"])
    assert report["samples"][-1]["context"] == 0.0  # everything came back


def test_demo_resumes_the_killed_worker_s_langgraph_thread_from_the_arena(demo_run: Any) -> None:
    run, report, _ = demo_run
    from swarmheap.tools.demo import GRAPH_TURNS

    if importlib.util.find_spec("langgraph") is None:
        assert "not installed" in report["graph"]
        return
    assert report["graph"] == ""
    # the killed worker ran a turn every 20 // GRAPH_TURNS rounds up to round
    # 10, where it was killed; each turn appends three log entries (its
    # input, plan, act) and writes one checkpoint per step
    turns = 10 // (20 // GRAPH_TURNS) + 1
    assert report["graph_turns"] == turns
    assert report["resumed_from"] == 3 * turns
    assert report["resumed_to"] == report["resumed_from"] + 3 and report["resumed_intact"] is True
    assert report["graph_checkpoints"] >= 3 * turns and report["graph_bytes"] > 0
    assert "intact), " in run.stdout


def test_demo_plot_is_a_valid_png(demo_run: Any) -> None:
    assert_png(demo_run[2] / "demo.png")


def test_demo_refuses_a_single_worker() -> None:
    run = swarmheap("demo", "--quick", "--workers", "1")
    assert run.returncode == 1
    assert "at least 2 workers" in run.stderr and "Traceback" not in run.stderr


# ---- stats ----------------------------------------------------------------


@pytest.fixture
def busy_heap(heap_name: str) -> Any:
    heap = sh.Heap.create(heap_name, size="16 MiB")
    agent = heap.spawn("researcher")
    agent.put("notes", b"x" * 5000)
    blk = heap.alloc(1000, "shared")
    yield heap, agent
    blk.free()
    heap.close()


def test_stats_json_matches_the_heap(busy_heap: Any, heap_name: str) -> None:
    heap, agent = busy_heap
    run = swarmheap("stats", heap_name, "--json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    want = heap.stats()
    assert set(got) >= {"size", "page_size", "partitions", "classes", "owners"}
    assert got["partitions"] == want["partitions"]
    for part in got["partitions"].values():
        assert set(part) >= {"capacity", "in_use", "peak", "failures", "allocs", "frees"}
    assert agent.id in {o["id"] for o in got["owners"]}
    heap.check()


def test_stats_table_names_partitions_and_agents(busy_heap: Any, heap_name: str) -> None:
    run = swarmheap("stats", heap_name)
    assert run.returncode == 0, run.stderr
    words = ("partitions", "context", "shared", "comm", "system", "size classes", "owners", "thread caches")
    for word in words:
        assert word in run.stdout
    # the waste, named: bytes held in pages against bytes in use, per partition
    header = next(line for line in run.stdout.splitlines() if line.strip().startswith("partition "))
    assert "held" in header.split() and "utilization" in header.split()
    context = next(line for line in run.stdout.splitlines() if line.strip().startswith("context "))
    context_util = busy_heap[0].stats()["partitions"]["context"]["utilization"]
    assert f"{context_util * 100:.1f}%" in context.split()
    assert "researcher" in run.stdout  # owners by kind


def test_stats_into_a_closed_pipe_exits_quietly(busy_heap: Any, heap_name: str) -> None:
    # `swarmheap stats NAME | head -1`: the reader gone before the first line
    # is written (its end closed before the command starts, so always)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "swarmheap", "stats", heap_name],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 128 + signal.SIGPIPE


def test_stats_names_each_langgraph_thread(heap_name: str) -> None:
    pytest.importorskip("langgraph.checkpoint.base")
    from langgraph.checkpoint.base import empty_checkpoint

    from swarmheap.langgraph import SwarmSaver

    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        saver = SwarmSaver(heap)
        for thread in ("chat-1", "chat-2"):
            cp = empty_checkpoint()
            saver.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, cp, {}, {})
        run = swarmheap("stats", heap_name)
        assert run.returncode == 0, run.stderr
        assert "langgraph (thread 'chat-1')" in run.stdout and "langgraph (thread 'chat-2')" in run.stdout
        got = json.loads(swarmheap("stats", heap_name, "--json").stdout)
        assert sorted(o["thread"] for o in got["owners"] if o["thread"]) == ["chat-1", "chat-2"]
        saver.delete_thread("chat-1")
        saver.delete_thread("chat-2")


def test_stats_of_a_missing_heap_is_one_line_and_exit_1() -> None:
    run = swarmheap("stats", "shtest_no_such_heap")
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "no heap named" in run.stderr


def test_stats_does_not_change_the_heap(busy_heap: Any, heap_name: str) -> None:
    heap, _ = busy_heap
    before = heap.stats()
    assert swarmheap("stats", heap_name, "--json").returncode == 0
    assert heap.stats() == before


# ---- bench ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    return run_leaving_no_heap(tmp_path_factory.mktemp("bench"), "bench", "charts")


def test_bench_exits_zero_and_prints_tables(bench_run: Any) -> None:
    run, _, _ = bench_run
    assert run.returncode == 0, run.stderr
    assert "ratio" in run.stdout and "targets" in run.stdout


def test_bench_json_schema(bench_run: Any) -> None:
    _, results, _ = bench_run
    assert results["schema"] == 1 and results["quick"] is True and results["repeats"] >= 3
    assert results["command"] == "swarmheap bench --quick"
    assert results["commit"] is None or re.fullmatch(r"[0-9a-f]{12}(\+changes)?", results["commit"])
    names = [w["name"] for w in results["workloads"]]
    for required in (
        "pairs_64B",
        "pairs_mixed",
        "alloc_many_64B",
        "shared_4KiB",
        "agent_churn",
        "handoff_1.0MiB",
        "handoff_64.0MiB",
        "recycle_100k",
        "young_sweep",
    ):
        assert required in names
    for w in results["workloads"]:
        assert isinstance(w["what"], str) and w["what"]
        assert len(w["cases"]) >= 2 and w["cases"][0]["label"] in ("swarmheap", "young, 10k old")
        for c in w["cases"]:
            assert c["repeats"] == results["repeats"]
            assert 0 < c["min_ns"] <= c["median_ns"] <= c["max_ns"]
        assert set(w["ratios"]) == {c["label"] for c in w["cases"][1:]}
        assert all(r > 0 for r in w["ratios"].values())
        if "target" in w:
            assert isinstance(w["target"]["met"], bool)
    c = results["c_core"]
    assert "skipped" in c or {"workloads", "recycle_100k_s", "free_100k_s", "metadata_percent"} <= set(c)


def test_bench_names_the_commit_it_measured(tmp_path: Path) -> None:
    from swarmheap.tools.benchmarks import source_commit

    assert source_commit(tmp_path) is None  # not a git checkout: said so, not guessed

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "--short=12", "HEAD")
    assert source_commit(tmp_path) == head
    (tmp_path / "b.py").write_text("untracked: not the measured code's\n")
    assert source_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == head + "+changes"
    inside = tmp_path / "venv" / "site-packages"  # an install inside a checkout is not that checkout's code
    inside.mkdir(parents=True)
    (inside / "c.py").write_text("")
    assert source_commit(inside) is None


def test_results_md_says_which_commit_it_measured() -> None:
    script = Path(__file__).resolve().parents[2] / "bench" / "make_results.py"
    spec = importlib.util.spec_from_file_location("make_results", script)
    assert spec is not None and spec.loader is not None
    make_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_results)
    assert make_results.code({"commit": "0123456789ab+changes"}) == "commit 0123456789ab+changes"
    assert "not recorded" in make_results.code({})


def test_bench_charts_are_valid_pngs(bench_run: Any) -> None:
    charts = bench_run[2] / "charts"
    assert sorted(p.name for p in charts.iterdir()) == ["latency_by_size.png", "ratios.png"]
    for png in charts.iterdir():
        assert_png(png)


def test_bench_only_runs_one_workload(tmp_path: Path) -> None:
    run = swarmheap("bench", "--quick", "--only", "pairs_64B", "--json", str(tmp_path / "one.json"))
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "one.json").read_text())
    assert [w["name"] for w in results["workloads"]] == ["pairs_64B"] and results["c_core"] is None


def test_bench_only_with_an_unknown_name_lists_the_workloads() -> None:
    run = swarmheap("bench", "--quick", "--only", "nonsense")
    assert run.returncode == 1
    assert "no workload named 'nonsense'" in run.stderr and "pairs_64B" in run.stderr
    assert "Traceback" not in run.stderr


def test_command_without_a_subcommand_is_a_usage_error() -> None:
    run = swarmheap()
    assert run.returncode == 2 and "usage" in run.stderr
