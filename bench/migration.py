"""Migration benchmark: save + restore of a big domain, and the guest's pause.

A domain with 1,000 nodes in its home subtree (libxl's skeleton plus data
nodes) and 100 watches is migrated between two pyxenstored daemons while
its guest keeps working.  Reported per run: QUIESCE + save on the source,
restore on the destination, QUIESCE-to-running (the domain's downtime as
far as xenstore is concerned) and the guest-visible pause (the longest
single request the guest saw).  Targets: save + restore under
100 ms, pause under 50 ms.

    .venv/bin/python -m bench.migration [--runs 5] [--nodes 1000] [--watches 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence

from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.sync import Client
from pyxenstored.demo import daemon
from pyxenstored.sim.migration import Host, MigrationReport, migrate_guest
from pyxenstored.sim.ring import GuestRing
from pyxenstored.sim.toolstack import Toolstack, backend_entries, domain_skeleton
from pyxenstored.sim.workload import GuestWorkload

DOMID = 5


async def _fill(host: Host, nodes: int) -> int:
    """Add data nodes owned by the guest until the home holds ``nodes``."""
    home = f"/local/domain/{DOMID}"
    have = sum(1 for path, _, _ in domain_skeleton(DOMID) if path.startswith(home))
    async with AsyncClient(host.socket) as dom0:
        calls = []
        for i in range(max(nodes - have - 1, 0)):
            path = f"{home}/data/n{i // 32}/k{i % 32}"
            calls.append(dom0.write(path, b"value-%d" % i))
        await asyncio.gather(*calls)
        await dom0.set_perms(f"{home}/data", [f"n{DOMID}"])
        names = await dom0.directory(f"{home}/data")
        await asyncio.gather(
            *(dom0.set_perms(f"{home}/data/{n}", [f"n{DOMID}"]) for n in names)
        )
        count = 0
        level = [home]
        while level:
            count += len(level)
            found = await asyncio.gather(*(dom0.directory(p) for p in level))
            level = [f"{p}/{c}" for p, cs in zip(level, found, strict=True) for c in cs]
        return count


def one_run(
    base: str, nodes: int, watches: int, precopy: bool = False
) -> tuple[MigrationReport, float, int]:
    # The guest owns most of its 1,000 nodes: lift its node quota.
    quota = ("-E", str(2 * nodes))
    with (
        daemon("A", os.path.join(base, "a"), *quota) as a,
        daemon("B", os.path.join(base, "b"), *quota) as b,
    ):
        dom0 = Client(a.socket)
        Toolstack(dom0, a.hostdir).create_domain(DOMID)
        in_home = asyncio.run(_fill(a, nodes))
        ring = GuestRing(a.directory, DOMID)
        guest = Client(transport=ring)
        for i in range(watches):
            guest.watch(f"data/w{i}" if i % 2 else f"/local/domain/0/w{i}", f"t{i}")
        work = GuestWorkload(guest, DOMID)
        work.setup()
        work.start()
        time.sleep(0.5)
        report = asyncio.run(
            migrate_guest(
                a,
                b,
                DOMID,
                ring,
                destination_entries=backend_entries(DOMID),
                verify=False,
                precopy_first=precopy,
            )
        )
        time.sleep(0.3)
        work.stop()
        dom0.close()
        guest.close()
        if work.stats.failures:
            raise SystemExit(f"guest failures: {work.stats.failures[:3]}")
        return report, work.stats.longest(), in_home


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.migration", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--watches", type=int, default=100)
    p.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    p.add_argument(
        "--precopy",
        action="store_true",
        help="copy the home subtree while the guest runs; the pause carries "
        "only what changed (client.migration.precopy)",
    )
    args = p.parse_args(argv)
    rows = []
    for run in range(args.runs):
        base = tempfile.mkdtemp(prefix="pyxs-mig-", dir="/tmp")
        try:
            report, pause, in_home = one_run(
                base, args.nodes, args.watches, args.precopy
            )
        finally:
            shutil.rmtree(base, ignore_errors=True)
        row = {
            "run": run,
            "nodes": report.nodes,
            "watches": report.watches,
            "stream_bytes": report.stream_bytes,
            "save_ms": report.save_seconds * 1000,
            "restore_ms": report.restore_seconds * 1000,
            "downtime_ms": report.downtime_seconds * 1000,
            "guest_pause_ms": pause * 1000,
            "home_nodes": in_home,
        }
        rows.append(row)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    first = rows[0]
    print(
        f"domain with {first['nodes']} nodes and {first['watches']} watches, "
        f"stream {first['stream_bytes']} bytes, {len(rows)} runs (median, min-max)"
        + (", pre-copied while the guest runs" if args.precopy else "")
    )
    print("| measure | median | min | max |")
    print("|---|---:|---:|---:|")
    for key, label in (
        ("save_ms", "QUIESCE + save on A (ms)"),
        ("restore_ms", "restore on B (ms)"),
        ("downtime_ms", "QUIESCE to running on B (ms)"),
        ("guest_pause_ms", "guest-visible pause (ms)"),
    ):
        values = [float(r[key]) for r in rows]
        print(
            f"| {label} | {statistics.median(values):.1f} | "
            f"{min(values):.1f} | {max(values):.1f} |"
        )
    total = [float(r["save_ms"]) + float(r["restore_ms"]) for r in rows]
    print(f"| save + restore (ms) | {statistics.median(total):.1f} | "
          f"{min(total):.1f} | {max(total):.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
