"""The `swarmheap` command: demo, stats, bench."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from swarmheap import lgthreads
from swarmheap.errors import AttachError, SwarmHeapError
from swarmheap.sizes import format_seconds, format_size, mix_label
from swarmheap.tools.report import table


def _owner_name(owner: dict[str, Any]) -> str:
    """Its kind, and for a LangGraph thread's agent, which thread."""
    kind = owner.get("kind") or "?"
    return kind if owner.get("thread") is None else f"{kind} (thread {owner['thread']!r})"


def render_stats(stats: dict[str, Any], top: int = 10) -> str:
    parts = [
        (
            p,
            format_size(v["capacity"]),
            format_size(v["in_use"]),
            f"{v['in_use'] / v['capacity'] * 100:.1f}%",
            format_size(v["held"]),
            f"{v['utilization'] * 100:.1f}%" if v["held"] else "-",
            format_size(v["peak"]),
            v["allocs"],
            v["frees"],
            v["failures"],
        )
        for p, v in stats["partitions"].items()
    ]
    out = [
        table(
            "partitions (held: bytes in the pages given out; utilization: in use / held, the rest is waste)",
            (
                "partition",
                "capacity",
                "in use",
                "used",
                "held",
                "utilization",
                "peak",
                "allocs",
                "frees",
                "failures",
            ),
            parts,
        )
    ]
    classes = sorted(stats["classes"], key=lambda c: -c["blocks_used"] * c["block_size"])[:top]
    out.append(
        table(
            "size classes (top by bytes in use)",
            ("block", "pages", "used", "free", "allocs"),
            [
                (format_size(c["block_size"]), c["pages"], c["blocks_used"], c["blocks_free"], c["allocs"])
                for c in classes
            ],
        )
    )
    owners = sorted(stats["owners"], key=lambda o: -sum(o["bytes"].values()))[:top]
    out.append(
        table(
            "owners (top by bytes)",
            ("id", "kind", "state", "pid", "blocks", "bytes", "pins"),
            [
                (
                    o["id"],
                    _owner_name(o),
                    o["state"],
                    o["pid"] or "heap",  # detached (agent.detach(), a LangGraph thread): no process's
                    o["blocks"],
                    format_size(sum(o["bytes"].values())),
                    o["pins"],
                )
                for o in owners
            ],
        )
    )
    chans = stats.get("channels") or []
    if chans:
        out.append(
            table(
                "channels",
                ("name", "depth", "capacity", "sent", "received", "in flight", "closed"),
                [
                    (
                        c["name"],
                        c["depth"],
                        c["capacity"],
                        c["sent"],
                        c["received"],
                        format_size(c["bytes_in_flight"]),
                        "yes" if c["closed"] else "no",
                    )
                    for c in chans[:top]
                ],
            )
        )
    out.extend(f"channel {c['name']!r} is damaged: {c['error']}" for c in stats.get("damaged_channels") or [])
    kinds = stats.get("kinds") or []
    if kinds:
        out.append(
            table(
                "agent kinds (usage model)",
                ("kind", "samples", "P50 peak", "P90 peak", "P90 lifetime", "last peak", "top classes"),
                [
                    (
                        k["kind"],
                        k["samples"],
                        "-" if k["p50"] is None else format_size(k["p50"]),
                        "-" if k["p90"] is None else format_size(k["p90"]),
                        "-" if k["lifetime_p90"] is None else format_seconds(k["lifetime_p90"]),
                        format_size(k["last_peak"]),
                        mix_label(k.get("mix", {})),
                    )
                    for k in kinds[:top]
                ],
            )
        )
    offloaded = stats.get("offloaded") or []
    if offloaded:
        out.append(
            table(
                f"offloaded agents ({len(offloaded)})",
                ("id", "generation", "kind", "store", "key"),
                [(o["id"], o["generation"], o["kind"], o["store"], o["key"]) for o in offloaded[:top]],
            )
        )
    caches = stats.get("thread_caches")
    if caches is not None:
        out.append(
            f"thread caches bound: {caches['bound']} of {caches['total']}, "
            f"{caches.get('magazine_blocks', 0)} freed blocks waiting in their magazines; "
            f"blocks of the shared default with a lease: {stats.get('leases', 0)}; "
            f"dropped entries waiting for another process's views to go: "
            f"{stats.get('block_table', {}).get('after_views', 0)}"
        )
    return "\n\n".join(out)


def cmd_stats(args: argparse.Namespace) -> int:
    from swarmheap.heap import Heap

    try:
        # a path (a file-backed heap) has a slash or names an existing file
        is_path = "/" in args.name or os.path.isfile(args.name)
        heap = (
            Heap.attach(path=args.name, read_only=True) if is_path else Heap.attach(args.name, read_only=True)
        )
    except AttachError as exc:
        print(f"swarmheap: {exc}", file=sys.stderr)
        return 1
    try:
        while True:
            stats = heap.stats()
            # each LangGraph thread is an agent: its owner row says which thread
            threads = lgthreads.by_agent(heap)
            for owner in stats["owners"]:
                owner["thread"] = threads.get((owner["id"], owner["generation"]))
            print(json.dumps(stats, indent=2) if args.json else render_stats(stats), flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)  # a refresh interval for a person watching, nothing waits on it
    except KeyboardInterrupt:
        return 0
    finally:
        heap.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from swarmheap.tools.demo import print_report, run_demo, succeeded

    rounds = 20 if args.quick else args.rounds
    report = run_demo(
        workers=args.workers, rounds=rounds, size=args.size, plot=args.plot, quiet=args.json is not None
    )
    print_report(report)
    if args.json:
        from dataclasses import asdict

        with open(args.json, "w") as f:
            json.dump(asdict(report), f, indent=2)
    return 0 if succeeded(report) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from swarmheap.tools.benchmarks import main as bench_main

    return bench_main(
        quick=args.quick, json_path=args.json, plot_dir=args.plot, only=args.only, check=args.check
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarmheap", description="swarmheap: memory for agent swarms")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    demo = sub.add_parser(
        "demo", help="run a swarm of worker processes on one heap and report", formatter_class=defaults
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes (one is killed halfway)")
    demo.add_argument(
        "--rounds",
        type=int,
        default=600,
        help="rounds per worker: each spawns a big agent and small note agents and hands a buffer on",
    )
    demo.add_argument("--size", default="256 MiB", help="size of the named heap the swarm shares")
    demo.add_argument("--quick", action="store_true", help="20 rounds per worker")
    demo.add_argument("--plot", metavar="FILE", help="write occupancy over time as a PNG")
    demo.add_argument("--json", metavar="FILE", help="write the report as JSON")
    demo.set_defaults(func=cmd_demo)

    stats = sub.add_parser(
        "stats", help="print the statistics of a named heap (attached read-only)", formatter_class=defaults
    )
    stats.add_argument(
        "name", help="the heap's name, as given to Heap.create, or the path of a file-backed heap"
    )
    stats.add_argument("--json", action="store_true", help="print the stats dict as JSON instead of tables")
    stats.add_argument(
        "--watch", type=float, metavar="SECONDS", default=0, help="print again every SECONDS (0: once)"
    )
    stats.set_defaults(func=cmd_stats)

    bench = sub.add_parser(
        "bench", help="run the benchmark workloads against their peers", formatter_class=defaults
    )
    bench.add_argument("--quick", action="store_true", help="fewer repeats: under a minute on 2 cores")
    bench.add_argument(
        "--json", metavar="FILE", help="write the results as JSON (bench/make_results.py reads it)"
    )
    bench.add_argument("--plot", metavar="DIR", help="write PNG charts")
    bench.add_argument(
        "--only",
        metavar="NAME",
        help="run one workload or scenario by name, as the results name them (pairs_64B, "
        "swarm_density, offload_restore, channel, langgraph, c_core, ...); a name that is none of "
        "them lists them all",
    )
    bench.add_argument("--check", action="store_true", help="exit 1 if a target is not met")
    bench.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("swarmheap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader stopped early (`swarmheap stats NAME | head`): as a C
        # tool dies of SIGPIPE, quietly; stdout goes to /dev/null so that the
        # interpreter's own flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (SwarmHeapError, ImportError, ValueError) as exc:
        print(f"swarmheap: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
