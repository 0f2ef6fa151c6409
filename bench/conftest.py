"""pytest-benchmark over the same workloads `swarmheap bench` runs (swarmheap.tools.benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from swarmheap.tools.benchmarks import Env, quiet_blas


@pytest.fixture(scope="session")
def env() -> Iterator[Env]:
    with quiet_blas(), Env(quick=True) as e:
        yield e
