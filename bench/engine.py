"""The engine alone: microseconds per request with no I/O and warm caches.

``python -m bench.engine [--profile LOAD]`` feeds requests straight to
:meth:`Engine.handle` in one process and prints the time per request of
each load.  It is the floor under the daemon's figures in
``docs/benchmarks.md``: what is left of a daemon's CPU per request is the
event loop, the sockets or the ring, and the price of running all of that
cold after every sleep.  ``--profile LOAD`` prints a cProfile of one load.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

from pyxenstored.engine import Connection, Engine, EngineConfig
from pyxenstored.perms import parse_perm
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.sim.toolstack import domain_skeleton
from pyxenstored.wire import Op, Packet

__all__ = ["main"]

#: Requests per load.
REQUESTS = 100_000


class World:
    """An engine with dom0, one guest (domain 1, libxl's tree) and a big node."""

    def __init__(self) -> None:
        self.engine = Engine(EngineConfig(), hypervisor=MemoryHypervisor({0, 1}))
        self.dom0 = self.engine.connect_socket()
        for path, value, perms in domain_skeleton(1):
            self.ok(self.dom0, Op.WRITE, path.encode() + b"\0" + value)
            acl = b"".join(str(parse_perm(p)).encode() + b"\0" for p in perms)
            self.ok(self.dom0, Op.SET_PERMS, path.encode() + b"\0" + acl)
        for i in range(1000):
            self.ok(self.dom0, Op.WRITE, b"/bench/dir/%d\0" % i)
        self.guest = self.engine.connect_domain(1)

    def ok(self, conn: Connection, op: int, payload: bytes) -> list[bytes]:
        self.engine.handle(conn, Packet(op, 1, 0, payload))
        out = conn.take_output()
        if not out or Connection.message_op(out[-1]) == Op.ERROR:
            raise RuntimeError(f"set-up request {op} failed: {out}")
        return out


def _pairs(conn: Connection, engine: Engine, base: bytes) -> Callable[[int], int]:
    """seq: write then read a small value over 100 keys (2 requests)."""
    keys = [base + b"%d" % i for i in range(100)]

    def run(n: int) -> int:
        handle = engine.handle
        for i in range(n // 2):
            key = keys[i % 100]
            handle(conn, Packet(Op.WRITE, 1, 0, key + b"\0v%08d" % i))
            handle(conn, Packet(Op.READ, 2, 0, key + b"\0"))
            conn.take_output()
        return n // 2 * 2

    return run


def _transactions(
    conn: Connection, engine: Engine, base: bytes
) -> Callable[[int], int]:
    """xsbench's txn: start, 10 writes, commit (12 requests)."""
    keys = [base + b"%d" % k for k in range(10)]

    def run(n: int) -> int:
        handle = engine.handle
        for i in range(n // 12):
            handle(conn, Packet(Op.TRANSACTION_START, 1, 0, b"\0"))
            tx = int(conn.take_output()[-1][16:-1])
            for key in keys:
                handle(conn, Packet(Op.WRITE, 2, tx, key + b"\0v%08d" % i))
            handle(conn, Packet(Op.TRANSACTION_END, 3, tx, b"T\0"))
            conn.take_output()
        return n // 12 * 12

    return run


def _same(conn: Connection, engine: Engine, packet: Packet) -> Callable[[int], int]:
    def run(n: int) -> int:
        handle = engine.handle
        for _ in range(n):
            handle(conn, packet)
            conn.take_output()
        return n

    return run


def loads(world: World) -> dict[str, Callable[[int], int]]:
    engine, dom0, guest = world.engine, world.dom0, world.guest
    return {
        "dom0 seq write+read": _pairs(dom0, engine, b"/bench/k"),
        "guest seq write+read (relative paths, quotas)": _pairs(
            guest, engine, b"data/k"
        ),
        "dom0 transaction of 10 writes": _transactions(dom0, engine, b"/bench/txn/k"),
        "dom0 read": _same(dom0, engine, Packet(Op.READ, 1, 0, b"/bench/dir/5\0")),
        "dom0 DIRECTORY of 1,000 children": _same(
            dom0, engine, Packet(Op.DIRECTORY, 1, 0, b"/bench/dir\0")
        ),
        "guest GET_PERMS": _same(
            guest, engine, Packet(Op.GET_PERMS, 1, 0, b"device/vif/0\0")
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.engine", description=__doc__)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument(
        "--profile",
        metavar="LOAD",
        help="cProfile the one load whose name contains LOAD (e.g. 'dom0 seq')",
    )
    args = parser.parse_args(argv)
    world = World()
    table = loads(world)
    if args.profile:
        named = [name for name in table if args.profile in name]
        if len(named) != 1:
            parser.error(
                f"--profile {args.profile!r} names {len(named)} loads; one of: "
                + "; ".join(table)
            )
        run = table[named[0]]
        profile = cProfile.Profile()
        profile.runcall(run, args.requests)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        return 0
    print("| load | us per request (best of 3) |\n|---|---:|")
    for name, run in table.items():
        run(args.requests // 10)  # warm up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            n = run(args.requests)
            best = min(best, (time.perf_counter() - t0) / n)
        print(f"| {name} | {best * 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
