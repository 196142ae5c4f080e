"""xsbench's loads driven by pyxenstored's own blocking client.

The same tests, bounds and JSON lines as the peers' C load generator
(``../shared/peers/bench/xsbench.c``), so the harness can put the two
clients side by side:

``seq``
    one connection writes then reads a small value (``v%08d``) over 100
    keys.
``dir``
    DIRECTORY of a node with 1,000 children named ``0``..``999``.
``txn``
    transaction start, 10 writes, commit.
``watch``
    one connection writes a watched node; the time until another
    connection sees the event (so it includes the write's round trip).
``conc``
    N processes (forked) each doing ``seq`` on their own keys.
``conn``
    (socket only; not in xsbench) open a connection, read one node,
    close: what every ``xenstore-*`` command does.

Two transports:

* the daemon's Unix socket (dom0 clients), ``-s SOCKET``;
* ``--ring HOSTDIR``: simulated guests on their shared-memory rings
  (:class:`~pyxenstored.sim.ring.GuestRing`), one domain per client,
  domids 1..N, already built and introduced by the harness.  ``seq``,
  ``txn`` and ``conc`` run in the guest's own ``data`` area; ``dir``
  lists a node dom0 made in the guest's home (readable by it); in
  ``watch`` dom0 writes and the guest receives the event, as a backend's
  state change reaches a frontend.

Usage::

    python -m bench.pyclient -s SOCKET [--ring HOSTDIR] [-d SECONDS]
        [-m MAX_ITERS] [-n 1,4,16] [-l LABEL] [seq dir txn watch conc ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from pyxenstored.client.sync import Client
from pyxenstored.errors import NoEntry, TransactionConflict
from pyxenstored.sim.ring import GuestRing

__all__ = ["main"]

TESTS = ("seq", "dir", "txn", "watch", "conc", "conn")


class Bench:
    """One run of the tests against one daemon, over one transport."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.socket: str = args.socket
        self.ring: str | None = args.ring
        self.duration: float = args.duration
        self.max_iters: int = args.max_iters
        self.label: str = args.label
        self.client_name = "ring" if self.ring else "pyxenstored"
        self.base = f"/bench/py{os.getpid()}"
        #: The highest guest domid used (conc uses domids 1..N).
        self.max_domid = 1

    # -- plumbing --

    def dom0(self) -> Client:
        return Client(self.socket)

    def guest(self, domid: int) -> Client:
        """A client for the load: a guest on its ring, or a dom0 socket."""
        if self.ring is None:
            return Client(self.socket)
        return Client(transport=GuestRing(self.ring, domid, timeout=30.0))

    def area(self, name: str) -> str:
        """Where a load's nodes go: relative to the guest's home on a ring."""
        return f"data/bench/{name}" if self.ring else f"{self.base}/{name}"

    def result(
        self,
        test: str,
        clients: int,
        count: int,
        secs: float,
        unit: str,
        per_op_requests: float,
        **extra: object,
    ) -> None:
        record: dict[str, object] = {
            "client": self.client_name,
            "label": self.label,
            "test": test,
            "clients": clients,
            "count": count,
            "seconds": round(secs, 4),
            "rate": round(count / secs, 1),
            "unit": unit,
            "requests_per_s": round(count * per_op_requests / secs, 1),
            **extra,
        }
        print(json.dumps(record), flush=True)

    def timed(self, step: Callable[[int], bool], every: int = 16) -> tuple[int, float]:
        """Run ``step(i)`` until ``duration`` has passed (the clock looked at
        every ``every`` iterations, as xsbench) or ``max_iters`` iterations
        counted; ``step`` returns False for one that does not count (a
        transaction to redo).  Returns the count and the seconds taken."""
        t0 = time.monotonic()
        end = t0 + self.duration
        i = 0
        while i < self.max_iters:
            if i % every == 0 and time.monotonic() >= end:
                break
            if step(i):
                i += 1
        return i, time.monotonic() - t0

    def seq_loop(self, client: Client, area: str) -> tuple[int, float]:
        keys = [f"{area}/k{k}" for k in range(100)]

        def pair(i: int) -> bool:
            path = keys[i % 100]
            value = b"v%08d" % i
            client.write(path, value)
            if client.read(path) != value:
                raise RuntimeError(f"read mismatch at {path}")
            return True

        return self.timed(pair)

    # -- tests --

    def test_conn(self) -> None:
        if self.ring is not None:
            return  # a guest has one ring for its lifetime
        path = f"{self.base}/conn"
        with self.dom0() as c:
            c.write(path, b"v")

        def connection(i: int) -> bool:
            with Client(self.socket) as c:
                if c.read(path) != b"v":
                    raise RuntimeError(f"read mismatch at {path}")
            return True

        n, secs = self.timed(connection)
        self.result("connection_open_close", 1, n, secs, "conns/s", 1)

    def test_seq(self) -> None:
        with self.guest(1) as c:
            n, secs = self.seq_loop(c, self.area("seq"))
        self.result("seq_write_read", 1, n, secs, "pairs/s", 2)

    def test_dir(self) -> None:
        if self.ring is None:
            parent = f"{self.base}/dir"
            with self.dom0() as c:
                for k in range(1000):
                    c.write(f"{parent}/{k}", b"x")
                self._time_dir(c, parent)
            return
        # dom0 makes the children in the guest's home, readable by it.
        parent = "/local/domain/1/bench-dir"
        with self.dom0() as d:
            d.write(parent, b"")
            d.set_perms(parent, ("n0", "r1"))
            for k in range(1000):
                d.write(f"{parent}/{k}", b"x")
                d.set_perms(f"{parent}/{k}", ("n0", "r1"))
            try:
                with self.guest(1) as g:
                    self._time_dir(g, parent)
            finally:
                d.rm(parent)

    def _time_dir(self, client: Client, parent: str) -> None:
        def listing(i: int) -> bool:
            got = client.directory(parent)
            if len(got) != 1000:
                raise RuntimeError(f"directory: got {len(got)} entries")
            return True

        n, secs = self.timed(listing, every=8)
        self.result("directory_1000", 1, n, secs, "listings/s", 1)

    def test_txn(self) -> None:
        area = self.area("txn")
        paths = [f"{area}/k{k}" for k in range(10)]
        retries = 0
        with self.guest(1) as c:

            def transaction(i: int) -> bool:
                nonlocal retries
                tx = c.transaction_start()
                value = b"v%d" % i
                for path in paths:
                    c.write(path, value, tx)
                try:
                    c.transaction_end(tx)
                except TransactionConflict:
                    retries += 1
                    return False
                return True

            n, secs = self.timed(transaction)
        self.result("transaction_10_writes", 1, n, secs, "txn/s", 12, eagain=retries)

    def test_watch(self) -> None:
        if self.ring is None:
            node = f"{self.base}/watch/node"
            writer, watcher = self.dom0(), self.dom0()
        else:
            node = "/local/domain/1/bench-watch"
            writer = self.dom0()
            writer.write(node, b"init")
            writer.set_perms(node, ("n0", "r1"))
            watcher = self.guest(1)
        lat: list[float] = []
        try:
            writer.write(node, b"init")
            watcher.watch(node, "benchtok")
            self._wait_event(watcher, node)  # the initial event

            def event(i: int) -> bool:
                a = time.monotonic()
                writer.write(node, b"v%d" % i)
                self._wait_event(watcher, node)
                lat.append((time.monotonic() - a) * 1e6)
                return True

            _, secs = self.timed(event, every=1)
            watcher.unwatch(node, "benchtok")
            if self.ring is not None:
                writer.rm(node)
        finally:
            watcher.close()
            writer.close()
        lat.sort()
        n = len(lat)
        self.result(
            "watch_latency",
            1,
            n,
            secs,
            "events/s",
            1,
            lat_us_p50=round(lat[n // 2], 1) if n else None,
            lat_us_p99=round(lat[n * 99 // 100], 1) if n else None,
            lat_us_mean=round(sum(lat) / n, 1) if n else None,
            lat_us_max=round(lat[-1], 1) if n else None,
        )

    @staticmethod
    def _wait_event(client: Client, node: str) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"watch event on {node} lost")
            if client.wait_watch(left).path == node:
                return

    def test_conc(self, nclients: int) -> None:
        start_at = time.monotonic() + 0.3 + 0.01 * nclients
        read_end, write_end = os.pipe()
        pids = []
        for c in range(nclients):
            pid = os.fork()
            if pid == 0:  # the child: one client, then _exit
                code = 0
                try:
                    os.close(read_end)
                    domid = c + 1
                    with self.guest(domid) as client:
                        area = self.area(f"conc/c{c}")
                        time.sleep(max(0.0, start_at - time.monotonic()))
                        n, secs = self.seq_loop(client, area)
                    os.write(write_end, b"%d %.6f\n" % (n, secs))
                except BaseException as exc:
                    print(f"pyclient: conc child {c}: {exc!r}", file=sys.stderr)
                    code = 4
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            lines = f.read().split(b"\n")
        failed = 0
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            failed += status != 0
        total = 0
        max_secs = 0.0
        for line in lines:
            if line.strip():
                n_text, secs_text = line.split()
                total += int(n_text)
                max_secs = max(max_secs, float(secs_text))
        if failed:
            raise RuntimeError(f"{failed} of {nclients} concurrent clients failed")
        self.result(
            "concurrent_write_read",
            nclients,
            total,
            max_secs or self.duration,
            "pairs/s",
            2,
        )

    def cleanup(self) -> None:
        with self.dom0() as c:
            if self.ring is None:
                paths = [self.base]
            else:
                last = self.max_domid
                paths = [f"/local/domain/{d}/data/bench" for d in range(1, last + 1)]
            for path in paths:
                try:
                    c.rm(path)
                except NoEntry:
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.pyclient", description=__doc__)
    p.add_argument("-s", "--socket", required=True, help="the daemon's socket")
    p.add_argument("--ring", metavar="HOSTDIR", help="act as guests on rings")
    p.add_argument("-d", "--duration", type=float, default=2.0)
    p.add_argument("-m", "--max-iters", type=int, default=10_000_000)
    p.add_argument("-n", "--clients", default="1,4,16")
    p.add_argument("-l", "--label", default="")
    p.add_argument("tests", nargs="*", metavar="TEST", help=" ".join(TESTS))
    args = p.parse_args(argv)
    unknown = set(args.tests) - set(TESTS)
    if unknown:
        p.error(f"unknown tests: {' '.join(sorted(unknown))}")
    bench = Bench(args)
    counts = [int(n) for n in args.clients.split(",") if n]
    bench.max_domid = max([1, *counts])
    tests: list[str] = args.tests or list(TESTS)
    runners: dict[str, Callable[[], None]] = {
        "seq": bench.test_seq,
        "dir": bench.test_dir,
        "txn": bench.test_txn,
        "watch": bench.test_watch,
        "conn": bench.test_conn,
    }
    try:
        for test in tests:
            if test == "conc":
                for n in counts:
                    bench.test_conc(n)
            else:
                runners[test]()
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
