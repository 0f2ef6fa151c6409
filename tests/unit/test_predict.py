"""The usage model, its predictions, reservations and admission."""

from __future__ import annotations

import multiprocessing as mp
import struct
import threading
import time
import warnings
from typing import Any

import pytest
from conftest import fill_system

import swarmheap as sh
from _workers import (
    learn_kind,
    learn_kind_and_drop,
    learn_kind_unclosed,
    model_samples,
    set_half_life,
    spawn_by_default,
    wait_admission,
)
from swarmheap.predict import CONFIDENT
from swarmheap.stores import SQLiteStore


def teach(heap: sh.Heap, kind: str, count: int, size: int) -> None:
    for _ in range(count):
        agent = heap.spawn(kind, reserve=False)
        agent.alloc(size)
        agent.complete()


def test_completions_and_sweeps_go_on_while_system_has_no_room_for_the_model(
    heap: sh.Heap, caplog: pytest.LogCaptureFixture
) -> None:
    # a complete() folds the samples in once a kind has enough for a
    # prediction, and a full sweep folds them too: both wrote the kind's model
    # into `system` and raised PartitionFull when it had no room, the first
    # after its agent had been recycled, the second instead of sweeping
    agents = [heap.spawn("worker", reserve=False) for _ in range(CONFIDENT + 5)]
    held = fill_system(heap)
    flush, tries = heap._predictor.flush, []

    def counted() -> None:
        tries.append(1)
        flush()

    heap._predictor.flush = counted  # type: ignore[method-assign]
    for agent in agents:
        agent.complete()
        assert agent.state == "gone"
    # one try found no room; the completions after it do not each try again
    # (a try decodes and encodes the model: every complete() paid it)
    assert len(tries) == 1
    del heap._predictor.flush
    heap.collect(2)
    assert heap.predict("worker").samples == 0  # the model waits, nothing is lost
    assert "wait for room in 'system'" in caplog.text
    heap.check()
    for blk in held:
        blk.free()
    heap.collect(2)
    assert heap.predict("worker").samples == len(agents)
    heap.check()


def test_no_samples_predicts_nothing(heap: sh.Heap) -> None:
    p = heap.predict("never-seen")
    assert p.samples == 0 and not p.confident
    assert p.peak("context") is None and p.lifetime() is None and p.mix == {}
    assert "no samples yet, predicts nothing" in repr(p)


def test_a_prediction_reads_as_its_figures(heap: sh.Heap) -> None:
    teach(heap, "reader", 30, 100_000)
    p = heap.predict("reader")
    text = repr(p)
    assert text.startswith("<Prediction 'reader': 30 samples, confident; context peak P50 ")
    assert sh.format_size(p.peak("context", 0.9)) in text and "page runs 100%" in text


def test_a_kind_of_tiny_agents_predicts_what_they_hold_and_no_more_partitions(heap: sh.Heap) -> None:
    teach(heap, "tiny", 30, 100)  # 112 bytes each, under the histograms' first bound
    p = heap.predict("tiny")
    assert 112 <= p.peak("context") <= 300  # the first bucket's bound, not 0
    assert p.peak("shared") == 0  # never used: predicted none
    assert p.lifetime() > 0  # however short they lived: at least the first bucket's bound
    heap.check()


def test_a_model_learned_in_one_process_is_read_in_another(named: sh.Heap) -> None:
    with mp.get_context("spawn").Pool(1) as pool:
        pool.apply(learn_kind, (named.name, "coder", 30, 100_000))
    p = named.predict("coder")
    assert p.samples == 30 and p.confident
    held = named.good_size(100_000)  # what the block holds: pages, for a large one
    assert held <= p.peak("context", 0.9) <= held * 1.06  # buckets are 5 % apart
    assert p.peak("shared") == 0
    assert p.lifetime(0.9) >= 0.0
    assert named.stats()["kinds"][0]["kind"] == "coder"
    assert p.mix == {0: pytest.approx(1.0)}  # all of it in a run of whole pages


def test_a_live_process_s_completions_reach_the_others_within_an_eighth(named: sh.Heap) -> None:
    """The writer stays alive and never reads its own model: another process
    sees its kind at most 1/8 of the samples behind (one flush per
    completion until 16), not a whole batch of 256."""
    with mp.get_context("spawn").Pool(1) as pool:
        done = 0
        for total in (7, 30, 50, 300):
            teach(named, "live", total - done, 1000)
            done = total
            seen = pool.apply(model_samples, (named.name, "live"))
            assert total - max(1, total // 8) < seen <= total, (total, seen)


def start(worker: Any) -> None:
    with warnings.catch_warnings():
        # 3.12+ warns of a fork while threads run (an idle codec helper may): the test is the fork
        warnings.simplefilter("ignore", DeprecationWarning)
        worker.start()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_worker_that_never_closes_its_heap_still_teaches_the_model(named: sh.Heap, method: str) -> None:
    # fewer samples than a batch: they reach the model when the worker exits
    # (a forked one ends in os._exit, past atexit)
    worker = mp.get_context(method).Process(target=learn_kind_unclosed, args=(named.name, "scout", 7))
    start(worker)
    worker.join()
    assert worker.exitcode == 0
    assert named.predict("scout").samples == 7


def test_a_forked_worker_does_not_count_its_parents_samples_again(named: sh.Heap) -> None:
    for _ in range(5):
        named.spawn("pair", reserve=False).complete()  # pending here, not yet folded in
    worker = mp.get_context("fork").Process(target=learn_kind_unclosed, args=(named.name, "pair", 3))
    start(worker)
    worker.join()
    assert named.predict("pair").samples == 8


_inherited: list[sh.Heap] = []


def predict_with_the_inherited_heap() -> None:
    _inherited[0].predict("twice")  # folds what this process holds


def test_a_forked_child_using_its_parents_heap_does_not_fold_the_parents_samples(named: sh.Heap) -> None:
    for _ in range(5):
        named.spawn("twice", reserve=False).complete()
    _inherited[:] = [named]
    try:
        worker = mp.get_context("fork").Process(target=predict_with_the_inherited_heap)
        start(worker)
        worker.join()
    finally:
        _inherited.clear()
    assert worker.exitcode == 0
    assert named.predict("twice").samples == 5  # was 10: the child folded them, then the parent


def test_a_heap_dropped_without_close_folds_its_samples_in(named: sh.Heap) -> None:
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(learn_kind_and_drop, (named.name, "dropped", 4)) == 4


def test_threads_completing_and_predicting_at_once_count_every_agent_once(heap: sh.Heap) -> None:
    """A process's unflushed samples are shared by its threads: a flush in
    one (a predict, a sweep) while others completed agents raised
    'dictionary changed size during iteration', and lost or counted twice
    the samples noted meanwhile (1 418 and 1 826 of 1 600 in two runs)."""
    workers, each = 4, 400
    start = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def complete_agents() -> None:
        start.wait()
        try:
            for _ in range(each):
                agent = heap.spawn("threaded", reserve=False)
                agent.alloc(100)
                agent.complete()
        except BaseException as exc:
            errors.append(exc)

    def flush_meanwhile() -> None:
        start.wait()
        try:
            for _ in range(300):
                heap.predict("threaded")
                heap.collect(generation=0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=complete_agents) for _ in range(workers)]
    threads.append(threading.Thread(target=flush_meanwhile))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert heap.predict("threaded").samples == workers * each
    heap.check()


def test_the_class_mix_names_the_block_sizes_a_kind_holds(heap: sh.Heap) -> None:
    for _ in range(30):
        agent = heap.spawn("writer", reserve=False)
        blocks = [agent.alloc(4000) for _ in range(6)] + [agent.alloc(200) for _ in range(8)]
        assert agent.stats()["classes"] == {4096: 6 * 4096, heap.good_size(200): 8 * heap.good_size(200)}
        agent.complete()
        del blocks
    p = heap.predict("writer")
    share_4k = 6 * 4096 / (6 * 4096 + 8 * heap.good_size(200))
    assert p.mix == {4096: pytest.approx(share_4k), heap.good_size(200): pytest.approx(1 - share_4k)}
    assert p.top_classes(1) == [4096] and p.top_classes() == list(p.mix) and p.class_mix == p.mix
    # the mix follows a shift of the kind's sizes, as the peaks do
    for _ in range(400):
        agent = heap.spawn("writer", reserve=False)
        agent.alloc(64)
        agent.complete()
    assert heap.predict("writer").top_classes(1) == [64]
    with pytest.raises(ValueError, match="n is a count"):
        p.top_classes(0)
    heap.check()


def test_decay_follows_a_shift(heap: sh.Heap) -> None:
    teach(heap, "shifty", 150, 20_000)
    before = heap.predict("shifty").peak("context", 0.5)
    teach(heap, "shifty", 150, 400_000)  # the kind's needs change
    after = heap.predict("shifty").peak("context", 0.5)
    held = max(heap.good_size(20_000), heap.page_size)  # one block of its class: a page of the agent's own
    assert before <= held * 1.06
    assert after >= heap.good_size(400_000)  # 150 newer samples outweigh 150 older, half-life 100


def test_a_shorter_half_life_set_in_another_process_follows_a_shift_sooner(named: sh.Heap) -> None:
    teach(named, "moody", 150, 20_000)
    with mp.get_context("spawn").Pool(1) as pool:
        pool.apply(set_half_life, (named.name, 5))
    teach(named, "moody", 25, 400_000)
    # 25 new samples: under half-life 100 the 150 older ones outweigh them,
    # under 5 (set for the heap by another process) they decide the median
    assert named.predict("moody").peak("context", 0.5) >= named.good_size(400_000)
    named.set_prediction()  # back to the default, 100: what was learned stays
    assert named.predict("moody").peak("context", 0.5) >= named.good_size(400_000)
    named.check()


def test_the_default_half_life_outweighs_a_short_shift(heap: sh.Heap) -> None:
    teach(heap, "steady", 150, 20_000)
    teach(heap, "steady", 25, 400_000)
    assert heap.predict("steady").peak("context", 0.5) < heap.good_size(400_000)


@pytest.mark.parametrize(
    ("half_life", "exc"),
    [
        ("fast", TypeError),
        (True, TypeError),
        (0.5, ValueError),
        (float("nan"), ValueError),
        (1e9, ValueError),
    ],
)
def test_bad_half_lives_are_named_errors(heap: sh.Heap, half_life: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="half_life"):
        heap.set_prediction(half_life=half_life)
    heap.check()


def test_a_damaged_model_starts_again(heap: sh.Heap) -> None:
    from swarmheap.registry import Registry
    from swarmheap.tools.cli import render_stats

    teach(heap, "fragile", 30, 50_000)
    assert heap.predict("fragile").samples == 30  # folded in: nothing of this process's left to fold
    good = Registry(heap).get("model/fragile")
    assert good is not None
    from swarmheap.predict import _HEADER, _RUN

    first_bucket = _HEADER.size + _RUN.size  # the first weight of the first row's run
    for at, value in ((24, float("nan")), (32, -1.0), (len(good) - 8, float("inf")), (first_bucket, -5.0)):
        damaged = bytearray(good)
        damaged[at : at + 8] = struct.pack("<d", value)
        Registry(heap).put("model/fragile", bytes(damaged))
        p = heap.predict("fragile")  # read as no model, never as NaN figures
        assert p.samples == 0 and p.peak("context") is None
        kinds = {k["kind"]: k for k in heap.stats()["kinds"]}
        if "fragile" in kinds:  # the kinds table shows it as predicting nothing
            assert kinds["fragile"]["p90"] is None
            assert "fragile" in render_stats(heap.stats())
        heap.spawn("fragile").complete()  # and folded into a new one
        assert heap.predict("fragile").samples == 1
    heap.check()


def test_a_model_stores_only_the_buckets_its_samples_reached(heap: sh.Heap) -> None:
    from swarmheap.predict import NBUCKETS
    from swarmheap.registry import Registry

    teach(heap, "alike", 40, 50_000)
    data = Registry(heap).get("model/alike")
    assert data is not None
    # five rows of 400 buckets were 16 000 bytes in every model; this kind's
    # agents fill a handful of buckets per row
    assert len(data) < 2_000 < 5 * NBUCKETS * 8
    p = heap.predict("alike")
    assert p.samples == 40 and 50_000 <= (p.peak("context") or 0) <= 70_000  # in pages
    heap.check()


def test_a_model_written_with_whole_rows_is_still_read(heap: sh.Heap) -> None:
    import numpy as np

    from swarmheap import predict
    from swarmheap.registry import Registry

    teach(heap, "older", 30, 80_000)
    before = heap.predict("older")  # folds this process's samples in
    model = predict.Model.decode(Registry(heap).get("model/older") or b"")
    head = bytearray(model.encode()[: predict._HEADER.size])
    struct.pack_into("<H", head, 4, 2)  # the version: 2 wrote every bucket of every row
    mix = np.append(model.classes, model.class_weight)
    whole = bytes(head) + model.hist.astype("<f8").tobytes() + mix.astype("<f8").tobytes()
    Registry(heap).put("model/older", whole)
    after = heap.predict("older")
    assert after.samples == before.samples == 30
    assert after.peak("context") == before.peak("context")
    heap.spawn("older").complete()
    heap.collect(2)
    assert heap.predict("older").samples == 31  # folded into it, and written back in runs
    assert len(Registry(heap).get("model/older") or b"") < len(whole)
    heap.check()


@pytest.mark.parametrize("damage", ["run past its row", "run past the data", "truncated", "trailing"])
def test_a_model_with_damaged_runs_predicts_nothing(heap: sh.Heap, damage: str) -> None:
    from swarmheap import predict
    from swarmheap.registry import Registry

    teach(heap, "runs", 30, 60_000)
    assert heap.predict("runs").samples == 30  # folded in: nothing of this process's left to fold
    good = Registry(heap).get("model/runs")
    assert good is not None
    at = predict._HEADER.size  # the first row's run
    damaged = bytearray(good)
    if damage == "run past its row":
        struct.pack_into("<HH", damaged, at, predict.NBUCKETS - 1, 2)
    elif damage == "run past the data":
        struct.pack_into("<HH", damaged, at, 0, predict.NBUCKETS)
    elif damage == "truncated":
        del damaged[len(damaged) // 2 :]
    else:
        damaged += b"\0" * 8
    Registry(heap).put("model/runs", bytes(damaged))
    p = heap.predict("runs")
    assert p.samples == 0 and p.peak("context") is None
    heap.spawn("runs").complete()
    heap.collect(2)
    assert heap.predict("runs").samples == 1  # a new model, written whole again
    heap.check()


def test_reservations_are_returned_exactly(heap: sh.Heap) -> None:
    teach(heap, "reserver", 25, 50_000)
    p90 = -(-heap.predict("reserver").peak("context", 0.9) // 1024) * 1024  # reserved in whole KiB
    assert p90 > 0
    agents = [heap.spawn("reserver") for _ in range(5)]
    assert heap.stats()["reserved"]["context"] == 5 * p90
    assert all(a.stats()["reserved"]["context"] == p90 for a in agents)  # each agent says what it holds
    for a in agents[:2]:
        assert a.complete()["reserved"]["context"] == 0  # returned with its memory
    assert heap.stats()["reserved"]["context"] == 3 * p90
    for a in agents[2:]:
        a.complete()
    assert heap.stats()["reserved"]["context"] == 0
    unreserved = heap.spawn("reserver", reserve=False)
    assert heap.stats()["reserved"]["context"] == 0
    unreserved.complete()
    heap.check()


def test_pages_an_agent_takes_draw_down_its_reservation(heap: sh.Heap) -> None:
    # counting both the reservation and the pages it became would turn away
    # admissions that fit
    teach(heap, "drawer", 25, 400_000)
    agent = heap.spawn("drawer")
    reserved = heap.stats()["reserved"]["context"]
    assert reserved > 0
    agent.alloc(300_000)  # a large run: its pages come out of the reservation
    left = heap.stats()["reserved"]["context"]
    assert 0 <= left <= reserved - 300_000
    other = heap.spawn("drawer", reserve=False)
    other.alloc(300_000)  # another agent's pages leave it alone
    assert heap.stats()["reserved"]["context"] == left
    agent.complete()
    other.complete()
    assert heap.stats()["reserved"]["context"] == 0
    heap.check()


def test_raise_denies_what_does_not_fit(heap: sh.Heap) -> None:
    teach(heap, "hungry", 25, 2_000_000)
    capacity = heap.stats()["partitions"]["context"]["capacity"]
    admitted = []
    with pytest.raises(sh.AdmissionDenied) as denied:
        for _ in range(capacity // 2_000_000 + 2):
            admitted.append(heap.spawn("hungry", admit="raise"))
    assert denied.value.short["context"] > 0
    assert 0 <= denied.value.free["context"] < denied.value.prediction.peak("context", 0.9)
    assert denied.value.prediction.kind == "hungry"
    assert 1 <= len(admitted) < capacity // 2_000_000  # reservations, not use, filled the room
    live = [a for a in heap.agents() if a.kind == "hungry"]
    assert len(live) == len(admitted)  # the denied spawn left nothing behind
    for a in admitted:
        a.complete()
    heap.check()


def test_the_admission_default_is_the_heaps_for_every_process(named: sh.Heap) -> None:
    teach(named, "hungry", 25, 2_000_000)
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(spawn_by_default, (named.name, "hungry")) == "admitted"
        named.set_admission("raise", limit=0.01)  # under one agent's predicted peak
        assert pool.apply(spawn_by_default, (named.name, "hungry")) == "denied"
        with pytest.raises(sh.AdmissionDenied):
            named.spawn("hungry")
        named.set_admission(None)
        assert pool.apply(spawn_by_default, (named.name, "hungry")) == "admitted"
    named.check()


def test_offload_makes_room(heap: sh.Heap, tmp_path: Any) -> None:
    teach(heap, "bulky", 25, 1_000_000)
    with SQLiteStore(tmp_path / "room.db") as store:
        heap.set_offload_policy(store, high=1.0, low=1.0)  # the store offload() uses; no watermark
        idle = []
        for i in range(5):
            a = heap.spawn("idle", reserve=False)
            a.put("data", bytes([i]) * 1_000_000)
            idle.append(a)
        heap.set_admission("offload", limit=0.9)
        admitted = [heap.spawn("bulky") for _ in range(5)]
        assert any(a.state == "offloaded" for a in idle)
        for i, a in enumerate(idle):
            assert bytes(a.get("data")) == bytes([i]) * 1_000_000  # restored on touch, intact
        for a in admitted + idle:
            a.complete()
        heap.set_admission(None)
        heap.set_offload_policy(None)


def test_an_offload_admission_that_finds_nothing_to_offload_says_so(heap: sh.Heap) -> None:
    teach(heap, "bulky", 25, 1_000_000)
    admitted = []
    with pytest.raises(sh.AdmissionDenied, match="this process had no idle agent holding context to offload"):
        for _ in range(heap.stats()["partitions"]["context"]["capacity"] // 1_000_000 + 2):
            admitted.append(heap.spawn("bulky", admit="offload"))  # reservations only: nothing to move
    assert admitted and all(a.state == "live" for a in admitted)
    for a in admitted:
        a.complete()
    heap.check()


def test_bad_arguments_are_named_errors(heap: sh.Heap) -> None:
    with pytest.raises(ValueError, match="admit"):
        heap.spawn("x", admit="maybe")
    with pytest.raises(TypeError):
        heap.spawn("x", reserve="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        heap.spawn("x", admit="wait", timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        heap.spawn("x", admit="wait", timeout=float("nan"))
    assert "x" not in {o["kind"] for o in heap.stats()["owners"]}  # nothing spawned by a refusal
    with pytest.raises(ValueError):
        heap.set_admission("always")
    with pytest.raises(ValueError):
        heap.set_admission("raise", limit=1.5)
    with pytest.raises(TypeError):
        heap.predict(42)  # type: ignore[arg-type]
    teach(heap, "q", 3, 1000)
    with pytest.raises(ValueError):
        heap.predict("q").peak("context", q=1.5)
    with pytest.raises(ValueError):
        heap.predict("q").peak("nowhere")
    heap.check()


def test_wait_is_woken_by_a_completion_in_another_process(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        teach(heap, "wide", 25, 2_000_000)
        admitted = []
        with pytest.raises(sh.AdmissionDenied):
            while True:
                admitted.append(heap.spawn("wide", admit="raise"))
        with pytest.raises(sh.AdmissionTimeout):
            heap.spawn("wide", admit="wait", timeout=0.05)  # nothing comes back in time
        ctx = mp.get_context("spawn")
        ready, result = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=wait_admission, args=(heap_name, "wide", ready, result))
        proc.start()
        ready.get(timeout=60)
        admitted.pop().complete()  # room comes back here; the other process wakes and is admitted
        assert result.get(timeout=120) == "admitted"
        proc.join()
        for a in admitted:
            a.complete()
        assert heap.stats()["reserved"]["context"] == 0
        heap.check()


def test_the_heaps_wait_default_carries_its_timeout(heap: sh.Heap) -> None:
    """set_admission("wait", timeout=...) bounds the wait of every spawn that
    names none; a spawn's own timeout, None included, still wins (None: no
    limit, so only the explicit 0 is tried here)."""
    teach(heap, "wide", 25, 2_000_000)
    admitted = []
    with pytest.raises(sh.AdmissionDenied):
        while True:
            admitted.append(heap.spawn("wide", admit="raise"))
    heap.set_admission(admit="wait", timeout=0.01)  # spelled as spawn spells it
    with pytest.raises(sh.AdmissionTimeout):
        heap.spawn("wide")
    with pytest.raises(sh.AdmissionTimeout):
        heap.spawn("wide", timeout=0)
    admitted.pop().complete()
    heap.spawn("wide").complete()  # room now: the default wait admits at once
    with pytest.raises(TypeError, match="once"):
        heap.set_admission("raise", admit="wait")
    with pytest.raises(ValueError, match="timeout"):
        heap.set_admission("wait", timeout=-1)
    heap.set_admission(None)
    for a in admitted:
        a.complete()
    assert heap.stats()["reserved"]["context"] == 0
    heap.check()


def test_an_admission_default_written_before_the_timeout_was_kept_still_reads(heap: sh.Heap) -> None:
    import struct

    from swarmheap import admission
    from swarmheap.registry import Registry

    Registry(heap).put("admission/default", struct.pack("<Bd", admission.MODES.index("raise"), 0.5))
    assert admission.default(heap) == ("raise", 0.5, None)
    Registry(heap).put("admission/default", b"\x09" * 17)  # no such mode: the default of a new heap
    assert admission.default(heap) == (None, admission.DEFAULT_LIMIT, None)
    heap.check()


def test_close_releases_a_thread_waiting_for_admission(heap_name: str) -> None:
    """close() waits for the calls in flight: a spawn waiting for room with
    no timeout is called off (ValueError: the heap is closed), not waited for."""
    heap = sh.Heap.create(heap_name, size="16 MiB")
    other = sh.Heap.attach(heap_name)  # this process's second view: it stays open
    teach(heap, "wide", 25, 2_000_000)
    admitted = []
    with pytest.raises(sh.AdmissionDenied):
        while True:
            admitted.append(heap.spawn("wide", admit="raise"))
    outcome: list[BaseException] = []

    def wide_agents() -> int:
        return sum(1 for o in other.stats()["owners"] if o["kind"] == "wide")

    before = wide_agents()

    def wait() -> None:
        try:
            heap.spawn("wide", admit="wait")
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 30
    while not heap._calls_in_flight and not outcome and time.monotonic() < deadline:
        time.sleep(0.001)  # until the spawn sleeps in the core, waiting for room
    assert heap._calls_in_flight == 1
    heap.close()
    t.join(timeout=30)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError) and "closed" in str(outcome[0])
    assert wide_agents() == before  # the waiting spawn's agent was given back before the close went on
    for agent in admitted:
        other.agent(agent.id).complete()
    other.check()
    other.close()
    heap.unlink()


def test_a_large_kind_gets_its_own_pages_and_a_small_one_stays_packed(heap: sh.Heap) -> None:
    # the prediction chooses the layout at spawn: a kind whose P90 outgrows the
    # nursery's share (64 blocks) takes pages of its own from its first block
    for _ in range(25):
        big = heap.spawn("big-kind", reserve=False)
        for _ in range(100):
            big.alloc(2000)
        big.complete()
        small = heap.spawn("small-kind", reserve=False)
        small.alloc(100)
        small.complete()
    assert heap.predict("big-kind").confident  # (predict folds this process's samples in)
    big, small = heap.spawn("big-kind"), heap.spawn("small-kind")
    big.alloc(200)
    small.alloc(200)
    assert big.stats()["pages"]["context"] == 1
    assert small.stats()["pages"]["context"] == 0  # on a shared nursery page
    unreserved = heap.spawn("big-kind", reserve=False)  # no prediction used: packed as any agent
    unreserved.alloc(200)
    assert unreserved.stats()["pages"]["context"] == 0
    for agent in (big, small, unreserved):
        agent.complete()
    heap.check()


def test_kinds_past_the_cap_evict_the_least_recently_updated(
    heap: sh.Heap, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmheap import predict

    monkeypatch.setattr(predict, "MAX_KINDS", 4)
    for kind in ("k0", "k1", "k2", "k3"):
        teach(heap, kind, 1, 1000)  # a new kind's first sample is folded in at its completion
    assert sorted(k["kind"] for k in heap.stats()["kinds"]) == ["k0", "k1", "k2", "k3"]
    teach(heap, "k0", 1, 1000)  # k0 updated again: k1 is now the oldest
    teach(heap, "k4", 1, 1000)
    assert sorted(k["kind"] for k in heap.stats()["kinds"]) == ["k0", "k2", "k3", "k4"]
    teach(heap, "k5", 1, 1000)
    assert sorted(k["kind"] for k in heap.stats()["kinds"]) == ["k0", "k3", "k4", "k5"]
    assert heap.predict("k1").samples == 0  # evicted: it predicts nothing, and learns again
    heap.check()


def test_a_model_folded_a_sample_at_a_time_is_the_one_folded_in_a_batch() -> None:
    """A young kind's flushes fold one or two samples through Model.add's
    scalar path, keeping each row's run of weighted buckets as it goes; a
    batch goes through the array path and finds the runs at encode. Both
    learn the same model, and its encoding is the one found from scratch."""
    import random

    import numpy as np

    from swarmheap import predict

    rng = random.Random(7)
    fields = len(predict.USAGE_ROW)

    def usage_row() -> bytes:
        peaks = [rng.choice([0.0, rng.lognormvariate(11, 2)]) for _ in range(2 * len(sh.PARTITIONS))]
        classes = [rng.choice([0.0, 0.0, float(rng.randrange(64, 1 << 20))]) for _ in range(fields)]
        created = time.time_ns() - rng.randrange(1, 10**11)
        return predict._ROW.pack(*peaks, float(created), *classes[: fields - len(peaks) - 1])

    batched, single = predict.Model(), predict.Model()
    for step in range(200):
        rows = [usage_row() for _ in range(rng.randrange(1, 12))]
        peaks, lifetimes, classes = predict._samples(rows)  # lifetimes read the clock: once
        batched.add(peaks, lifetimes, 0.0, classes)
        for i in range(len(rows)):
            single.add(peaks[i : i + 1], lifetimes[i : i + 1], 0.0, classes[i : i + 1])
        if step % 40 == 39:  # a half-life set by another process: weights rescaled, runs kept
            batched.rehalve(20.0 + step)
            single.rehalve(20.0 + step)
    assert single.count == batched.count
    assert single.total == pytest.approx(batched.total, rel=1e-9)
    assert np.allclose(single.hist, batched.hist, rtol=1e-9, atol=0)
    assert np.allclose(single.classes, batched.classes, rtol=1e-9, atol=0)
    kept = single.encode()
    single.spans = None  # found from the buckets again
    assert single.encode() == kept
    again = predict.Model.decode(kept)
    assert again.encode() == kept and np.array_equal(again.hist, single.hist)
