"""The ring session's policy on a bytearray page, with a hand-driven clock.

A real :class:`Engine` answers; the guest's side is the same page read and
written with :class:`Ring`'s guest-side calls.  Nothing here maps memory,
sleeps or opens a socket: back-pressure, event expiry and QUIESCE are
decided by the session alone, time by the test.
"""

from __future__ import annotations

import struct

import pytest

from pyxenstored.engine import Engine, EngineConfig
from pyxenstored.engine.ringsession import Quiesce, RingSession
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.store import Limits
from pyxenstored.wire import Op, Packet
from pyxenstored.wire.ring import PAGE_SIZE, Ring, RingError
from tests.wiretools import frame, take_message

DOMID = 5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Guest:
    """Domain 5's side of the page, and the session serving it."""

    def __init__(self, **limits: int) -> None:
        self.engine = Engine(
            EngineConfig(limits=Limits(**limits)),
            hypervisor=MemoryHypervisor({0, DOMID}),
        )
        dom0 = self.engine.connect_socket()
        self.engine.handle(dom0, Packet(Op.MKDIR, 1, 0, b"/local/domain/5\0"))
        self.engine.handle(dom0, Packet(Op.SET_PERMS, 2, 0, b"/local/domain/5\0n5\0"))
        dom0.take_output()
        self.page = bytearray(PAGE_SIZE)
        self.ring = Ring(memoryview(self.page))
        self.clock = Clock()
        self.kicks = 0
        self.unmapped = 0
        self.conn = self.engine.connect_domain(DOMID)
        self.session = RingSession(
            self.engine,
            self.conn,
            Ring(memoryview(self.page)),
            self._kick,
            self._unmap,
            clock=self.clock,
            event_timeout=20.0,
            after_request=self._flush,
        )
        self.req = 0
        #: Reply bytes read off the ring, not yet a whole message.
        self.unread = bytearray()

    def _kick(self) -> None:
        self.kicks += 1

    def _unmap(self) -> None:
        self.unmapped += 1

    def _flush(self) -> None:
        # What the daemon does after each request: output to its connection.
        for conn in self.engine.take_pending():
            if conn is self.conn:
                self.session.send(conn.take_output())
            else:
                conn.take_output()

    def send(self, op: int, payload: bytes) -> int:
        self.req += 1
        data = frame(op, payload, self.req)
        assert self.ring.write_requests(data) == len(data)
        return self.req

    def replies(self) -> list[tuple[int, int, bytes]]:
        """Every whole message the guest can read now: (op, req_id, payload).

        A message the ring holds only the start of waits for the next call.
        """
        self.unread += self.ring.read_replies()
        out = []
        while (message := take_message(self.unread)) is not None:
            out.append((message.op, message.req_id, message.payload))
        return out


def test_requests_are_answered_and_the_guest_kicked() -> None:
    g = Guest()
    g.send(Op.WRITE, b"data\0hello")
    g.send(Op.READ, b"data\0")
    g.session.process()
    assert g.replies() == [(Op.WRITE, 1, b"OK\0"), (Op.READ, 2, b"hello")]
    assert g.kicks >= 1


def test_a_partial_request_waits_for_its_end() -> None:
    g = Guest()
    data = frame(Op.WRITE, b"data\0" + b"v" * 100, 1)
    g.ring.write_requests(data[:30])
    g.session.process()
    assert g.replies() == []
    g.ring.write_requests(data[30:])
    g.session.process()
    assert g.replies() == [(Op.WRITE, 1, b"OK\0")]


def test_outstanding_quota_stops_reading_until_replies_leave() -> None:
    g = Guest(outstanding=2)
    # Initial events filling the reply ring, which the guest does not read:
    # replies stay queued, so no more than 2 requests are taken.
    for token in (b"t", b"u"):
        g.send(Op.WATCH, b"data\0" + token * 900 + b"\0")
        g.session.process()
    for _ in range(5):
        g.send(Op.READ, b"name\0")
    g.session.process()
    assert g.session.outstanding == 2
    assert g.ring.requests_pending() > 0  # the rest waits in the guest's ring
    while g.ring.requests_pending() or g.session.outstanding:
        g.replies()
        g.session.process()
    assert g.session.outstanding == 0


def test_events_expire_after_the_watch_event_timeout() -> None:
    g = Guest()
    g.send(Op.WATCH, b"data\0" + b"t" * 200 + b"\0")
    g.session.process()
    g.replies()
    dom0 = g.engine.connect_socket()
    # Events pile up while the guest does not read: some stay queued.
    for i in range(20):
        path = f"/local/domain/5/data/{i}\0".encode()
        g.engine.handle(dom0, Packet(Op.WRITE, 9, 0, path))
        g._flush()
    queued = g.session.queued
    assert queued > 0
    g.clock.now += 21
    g.session.process()
    assert g.session.queued < queued


def test_quiesce_finishes_the_partial_request_then_unmaps() -> None:
    g = Guest()
    answers: list[bool] = []
    data = frame(Op.WRITE, b"data\0" + b"v" * 50, 1)
    g.ring.write_requests(data[:20])
    g.session.process()
    g.session.begin_quiesce(answers.append, 5.0)
    assert g.session.quiesce.name == "DRAINING"
    assert answers == []
    g.ring.write_requests(data[20:] + frame(Op.READ, b"data\0", 2))
    g.session.process()
    # The half-received request was served; the next one stays in the ring.
    assert g.replies() == [(Op.WRITE, 1, b"OK\0")]
    assert answers == [True]
    assert g.session.quiesce is Quiesce.QUIESCED
    assert g.unmapped == 1
    assert g.ring.requests_pending() == len(frame(Op.READ, b"data\0", 2))


def test_quiesce_that_cannot_drain_times_out_on_the_clock() -> None:
    g = Guest()
    answers: list[bool] = []
    g.ring.write_requests(frame(Op.WRITE, b"data\0" + b"v" * 50, 1)[:20])
    g.session.process()
    g.session.begin_quiesce(answers.append, 5.0)
    g.clock.now += 4.9
    g.session.tick()
    assert answers == []
    g.clock.now += 0.2
    g.session.tick()
    assert answers == [False]
    assert g.session.quiesce is Quiesce.DRAINING
    assert g.unmapped == 0


@pytest.mark.parametrize("bad", [(10, 2000), (5000, 0)])
def test_inconsistent_indices_mark_the_ring_broken(bad: tuple[int, int]) -> None:
    g = Guest()
    struct.pack_into("<II", g.page, 2048, *bad)  # req_cons, req_prod
    g.session.process()
    assert g.ring.error == RingError.RINGIDX
    assert g.session.ignored
