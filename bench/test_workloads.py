"""`pytest bench/ --benchmark-only`: every case of every workload, grouped by
workload so pytest-benchmark prints each peer next to swarmheap. The
definitions live in swarmheap.tools.benchmarks, shared with `swarmheap bench`."""

from __future__ import annotations

from typing import Any

import pytest

from swarmheap.tools.benchmarks import Env, workloads

# workloads are built per Env; their names and case labels are fixed, so list them from a throwaway Env
with Env(quick=True) as _probe:
    PAIRS = [(w.name, c.label) for w in workloads(_probe) for c in w.cases]


@pytest.mark.parametrize(("workload", "label"), PAIRS, ids=[f"{w}-{c}" for w, c in PAIRS])
def test_workload(benchmark: Any, env: Env, workload: str, label: str) -> None:
    w = next(w for w in workloads(env) if w.name == workload)
    case = next(c for c in w.cases if c.label == label)
    benchmark.group = workload
    benchmark.extra_info["ops_per_round"] = case.ops
    benchmark.pedantic(
        case.run, setup=lambda: ((case.setup(),), {}), teardown=case.teardown, rounds=5, warmup_rounds=1
    )
