"""A guest's continuous xenstore activity, checked as it goes.

:class:`GuestWorkload` behaves like a PV guest's drivers: it reads,
writes, lists directories and runs transactions in its home, holding a
relative, an absolute and a special watch.  Every answer is checked
against what the guest itself wrote, so a lost, repeated or wrong answer
is caught; EAGAIN at a transaction's end is retried as every driver does.
It knows nothing about migration.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pyxenstored.client.protocol import WatchEvent
from pyxenstored.client.sync import Client
from pyxenstored.errors import TransactionConflict, XenstoreError

__all__ = ["GuestWorkload", "WorkloadStats"]


@dataclass(slots=True)
class WorkloadStats:
    requests: int = 0
    transactions: int = 0
    #: Transactions redone after EAGAIN (conflicts and doomed ones).
    retries: int = 0
    #: ``(monotonic start, seconds)`` of each operation.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    events: list[tuple[float, WatchEvent]] = field(default_factory=list)

    def longest(self) -> float:
        return max((s for _, s in self.latencies), default=0.0)


def guest_watches(domid: int, backend: int = 0) -> list[tuple[str, str]]:
    """Relative, absolute and special watches, as a frontend would hold."""
    return [
        ("control/shutdown", "shutdown"),
        (f"/local/domain/{backend}/backend/vif/{domid}/0/state", "backend-state"),
        ("@releaseDomain", "release"),
    ]


class GuestWorkload(threading.Thread):
    """Run operations on ``client`` until :meth:`stop`."""

    def __init__(self, client: Client, domid: int, keys: int = 8) -> None:
        super().__init__(name=f"guest{domid}", daemon=True)
        self.client = client
        self.domid = domid
        self.keys = keys
        self.stats = WorkloadStats()
        self.expected: dict[str, bytes] = {}
        self.counter = 0
        self._halt = threading.Event()

    def setup(self) -> None:
        """Register the watches and the transaction counter."""
        for path, token in guest_watches(self.domid):
            self.client.watch(path, token)
        self.client.write("data/counter", b"0")
        self._drain()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        step = 0
        while not self._halt.is_set():
            start = time.monotonic()
            try:
                self._step(step)
            except XenstoreError as error:
                self.stats.failures.append(
                    f"step {step}: {type(error).__name__}: {error}"
                )
            self.stats.latencies.append((start, time.monotonic() - start))
            self._drain()
            step += 1

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            self.stats.failures.append(what)

    def _step(self, step: int) -> None:
        c = self.client
        kind = step % 6
        key = f"data/k{(step // 6) % self.keys}"
        self.stats.requests += 1
        if kind == 0:
            value = f"v{step}".encode()
            c.write(key, value)
            self.expected[key] = value
        elif kind == 1 and key in self.expected:
            got = c.read(key)
            self._check(got == self.expected[key], f"read {key}: {got!r}")
        elif kind == 2:
            names = set(c.directory("data"))
            want = {k.split("/")[1] for k in self.expected}
            self._check(want <= names, f"directory data lacks {want - names}")
        elif kind == 3:
            self._transaction()
        elif kind == 4:
            got = c.read(f"/local/domain/{self.domid}/domid")
            self._check(got == str(self.domid).encode(), f"domid reads {got!r}")
        else:
            perms = c.get_perms("data")
            self._check(perms[0].domid == self.domid, f"data owned by {perms}")

    def _transaction(self) -> None:
        c = self.client
        while True:
            tx = c.transaction_start()
            try:
                value = int(c.read("data/counter", tx))
                c.write("data/counter", str(value + 1).encode(), tx)
                c.transaction_end(tx)
            except TransactionConflict:
                self.stats.retries += 1
                continue
            break
        self.stats.transactions += 1
        self._check(value == self.counter, f"counter {value}, expected {self.counter}")
        self.counter = value + 1

    def _drain(self) -> None:
        while True:
            try:
                event = self.client.wait_watch(0)
            except TimeoutError:
                return
            self.stats.events.append((time.monotonic(), event))
