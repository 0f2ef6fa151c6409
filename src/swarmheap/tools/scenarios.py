"""Scenario workloads: benches whose figures are not one time per operation
(messages per second, MiB/s, compression ratios, failure counts) and whose
peers run in other processes or against stores. Each scenario is a function
`run(quick) -> dict` in its own module, returning:

    {"name", "what", "columns": [...], "rows": [[str, ...], ...],
     "notes": [str, ...], "targets": [{"text", "measured", "met"}, ...],
     "data": {...}}   # the raw measured numbers the rows were made from

`swarmheap bench` runs them after the timed workloads; bench/make_results.py
renders them from the JSON. A peer that is not installed is a row that says
so, never a figure."""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Sequence
from typing import Any

from swarmheap.tools.report import table

__all__ = ["NAMES", "Target", "render", "run", "target"]

# name -> module under swarmheap.tools with a run(quick) function
_MODULES = {
    "snapshot_compress": "bench_tiers",
    "offload_restore": "bench_tiers",
    "pressure": "bench_tiers",
    "channel": "bench_channel",
    "admission": "bench_admission",
    "langgraph": "bench_langgraph",
}
NAMES = tuple(_MODULES)

Target = dict[str, Any]


def target(text: str, measured: str, met: bool) -> Target:
    return {"text": text, "measured": measured, "met": bool(met)}


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(name: str, quick: bool) -> dict[str, Any]:
    """One scenario's results; a row saying what is missing if an extra it
    needs (langgraph, zstandard, lz4) is not installed."""
    module = importlib.import_module(f"swarmheap.tools.{_MODULES[name]}")
    try:
        result: dict[str, Any] = getattr(module, name)(quick)
    except ImportError as exc:
        return {
            "name": name,
            "what": "not run",
            "columns": ["why"],
            "rows": [[f"{exc} (pip install 'swarmheap[bench]')"]],
            "targets": [],
            "data": {},
        }
    return result


def render(s: dict[str, Any]) -> str:
    """One scenario as a text table with its targets."""
    parts = [table(f"{s['name']}: {s['what']}", s["columns"], s["rows"])]
    parts += [f"  {n}" for n in s.get("notes", [])]
    parts += [
        f"  target {t['text']}: {t['measured']} ({'met' if t['met'] else 'NOT met'})"
        for t in s.get("targets", [])
    ]
    return "\n".join(parts)
