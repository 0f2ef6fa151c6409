"""Channels in `comm`: many producers and consumers across processes and
threads, close, timeouts, asyncio, kills, bad input."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest

import swarmheap as sh
from _workers import chan_consumer, chan_loop_until_killed, chan_producer, chan_send_blocked


def test_round_trip_zero_copy_and_block_moves(heap: sh.Heap) -> None:
    ch = heap.channel("jobs", 4)
    ch.send(b"hello")
    got = ch.recv()
    assert bytes(got) == b"hello" and got.partition == "comm"
    got.free()
    blk = heap.alloc(1000, "comm")
    blk[:] = b"z" * 1000
    ch.send_block(blk)
    with pytest.raises(sh.StaleBlock, match="sent with send_block"):
        blk[:1]  # the sender's Block went with the message, and the error says so
    moved = ch.recv()
    assert bytes(moved) == b"z" * 1000
    moved.free()
    ch.send(memoryview(b"view"))
    ch.send(bytearray(b""))
    assert bytes(ch.recv()) == b"view" and bytes(ch.recv()) == b""
    assert heap.channels() == ["jobs"]
    ch.unlink()
    assert heap.channels() == []


def test_full_and_empty(heap: sh.Heap) -> None:
    ch = heap.channel("small", 2)
    assert ch.try_send(b"1") and ch.try_send(b"2") and not ch.try_send(b"3")
    with pytest.raises(TimeoutError):
        ch.send(b"3", timeout=0.01)
    assert bytes(ch.try_recv()) == b"1" and bytes(ch.try_recv()) == b"2"
    assert ch.try_recv() is None
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.01)
    assert ch.stats()["depth"] == 0
    ch.unlink()


def test_a_block_that_could_not_be_sent_is_still_the_sender_s(heap: sh.Heap) -> None:
    comm = heap.stats()["partitions"]["comm"]["in_use"]
    ch = heap.channel("narrow", 1)
    assert ch.try_send(b"first")
    blk = heap.alloc(100, "comm")
    blk[:] = b"k" * 100
    with pytest.raises(TimeoutError, match="still yours"):
        ch.send_block(blk, timeout=0.01)
    assert bytes(blk) == b"k" * 100  # usable, not freed
    leased_before = heap.stats()["leases"]
    assert not ch.try_send(b"x" * 50, lease=60.0)  # the leased copy is freed, not left behind
    assert heap.stats()["leases"] == leased_before
    ch.close()
    with pytest.raises(sh.ChannelClosed):
        ch.send_block(blk)
    assert bytes(blk) == b"k" * 100
    with pytest.raises(sh.ChannelClosed):
        ch.send(b"y" * 50, lease=60.0)
    blk.free()
    ch.unlink()
    assert heap.stats()["partitions"]["comm"]["in_use"] == comm
    heap.check()


def test_an_empty_leased_message_arrives_empty(heap: sh.Heap) -> None:
    ch = heap.channel("empty")
    ch.send(b"", lease=60.0)
    got = ch.recv()
    assert bytes(got) == b"" and len(got) == 0
    got.free()
    ch.unlink()


def test_close_drains_then_raises(heap: sh.Heap) -> None:
    ch = heap.channel("closing")
    for i in range(3):
        ch.send(bytes([i]))
    ch.close()
    with pytest.raises(sh.ChannelClosed):
        ch.send(b"late")
    assert [bytes(b) for b in ch] == [b"\x00", b"\x01", b"\x02"]
    with pytest.raises(sh.ChannelClosed):
        ch.recv()
    ch.unlink()


def test_a_blocked_receiver_is_woken_by_a_close(heap: sh.Heap) -> None:
    ch = heap.channel("wake")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            ch.recv()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    ch.close()
    t.join(timeout=30)
    assert not t.is_alive() and isinstance(errors[0], sh.ChannelClosed)
    ch.unlink()


def test_producers_and_consumers_across_processes(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        ch = heap.channel("work", 64)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        consumers = [ctx.Process(target=chan_consumer, args=(heap_name, "work", out)) for _ in range(2)]
        for c in consumers:
            c.start()
        with ctx.Pool(3) as pool:
            sent = pool.starmap(chan_producer, [(heap_name, "work", who, 400) for who in range(3)])
        received = []

        def local_consumer() -> None:
            for blk in ch:
                data = bytes(blk)
                blk.free()
                who, i = int.from_bytes(data[:4], "little"), int.from_bytes(data[4:8], "little")
                received.append((who, i, True))

        ch.close()
        t = threading.Thread(target=local_consumer)
        t.start()
        for _ in consumers:
            received += out.get(timeout=120)
        for c in consumers:
            c.join()
        t.join()
        assert all(ok for _, _, ok in received)  # every message verified by its checksum
        counts = Counter((who, i) for who, i, _ in received)
        assert len(counts) == sum(sent) == 1200 and set(counts.values()) == {1}  # each exactly once
        assert ch.stats()["sent"] == ch.stats()["received"] == 1200
        ch.unlink()
        heap.check()
        assert heap.stats()["partitions"]["comm"]["in_use"] == 0


def test_producers_and_consumers_across_threads(heap: sh.Heap) -> None:
    import hashlib

    ch = heap.channel("threads", 16)  # small: producers and consumers wait on each other
    received: list[tuple[int, int, bool]] = []
    lock = threading.Lock()

    def produce(who: int) -> None:
        for i in range(1500):
            body = random.Random(who * 100_000 + i).randbytes(1 + (i % 7) * 300)
            ch.send(
                who.to_bytes(4, "little")
                + i.to_bytes(4, "little")
                + hashlib.blake2b(body, digest_size=8).digest()
                + body
            )

    def consume() -> None:
        mine = []
        for blk in ch:
            data = bytes(blk)
            blk.free()
            ok = hashlib.blake2b(data[16:], digest_size=8).digest() == data[8:16]
            mine.append((int.from_bytes(data[:4], "little"), int.from_bytes(data[4:8], "little"), ok))
        with lock:
            received.extend(mine)

    consumers = [threading.Thread(target=consume) for _ in range(3)]
    producers = [threading.Thread(target=produce, args=(who,)) for who in range(3)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    ch.close()  # consumers drain what is queued, then stop
    for t in consumers:
        t.join()
    assert all(ok for _, _, ok in received)
    counts = Counter((who, i) for who, i, _ in received)
    assert len(counts) == 4500 and set(counts.values()) == {1}
    assert ch.stats()["sent"] == ch.stats()["received"] == 4500
    ch.unlink()
    heap.check()
    assert heap.stats()["partitions"]["comm"]["in_use"] == 0


def test_asyncio_does_not_block_the_loop(heap: sh.Heap) -> None:
    ch = heap.channel("async", 1)

    async def main() -> list[bytes]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        receiver = asyncio.create_task(ch.arecv(timeout=30))
        for _ in range(20):
            await asyncio.sleep(0)  # the receiver waits; the loop keeps running
        await ch.asend(b"ping")
        got = await receiver
        await ch.asend(b"one")
        second = asyncio.create_task(ch.asend(b"two", timeout=30))  # waits for room
        first = await ch.arecv()
        await second
        out = [bytes(got), bytes(first), bytes(await ch.arecv())]
        tick.cancel()
        assert ticks > 10
        return out

    assert asyncio.run(main()) == [b"ping", b"one", b"two"]
    ch.unlink()


def test_a_cancelled_arecv_leaves_its_message_to_the_next_receiver(heap: sh.Heap) -> None:
    """asyncio.wait_for's timeout cancels an arecv: the message sent after
    goes to the next receiver, not to the cancelled one's worker."""
    ch = heap.channel("cancel-recv", 4)

    async def main() -> list[bytes]:
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ch.arecv(), 0.01)
        ch.send(b"after")
        return [bytes(await ch.arecv(timeout=30)), bytes(b) if (b := ch.try_recv()) is not None else b""]

    assert asyncio.run(main()) == [b"after", b""]  # asyncio.run returned: no worker held its shutdown
    assert ch.stats()["received"] == ch.stats()["sent"] == 1
    assert not heap._waiting
    ch.unlink()
    heap.check()


def test_async_for_receives_until_closed(heap: sh.Heap) -> None:
    ch = heap.channel("async-for", 2)

    async def main() -> list[bytes]:
        async def produce() -> None:
            for i in range(5):
                await ch.asend(b"m%d" % i)  # waits for room: the consumer drains as it goes
            ch.close()

        producer = asyncio.create_task(produce())
        got = [bytes(m) async for m in ch]
        await producer
        return got

    assert asyncio.run(main()) == [b"m%d" % i for i in range(5)]
    ch.unlink()


def test_a_cancelled_asend_has_sent_nothing(heap: sh.Heap) -> None:
    ch = heap.channel("cancel-send", 1)
    ch.send(b"first")

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ch.asend(b"second"), 0.01)

    asyncio.run(main())
    assert bytes(ch.recv(timeout=30)) == b"first"
    assert ch.try_recv() is None and ch.stats()["sent"] == 1
    ch.unlink()
    heap.check()


def test_many_asyncio_receivers_wait_at_once(heap: sh.Heap) -> None:
    """More blocked receivers than the loop's default executor has threads:
    each waits in a thread of its own, so none starves another."""
    channels = [heap.channel(f"many-{i}", 1) for i in range(12)]

    async def main() -> list[bytes]:
        receivers = [asyncio.create_task(ch.arecv(timeout=30)) for ch in channels]
        await asyncio.sleep(0)  # every receiver waits now, the first ones on the executor's threads if there
        for i in range(6, 12):
            await channels[i].asend(b"m%d" % i)
        late = await asyncio.gather(*receivers[6:])  # served while the first six still wait
        for i in range(6):
            await channels[i].asend(b"m%d" % i)
        return [bytes(b) for b in await asyncio.gather(*receivers[:6])] + [bytes(b) for b in late]

    assert asyncio.run(main()) == [b"m%d" % i for i in range(12)]
    for ch in channels:
        ch.unlink()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with this process's threads: on purpose
def test_an_async_receive_waits_in_a_forked_child(heap: sh.Heap) -> None:
    """The helpers that sleep for asyncio waits are threads of the parent: a
    forked child starts its own (it did not inherit the idle ones it counted)."""
    ch = heap.channel("forked", 4)

    async def warm() -> bytes:  # leaves an idle helper in this process
        receiver = asyncio.create_task(ch.arecv(timeout=30))
        await asyncio.sleep(0)
        ch.send(b"warm")
        return bytes(await receiver)

    assert asyncio.run(warm()) == b"warm"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:

            async def child() -> bytes:
                receiver = asyncio.create_task(ch.arecv(timeout=30))
                await asyncio.sleep(0)  # it waits in a helper now
                ch.send(b"child")
                return bytes(await asyncio.wait_for(receiver, 30))

            code = 0 if asyncio.run(child()) == b"child" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    ch.unlink()


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("call", ["recv", "recv with a timeout", "send to a full channel"])
def test_a_signal_interrupts_a_blocked_call(heap: sh.Heap, call: str) -> None:
    """A call blocked in a futex wait runs the process's signal handlers
    (Ctrl-C's KeyboardInterrupt among them): it waited on, deaf to them, for
    a message that might never come. The channel is as it was after."""
    ch = heap.channel("signalled", capacity=1)
    if call == "send to a full channel":
        ch.send(b"first")
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:  # once: a later signal of the helper's finds nothing to interrupt
            fired.append(signum)
            raise _Interrupted

    interrupted = threading.Event()

    def signal_until_interrupted() -> None:
        # again and again: a signal that lands before the call sleeps is
        # taken by the handler's flag, and only the next one wakes the sleep
        for _ in range(600):
            if interrupted.wait(0.05):
                return
            os.kill(os.getpid(), signal.SIGUSR1)
        # deaf to signals: end the call as a failure, not a hang
        if call == "send to a full channel":
            ch.try_recv()
        else:
            ch.send(b"unblock")

    previous = signal.signal(signal.SIGUSR1, handler)
    helper = threading.Thread(target=signal_until_interrupted)
    helper.start()
    try:
        with pytest.raises(_Interrupted):
            if call == "recv":
                ch.recv()
            elif call == "recv with a timeout":
                ch.recv(timeout=600)
            else:
                ch.send(b"second")
    finally:
        interrupted.set()
        helper.join()
        signal.signal(signal.SIGUSR1, previous)
    assert fired == [signal.SIGUSR1]
    if call == "send to a full channel":
        assert bytes(ch.recv(timeout=0)) == b"first"  # the interrupted send sent nothing
    assert ch.try_recv() is None
    ch.send(b"after")
    assert bytes(ch.recv(timeout=0)) == b"after"
    assert not heap._waiting  # the call is counted out: close() does not wait for it
    heap.check()


def test_close_of_the_heap_ends_a_thread_blocked_in_a_receive(heap_name: str) -> None:
    """close() waits for the calls in flight; a receive that waits for ever
    is called off (ChannelClosed: a `for message in channel` loop ends)."""
    heap = sh.Heap.create(heap_name, size="16 MiB")
    ch = heap.channel("blocked")
    seen: list[object] = []

    def consume() -> None:
        try:
            for message in ch:
                seen.append(bytes(message))
            seen.append("ended")
        except BaseException as exc:  # a close before the receive began: the heap is closed
            seen.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    deadline = time.monotonic() + 30
    while not heap._waiting and time.monotonic() < deadline:
        time.sleep(0.001)  # until the receiver sleeps on the channel
    assert heap._waiting
    heap.close()
    t.join(timeout=30)
    assert not t.is_alive() and seen == ["ended"]
    heap.unlink()


def test_kills_lose_nothing_beyond_the_killed_hands(heap_name: str) -> None:
    kills = int(os.environ.get("SWARMHEAP_CHANNEL_KILLS", "30"))
    rng = random.Random(9)
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        ch = heap.channel("victims", 16)
        ctx = mp.get_context("spawn")
        for k in range(kills):
            role = "send" if k % 2 else "recv"
            if role == "recv":
                for _ in range(8):
                    ch.try_send(b"q" * 64, lease=60.0)
            ready = ctx.Queue()
            proc = ctx.Process(target=chan_loop_until_killed, args=(heap_name, "victims", role, ready))
            proc.start()
            started = ready.get(timeout=60)
            assert isinstance(started, int), started
            time.sleep(rng.random() * 0.02)  # a random point in its loop (not a synchronisation)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            # the channel is not wedged: this process still sends and receives
            assert ch.try_send(b"probe") or ch.stats()["depth"] == ch.capacity
            while (blk := ch.try_recv()) is not None:
                blk.free()
            heap.check()
        # messages a killed receiver held, unfreed, carry a lease: a sweep takes them back
        heap._lease_reclaim(time.time() + 120)
        heap.collect(2)
        heap.check()
        assert heap.stats()["partitions"]["comm"]["in_use"] <= heap.good_size(ch.capacity * 16 + 4096)
        ch.unlink()


def test_a_message_a_killed_sender_held_is_reclaimed(heap_name: str) -> None:
    # no lease: the sender's thread slot records the filled block it waits
    # with, and the sweep that finds the process dead frees it
    with sh.Heap.create(heap_name, size="64 MiB") as heap:
        heap.set_sweep_thresholds(0, 0, 0)
        ch = heap.channel("narrow", 1)
        assert ch.try_send(b"first")  # now full: the worker's send waits
        comm = heap.stats()["partitions"]["comm"]["in_use"]
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        proc = ctx.Process(target=chan_send_blocked, args=(heap_name, "narrow", ready))
        proc.start()
        assert isinstance(ready.get(timeout=60), int)
        deadline = time.monotonic() + 60
        while heap._messages_in_hand() == 0:  # the worker's block is filled and recorded
            assert time.monotonic() < deadline, "the sender never held its message"
            time.sleep(0.005)
        assert heap.stats()["partitions"]["comm"]["in_use"] == comm + heap.good_size(64)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert heap.collect(0).messages == 0  # young sweeps leave dead processes to the older ones
        assert heap.collect(1).messages == 1
        assert heap._messages_in_hand() == 0 and heap.collect(1).messages == 0  # once
        assert heap.stats()["partitions"]["comm"]["in_use"] == comm
        assert bytes(ch.recv(timeout=5)) == b"first" and ch.try_recv() is None  # the ring was not touched
        heap.check()
        ch.unlink()


@pytest.mark.parametrize("capacity", [1, 3, 5, 100])
def test_capacity_is_exact(heap: sh.Heap, capacity: int) -> None:
    ch = heap.channel(f"exact{capacity}", capacity)
    assert ch.capacity == capacity and heap.channel(f"exact{capacity}").capacity == capacity
    for _turn in range(3):  # past the ring's end and round again
        for i in range(capacity):
            assert ch.try_send(b"%d" % i)
        assert not ch.try_send(b"one more")
        with pytest.raises(TimeoutError):
            ch.send(b"one more", timeout=0)
        assert ch.stats()["depth"] == capacity
        assert [bytes(ch.recv()) for _ in range(capacity)] == [b"%d" % i for i in range(capacity)]
        assert ch.try_recv() is None
    ch.unlink()
    heap.check()


def test_a_timeout_longer_than_the_core_counts_waits_as_long(heap: sh.Heap) -> None:
    """1e100 seconds raised OverflowError on its way into the core's
    nanoseconds; it is the longest wait the core counts now."""
    ch = heap.channel("patient", 2)
    ch.send(b"first", timeout=1e100)
    assert bytes(ch.recv(timeout=1e100)) == b"first"
    ch.send_block(heap.alloc(8, "comm"), timeout=2.0**80)
    assert len(ch.recv(timeout=2**70)) == 8
    with pytest.raises(ValueError, match="thresholds"):
        heap.set_sweep_thresholds(2**70)  # OverflowError before, too
    heap.check()


def test_bad_input_is_named(heap: sh.Heap) -> None:
    ch = heap.channel("strict", 4, max_message=100)
    too_big = [
        lambda: ch.send(b"x" * 101),
        lambda: ch.try_send(b"x" * 101),
        lambda: ch.send(b"x" * 101, lease=60.0),
        lambda: ch.send_block(heap.alloc(101, "comm")),
        lambda: asyncio.run(ch.asend(b"x" * 101)),
    ]
    for send in too_big:
        with pytest.raises(sh.MessageTooLarge, match="max_message") as raised:
            send()
        assert isinstance(raised.value, ValueError)  # what a caller of a bad argument catches, too
    assert ch.stats()["depth"] == 0
    with pytest.raises(TypeError, match="bytes-like"):
        ch.send("text")  # type: ignore[arg-type]
    column = np.arange(16, dtype=np.uint8).reshape(4, 4)[:, 1]  # a strided buffer is sent as its bytes
    ch.send(column)
    assert bytes(ch.recv()) == column.tobytes()
    with pytest.raises(TypeError):
        ch.send_block(b"not a block")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        heap.channel("n" * 1000)
    with pytest.raises(TypeError):
        heap.channel(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        heap.channel("c", 0)
    with pytest.raises(TypeError, match="capacity"):
        heap.channel("c", "4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_message"):
        heap.channel("c", 4, max_message=1.5)  # type: ignore[arg-type]
    assert "c" not in heap.channels()
    with pytest.raises(ValueError):
        ch.recv(timeout=-1)
    agent = heap.spawn("a")
    with pytest.raises(ValueError, match="shared default"):
        ch.send_block(agent.alloc(10))
    recycled = agent.alloc(10)
    agent.complete()
    with pytest.raises(sh.StaleBlock, match="recycled"):  # use after recycle says so, here too
        ch.send_block(recycled)
    ch.close()
    with pytest.raises(sh.ChannelClosed):
        ch.send(b"late")
    ch.unlink()
    ch.unlink()  # once is enough; again does nothing
    with pytest.raises(sh.ChannelClosed, match="unlinked"):
        ch.send(b"after")
    with pytest.raises(sh.ChannelClosed, match="unlinked"):
        ch.try_recv()
    heap.check()


def test_dropping_a_received_block_returns_it(heap: sh.Heap) -> None:
    ch = heap.channel("drop", 8)

    def comm() -> int:
        return int(heap.stats()["partitions"]["comm"]["in_use"])

    base = comm()
    for _ in range(3):
        ch.send(b"m" * 1000)
    view = memoryview(ch.recv())  # a buffer keeps its block alive
    assert comm() > base
    ch.recv()  # dropped at once
    blk = ch.recv()
    view.release()
    del view
    assert comm() > base  # one message still held, by blk
    del blk
    assert comm() == base  # every message back, none freed twice
    ch.unlink()
    heap.check()


def test_a_dropped_received_block_leaves_a_twin_s_open_buffer_alone(heap: sh.Heap) -> None:
    """A received Block dropped while another Block of its block (from its
    handle) has a buffer open does not free under that buffer: the twin
    frees it."""
    ch = heap.channel("twin", 8)
    base = int(heap.stats()["partitions"]["comm"]["in_use"])
    ch.send(b"t" * 500)
    received = ch.recv()
    twin = heap.resolve(received.handle)
    view = memoryview(twin)
    del received
    view[:4] = b"mine"  # still the message's block, not freed under the view
    assert bytes(twin[:8]) == b"minetttt"
    view.release()
    twin.free()
    assert int(heap.stats()["partitions"]["comm"]["in_use"]) == base
    ch.unlink()
    heap.check()


def test_a_lease_that_runs_out_takes_a_queued_message_out_of_its_channel(heap: sh.Heap) -> None:
    ch = heap.channel("expiring", 16)
    comm = heap.stats()["partitions"]["comm"]["in_use"]
    ch.send(b"early" * 100, lease=60.0)
    ch.send(b"kept")
    ch.send(b"late" * 100, lease=60.0)
    ch.send(b"fresh", lease=3600.0)
    later = time.time() + 120  # the first and third leases have run out by then, the fourth has not
    assert heap._lease_reclaim(later)[0] == 2
    # their places handed out again, to blocks that carry handles and leases of their own
    others = [heap.alloc(500, "comm", lease=3600.0) for _ in range(4)]
    assert all(o.handle.tag for o in others)
    assert heap.collect(1).expired_messages == 2
    assert ch.stats()["depth"] == 2 and ch.stats()["bytes_in_flight"] == len(b"kept") + len(b"fresh")
    assert [bytes(m) for m in (ch.recv(), ch.recv())] == [b"kept", b"fresh"]
    assert ch.try_recv() is None
    for o in others:
        assert o.freed is False
        o.free()
    assert heap.stats()["partitions"]["comm"]["in_use"] == comm
    # without a sweep in between, a receiver passes over what a lease took
    ch.send(b"gone", lease=1.0)
    ch.send(b"next")
    heap._lease_reclaim(time.time() + 60)
    assert bytes(ch.recv()) == b"next" and ch.try_recv() is None
    ch.unlink()
    heap.check()


def test_a_received_message_its_lease_took_back_is_stale_in_its_receivers_hands(heap: sh.Heap) -> None:
    # the receiver's Block wrote into, and freed, the block's next tenant
    ch = heap.channel("held-too-long", 4)
    ch.send(b"m" * 1000, lease=60.0)
    held = ch.recv()
    assert heap._lease_reclaim(time.time() + 120)[0] == 1
    tenant = heap.alloc(1000, "comm")
    tenant[:6] = b"tenant"
    assert tenant.offset == held.offset  # the place was handed out again
    with pytest.raises(sh.StaleBlock):
        held[:4] = b"OOPS"
    with pytest.raises(sh.StaleBlock):
        bytes(held)
    with pytest.raises(sh.StaleBlock):
        held.free()
    assert bytes(tenant[:6]) == b"tenant"
    tenant.free()
    # a message whose lease has not run out is the receiver's, as any other
    ch.send(b"n" * 100, lease=60.0)
    kept = ch.recv()
    kept[:1] = b"N"
    assert bytes(kept[:2]) == b"Nn"
    kept.free()
    heap.check()


def test_a_channel_kept_past_its_unlink_never_reaches_its_successor(heap_name: str) -> None:
    with sh.Heap.create(heap_name, size="16 MiB") as heap:
        other = sh.Heap.attach(heap_name)  # another process's view, as far as channels go
        try:
            mine, theirs = heap.channel("jobs", 8), other.channel("jobs")
            theirs.send(b"before")
            assert bytes(mine.recv()) == b"before"
            mine.unlink()
            successor = heap.channel("results", 8)  # its ring takes the freed place
            assert successor.offset == theirs.offset
            if successor.core.chan != theirs.core.chan:  # the ids differ but 1 time in 32 768
                with pytest.raises(sh.InvalidHandle, match="was unlinked"):
                    theirs.send(b"misdelivered?")
            assert successor.try_recv() is None and successor.stats()["sent"] == 0
            assert other.channel("jobs").try_recv() is None  # opened again: a new, empty channel
            successor.unlink()
            other.channel("jobs").unlink()
        finally:
            other.close()
        heap.check()
