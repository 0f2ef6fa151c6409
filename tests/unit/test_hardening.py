"""One regression test per reproduction of the hardening issue (#13)."""

from __future__ import annotations

import ctypes
import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import swarmheap as sh


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Crash cases run in a child: a segfault fails the test, not the run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env
    )


# ---- 1. read-only attach ---------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "ro.alloc(64)",
        "ro.resolve(h).free()",
        "ro.alloc_many(3, 64)",
        "ro.free_many([h.offset])",
        "ro.agent(aid).put('x', b'y')",
        "ro.agent(aid).complete()",
        "ro.spawn('k')",
        "ro.collect(2)",
        "ro.renew_lease(h, 5)",
    ],
)
def test_read_only_refuses_writes_without_crashing(heap_name: str, call: str) -> None:
    out = run_isolated(
        f"""
        import swarmheap as sh
        rw = sh.Heap.create({heap_name!r}, size="16 MiB")
        h = rw.alloc(64, "shared").handle
        agent = rw.spawn("k"); agent.put("x", b"data"); aid = agent.id
        ro = sh.Heap.attach({heap_name!r}, read_only=True)
        try:
            {call}
        except sh.ReadOnlyHeap as e:
            assert isinstance(e, PermissionError) and "read-only" in str(e)
            print("refused")
        rw.check()
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


def test_read_only_get_reads_without_pinning(named: sh.Heap) -> None:
    agent = named.spawn("k")
    agent.put("prompt", b"hello")
    assert named.name is not None
    with sh.Heap.attach(named.name, read_only=True) as ro:
        view = ro.agent(agent.id).get("prompt")
        assert bytes(view) == b"hello"
        assert agent.stats()["pins"] == 0  # nothing was written
        view.release()
    agent.complete()
    named.check()


def test_read_only_get_tries_again_without_a_pin(named: sh.Heap, monkeypatch: pytest.MonkeyPatch) -> None:
    """A get() that lost a round to another writer holds the agent with a
    pin for the rounds after it; a read-only attach cannot pin (a pin is a
    write), and tries again without one."""
    agent = named.spawn("k")
    agent.put("prompt", b"hello")
    assert named.name is not None
    view_round = sh.Agent._view_round
    lost: list[bool] = []

    def lost_once(self: sh.Agent, name: str) -> memoryview | str:
        if not lost:
            lost.append(True)
            return "the index changed as each view was made"
        return view_round(self, name)

    with sh.Heap.attach(named.name, read_only=True) as ro:
        monkeypatch.setattr(sh.Agent, "_view_round", lost_once)
        with ro.agent(agent.id).get("prompt") as view:
            assert bytes(view) == b"hello"
        monkeypatch.undo()
        assert lost == [True] and agent.stats()["pins"] == 0
    agent.complete()
    named.check()


def test_read_only_heap_refuses_an_offload_policy(named: sh.Heap, tmp_path: object) -> None:
    """The policy offloads agents, which a read-only attach cannot: it was
    taken, and could never act (set_admission refused already)."""
    assert named.name is not None
    path = os.path.join(str(tmp_path), "s.db")
    with sh.Heap.attach(named.name, read_only=True) as ro, sh.SQLiteStore(path) as store:
        with pytest.raises(sh.ReadOnlyHeap, match="offload policy"):
            ro.set_offload_policy(store)
        ro.set_offload_policy(None)  # turning it off writes nothing
    named.check()


# ---- 2. exact handles and Blocks --------------------------------------------


def test_stale_handle_of_a_reused_block(heap: sh.Heap) -> None:
    a = heap.alloc(64, "shared")
    h = a.handle
    consumer = heap.resolve(h)
    a.free()
    b = heap.alloc(64, "shared")
    b[:] = b"B" * 64
    assert b.offset == a.offset  # the same place, handed out again
    with pytest.raises(sh.StaleBlock):
        heap.resolve(h)
    with pytest.raises(sh.StaleBlock):
        consumer[:8] = b"CONSUMER"
    assert b[:] == b"B" * 64
    assert consumer.freed
    b.free()


def test_stale_handle_of_an_agent_block(heap: sh.Heap) -> None:
    agent = heap.spawn("k")
    a = agent.alloc(200)
    h = a.handle
    a.free()
    b = agent.alloc(200)
    with pytest.raises(sh.StaleBlock):
        heap.resolve(h)
    b.free()
    agent.complete()


def test_free_through_another_block_with_live_exports(heap: sh.Heap) -> None:
    a = heap.alloc(64)
    twin = heap.resolve(a.handle)
    view = memoryview(twin)
    with pytest.raises(BufferError):
        a.free()
    view.release()
    a.free()
    with pytest.raises(sh.StaleBlock):
        twin.free()


def test_block_reclaimed_by_its_lease_is_stale(heap: sh.Heap) -> None:
    import time

    blk = heap.alloc(64, "comm", lease=0.001)
    deadline = heap.lease_deadline(blk)
    assert deadline is not None
    blocks, _ = heap._lease_reclaim(deadline + 1)
    assert blocks == 1
    assert blk.freed
    with pytest.raises(sh.StaleBlock):
        blk[:1] = b"x"
    assert time.time() > 0  # (the reclaim ran at a chosen time, not by waiting)


# ---- 3. pins of a dead process ------------------------------------------------


def test_the_pin_reclaim_measure_keeps_live_pins_and_drops_killed_ones() -> None:
    # bench/pin_reclaim.py, which measured the reclaim's /proc reads leaving
    # the owner lock: three processes hold views of four agents each; a
    # reclaim while they live drops none (the script asserts it), and one
    # after they are killed drops all twelve
    script = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "pin_reclaim.py")
    proc = subprocess.run([sys.executable, script, "3", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 live processes x 4 pins" in proc.stdout
    assert "after killing them: 12 pins dropped" in proc.stdout


def test_an_owner_state_that_is_no_state_is_corruption_not_an_empty_agent(
    heap: sh.Heap, tmp_path: object
) -> None:
    # one byte of an offloaded agent's state word damaged while attached:
    # read as live, the agent had no entries (KeyError), its data silently gone
    store = sh.SQLiteStore(os.path.join(str(tmp_path), "cold.db"))
    agent = heap.spawn("cold")
    agent.put("c", b"z" * 3000)
    agent.offload(store)
    owners = heap.info()["regions"]["owners"][0]
    anchor = heap.alloc(16, "shared")
    holder = ctypes.c_char.from_buffer(memoryview(anchor))
    base = ctypes.addressof(holder) - anchor.offset
    state = ctypes.c_uint32.from_address(base + owners + agent.id * 112)  # sizeof(sh_owner_t), asserted in C
    saved = state.value
    state.value = saved | 0xFF00
    with pytest.raises(sh.HeapCorrupt, match="owner table"):
        agent.get("c")
    with pytest.raises(sh.HeapCorrupt, match="owner table"):
        agent.read("c")
    state.value = saved
    assert bytes(agent.get("c")) == b"z" * 3000  # the store kept it: back once the word is whole
    del holder, state
    anchor.free()
    store.close()
    heap.check()


def test_pins_of_a_killed_process_are_dropped(heap_name: str) -> None:
    import multiprocessing as mp

    from _workers import pin_and_hang

    with sh.Heap.create(heap_name, size="32 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        base = heap.stats()["partitions"]["context"]["in_use"]
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        proc = ctx.Process(target=pin_and_hang, args=(heap_name, ready))
        proc.start()
        agent_id = ready.get(timeout=60)
        assert heap.agent(agent_id).stats()["pins"] == 1
        proc.kill()
        proc.join()
        result = heap.collect(2)
        assert result.agents["dead_process"] == 1
        assert heap._owner_generation(agent_id) == 0  # its slot is free again
        assert heap.stats()["partitions"]["context"]["in_use"] == base
        heap.check()


# ---- 6. object arrays -----------------------------------------------------------


def test_object_arrays_do_not_cross(heap: sh.Heap) -> None:
    agent = heap.spawn("k")
    with sh.numpy_allocator(agent):
        arr = np.empty(4, dtype=object)
    with pytest.raises(TypeError, match="object"):
        sh.array_handle(heap, arr)
    with sh.numpy_allocator(agent):
        good = np.zeros(4)
    handle = sh.array_handle(heap, good)
    forged = handle._replace(dtype="|O")
    with pytest.raises(TypeError, match="object"):
        sh.from_handle(heap, forged)
    del arr, good
    agent.complete()


# ---- 7. close() racing a call ---------------------------------------------------------


def test_close_waits_for_a_call_in_flight() -> None:
    heap = sh.Heap.create(size="64 MiB")
    offsets = heap.alloc_many(200_000, 64, "shared")
    errors: list[BaseException] = []

    def free_them() -> None:
        try:
            heap.free_many(offsets)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=free_them)
    worker.start()
    heap.close()  # must not unmap under free_many
    worker.join()
    assert heap.closed
    assert all(isinstance(e, ValueError) and "closed" in str(e) for e in errors)


# ---- 8. name squatting ----------------------------------------------------------------


def test_attach_refuses_a_segment_others_can_reach(heap_name: str) -> None:
    heap = sh.Heap.create(heap_name, size="16 MiB")
    os.chmod(f"/dev/shm/{heap_name}", 0o666)
    with pytest.raises(sh.AttachError, match="0666"):
        sh.Heap.attach(heap_name)
    heap.close()


def test_create_over_a_foreign_segment_says_so(heap_name: str) -> None:
    path = f"/dev/shm/{heap_name}"
    with open(path, "wb") as f:
        f.write(b"squatter")
    os.chmod(path, 0o666)
    with pytest.raises(sh.HeapExists, match="not one of ours"):
        sh.Heap.create(heap_name, size="16 MiB")


# ---- 9. the smaller ones -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda h: h.alloc(2**64), ValueError),
        (lambda h: h.alloc(2**70), ValueError),
        (lambda h: h.free_many([-1]), ValueError),
        (lambda h: h.alloc(64, owner="x"), TypeError),
        (lambda h: h.alloc(64, owner=1.0), TypeError),
        (lambda h: h.spawn("k" * 100000), ValueError),
        (lambda h: h.spawn("k").renew(float("nan")), ValueError),
        (lambda h: h.spawn("k").renew(math.inf), ValueError),
        (lambda h: h.alloc(64, lease=float("nan")), ValueError),
        (lambda h: h.spawn("k").put_many("notes"), TypeError),
        (lambda h: h.spawn("k").put_many([("notes", b"x")]), TypeError),
    ],
)
def test_bad_input_is_a_named_error(heap: sh.Heap, call: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(heap)  # type: ignore[operator]
    heap.check()


@pytest.mark.parametrize(
    "call",
    [
        lambda: sh.Heap.unlink("not-a-heap"),  # as if it were a static method
        lambda: sh.Heap.alloc(None, 64),
        lambda: sh.Block.free(3),
        lambda: sh.Block.free(b"bytes"),
    ],
)
def test_a_method_called_through_its_class_on_another_object_is_a_type_error(call: object) -> None:
    # a method of the binding reads its self as a heap or a block: given
    # anything else it must refuse, not read that object's memory
    with pytest.raises(TypeError):
        call()  # type: ignore[operator]


def test_heap_unlink_by_name_points_to_the_function() -> None:
    with pytest.raises(TypeError, match=r"swarmheap.unlink\('my-swarm'\)"):
        sh.Heap.unlink("my-swarm")  # type: ignore[arg-type]


def test_huge_ratio_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        sh.Heap.create(size="16 MiB", ratios={"context": 10**400, "shared": 0.3, "comm": 0.2, "system": 0.1})


def test_good_size_of_what_never_fits(heap: sh.Heap) -> None:
    assert heap.good_size(2**63) == 0
    assert heap.good_size(2**62) == 0
    assert heap.good_size(64) == 64


def test_heap_constructor_points_to_create() -> None:
    with pytest.raises(TypeError, match=r"Heap\.create"):
        sh.Heap(size="1 GiB")  # type: ignore[call-arg]


def test_counters_agree_with_in_use_after_complete(heap: sh.Heap) -> None:
    agent = heap.spawn("k")
    for size in (24, 64, 200, 512, 1500, 4000, 100_000):
        agent.alloc(size)
    agent.complete()
    context = heap.stats()["partitions"]["context"]
    assert context["allocs"] - context["frees"] == context["in_use"] == 0
