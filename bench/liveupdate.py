"""Live-update downtime: pyxenstored and C xenstored side by side.

Each run starts a fresh daemon, fills it with N nodes, opens 100 client
connections each holding a watch, then asks it (CONTROL ``live-update``,
as ``xenstore-control`` does) to replace itself with its own program.
The downtime is the time from the ``-s`` request to its ``OK``: the
reply is sent by the new program once it has restored everything, and
no request is answered in between.  After each update every connection
must still get its watch event, and the node count must be intact.

    .venv/bin/python -m bench.liveupdate [--runs 3] [--nodes 1000,10000,100000]
        [--connections 100] [--kinds py,c] [--json FILE]

Run unpinned, as users run daemons; the machine and its load are printed.
The package's modules are byte-compiled first, as an installed package's
are (pip compiles them; an editable install under
``PYTHONDONTWRITEBYTECODE`` would compile every module at each start).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.daemons import NAMES, Daemon, start
from pyxenstored.client.aio import AsyncClient

#: The programs each daemon is replaced with (its own).
C_XENSTORED = Path("/tmp/peers/xenroot/usr/lib/xen-4.17/bin/xenstored")
PYXENSTORED = Path(sys.executable).parent / "pyxenstored"
#: Nodes per parent directory (C answers E2BIG past ~4 KB of names).
FANOUT = 100


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{model}, {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}, Python {platform.python_version()}"
    )


async def _fill(client: AsyncClient, nodes: int) -> None:
    batch: list[asyncio.Future[None]] = []
    for i in range(nodes):
        path = f"/bench/n{i // FANOUT}/k{i % FANOUT}"
        batch.append(asyncio.ensure_future(client.write(path, b"value-%d" % i)))
        if len(batch) >= 2000:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)


async def _count(client: AsyncClient) -> int:
    parents = await client.directory("/bench")
    sizes = await asyncio.gather(*(client.directory(f"/bench/{p}") for p in parents))
    return sum(len(s) for s in sizes if s)


async def one_run(daemon: Daemon, binary: Path, nodes: int, conns: int) -> float:
    socket = str(daemon.socket)
    async with AsyncClient(socket) as admin:
        await _fill(admin, nodes)
        watchers = [AsyncClient(socket) for _ in range(conns)]
        for i, w in enumerate(watchers):
            await w.connect()
            await w.write(f"/watch/w{i}", b"0")
            await w.watch(f"/watch/w{i}", f"t{i}")
            await w.wait_watch(10)
        reply = await admin.control("live-update", "-f", str(binary))
        assert reply.rstrip(b"\0") == b"OK", reply
        began = time.perf_counter()
        reply = await admin.control("live-update", "-s", "-t", "10")
        downtime = time.perf_counter() - began
        assert reply.rstrip(b"\0") == b"OK", reply
        # every connection carried over, its watch firing; the tree intact
        for i in range(conns):
            await admin.write(f"/watch/w{i}", b"1")
        for w in watchers:
            await w.wait_watch(10)
            await w.aclose()
        counted = await _count(admin)
        assert counted == nodes, f"{counted} nodes after the update, not {nodes}"
    daemon.check("the live update")
    return downtime


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--nodes", default="1000,10000,100000")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--kinds", default="py,c")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    import pyxenstored

    compileall.compile_dir(os.path.dirname(pyxenstored.__file__), quiet=1)
    sizes = [int(n) for n in args.nodes.split(",")]
    kinds = args.kinds.split(",")
    binaries = {"py": PYXENSTORED, "c": C_XENSTORED}
    print(f"# live-update downtime, {args.connections} connections with a watch")
    print(f"# {machine()}, unpinned")
    results: dict[str, dict[int, list[float]]] = {k: {} for k in kinds}
    for nodes in sizes:
        for run in range(args.runs):
            for kind in kinds:  # interleaved, so drift hits both alike
                directory = Path(tempfile.mkdtemp(prefix="pyxs-lu-", dir="/tmp"))
                daemon = start(kind, directory)
                try:
                    seconds = asyncio.run(
                        one_run(daemon, binaries[kind], nodes, args.connections)
                    )
                finally:
                    daemon.stop()
                    shutil.rmtree(directory, ignore_errors=True)
                results[kind].setdefault(nodes, []).append(seconds)
                print(
                    f"{NAMES[kind]:<12} {nodes:>7} nodes run {run + 1}: "
                    f"{seconds * 1000:8.1f} ms",
                    flush=True,
                )
    print()
    print(
        "| nodes | "
        + " | ".join(f"{NAMES[k]} ms (min-median-max)" for k in kinds)
        + (" | py / C (median) |" if set(kinds) >= {"py", "c"} else " |")
    )
    print(
        "|---:|" + "---:|" * len(kinds) + ("---:|" if set(kinds) >= {"py", "c"} else "")
    )
    for nodes in sizes:
        cells = []
        for kind in kinds:
            ms = sorted(s * 1000 for s in results[kind][nodes])
            cells.append(f"{ms[0]:.0f} - {statistics.median(ms):.0f} - {ms[-1]:.0f}")
        row = f"| {nodes:,} | " + " | ".join(cells) + " |"
        if set(kinds) >= {"py", "c"}:
            ratio = statistics.median(results["py"][nodes]) / statistics.median(
                results["c"][nodes]
            )
            row += f" {ratio:.2f} |"
        print(row)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
