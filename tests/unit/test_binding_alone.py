"""The binding stands alone: CoreHeap and AgentCore without heap.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_alone(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing else imported heap.py); it prints ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_core_heap_and_agent_core_without_the_python_layer() -> None:
    # a fresh interpreter, so that nothing else has imported heap.py
    code = textwrap.dedent(
        """
        import sys
        from swarmheap._core import AgentCore, CoreHeap, HeapEvents
        assert "swarmheap.heap" not in sys.modules, sorted(m for m in sys.modules if "swarmheap" in m)
        heap = CoreHeap.create(size="16 MiB")
        oid, gen = heap._owner_create(7)
        agent = AgentCore(heap, oid, gen)
        blocks = [agent.alloc(100) for _ in range(5000)]  # past any countdown
        blocks[0][:5] = b"hello"
        assert blocks[0][:5] == b"hello" and blocks[0].owner == oid

        class Counting(HeapEvents):
            fulls = 0
            def on_partition_full(self, heap, partition, nbytes):
                Counting.fulls += 1
                return False

        heap.events = Counting()
        try:
            agent.alloc(64 << 20)
        except MemoryError:
            pass
        assert Counting.fulls == 1
        recycled, final = heap._owner_complete(oid, gen, "k")
        assert recycled and final["kind"] == "k" and final["blocks"] == 5000
        # the usage row: the final figures in USAGE_ROW's order, as float64
        import struct
        from swarmheap._core import USAGE_ROW
        oid, gen = heap._owner_create(7)
        small = AgentCore(heap, oid, gen, "small")
        assert small.kind == "small"
        small.alloc(3000)
        _, final, row, was = heap._owner_complete_row(oid, gen, "small")
        assert was == "live"
        figures = dict(zip(USAGE_ROW, struct.unpack(f"={len(USAGE_ROW)}d", row)))
        assert figures["bytes.context"] == final["bytes"]["context"] > 0
        assert figures["peak.context"] == final["peak"]["context"]
        assert figures["created_ns"] == float(final["created_ns"])
        # its block-size mix: a 3000 B block of the class that holds it
        assert final["classes"] == {heap._class_sizes[3]: 3072} or sum(final["classes"].values()) == 3072
        slot = heap._class_sizes.index(next(iter(final["classes"])))
        assert figures[f"class.{slot}"] == 3072
        heap.check()
        heap.close()
        assert "swarmheap.heap" not in sys.modules
        print("ok")
        """
    )
    run_alone(code)


def test_channel_core_without_the_python_layer() -> None:
    code = textwrap.dedent(
        """
        import sys
        from swarmheap._core import ChannelCore, CoreHeap
        heap = CoreHeap.create(size="16 MiB")
        ch = ChannelCore.create(heap, 4, 1024)
        assert ch.max_message == 1024 and ch.stats()["capacity"] == 4
        assert all(ch.send_copy(bytes([i]) * 10, 0) for i in range(4))
        assert not ch.send_copy(b"full", 0)  # try, no wait: the ring holds 4
        assert ch.stats()["depth"] == 4
        for i in range(4):
            blk = ch.recv_block(0)
            assert bytes(blk) == bytes([i]) * 10 and blk.owner == 0
            blk.free()
        assert ch.recv_block(0) is None
        try:
            ch.send_copy(b"x" * 1025, 0)
        except ValueError as exc:
            assert "max_message" in str(exc)
        try:
            ch.send_copy(12, 0)
        except TypeError:
            pass
        ch.close()
        heap.check()
        heap.close()
        assert "swarmheap.heap" not in sys.modules
        print("ok")
        """
    )
    run_alone(code)
