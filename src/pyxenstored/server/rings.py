"""Serving one guest domain over its shared ring page (RING.md section 3).

A :class:`RingClient` moves bytes between the ring and the engine.  It
reads no more than the message being received needs (so a request is
never split between hosts by QUIESCE), stops reading while the domain's
outstanding replies or queued output are over quota (back-pressure:
the guest simply waits), and writes output as ring space allows.  A ring
the guest corrupted marks only that connection broken: the ``error`` field
is set and the connection is ignored until the domain goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from pyxenstored.engine.connections import Connection
from pyxenstored.errors import RemoteProtocolError
from pyxenstored.wire.decoder import NEED_DATA, PacketDecoder
from pyxenstored.wire.ops import Op
from pyxenstored.wire.packet import HEADER
from pyxenstored.wire.ring import ConnectionState, Ring, RingCorrupt, RingError

if TYPE_CHECKING:
    from pyxenstored.server.daemon import Daemon

__all__ = ["Quiesce", "RingClient"]

log = logging.getLogger(__name__)


class Quiesce(Enum):
    """Where a ring stands with QUIESCE (MIGRATION.md a.3)."""

    #: Served normally.
    ACTIVE = "active"
    #: No new request is taken; the partial one and the output drain.
    DRAINING = "draining"
    #: Drained and unmapped; events are kept in memory.
    QUIESCED = "quiesced"


class RingClient:
    """The daemon's side of one domain's ring."""

    def __init__(
        self,
        daemon: Daemon,
        conn: Connection,
        ring: Ring | None,
        notify: Callable[[], None],
        close_mapping: Callable[[], None],
    ) -> None:
        self.daemon = daemon
        self.conn = conn
        self.ring = ring
        self.name = f"dom{conn.domid}"
        self._notify = notify
        self._close_mapping = close_mapping
        self.decoder = PacketDecoder()
        self.out = bytearray()
        #: Bytes left of each message in :attr:`out`, and whether it is a
        #: reply (replies count as outstanding requests).
        self._queued: deque[tuple[int, bool]] = deque()
        self.outstanding = 0
        self.ignored = False
        self.closed = False
        self.quiesce = Quiesce.ACTIVE
        self._quiesce_waiters: list[Callable[[bool], None]] = []
        self._quiesce_timer: asyncio.TimerHandle | None = None
        self._busy = False

    # -- quotas ----------------------------------------------------------------

    def _may_read(self) -> bool:
        if self.ignored or self.closed or self.ring is None:
            return False
        if self.quiesce is not Quiesce.ACTIVE and not self.decoder.partial:
            return False
        if self.conn.privileged:
            return True
        engine = self.daemon.engine
        limits = engine.quotas.for_domain(self.conn.domid)
        if limits.outstanding and self.outstanding >= limits.outstanding:
            return False
        return not (limits.memory and len(self.out) >= limits.memory)

    # -- output -------------------------------------------------------------

    def send(self, messages: list[bytes]) -> None:
        """Queue framed messages from the engine and write what fits."""
        if self.ignored or self.closed:
            return
        self._enqueue(messages)
        self.process()

    def _enqueue(self, messages: list[bytes]) -> None:
        engine = self.daemon.engine
        limit = engine.quotas.for_domain(self.conn.domid).memory
        tracer = self.daemon.tracer
        for message in messages:
            is_reply = HEADER.unpack_from(message)[0] != Op.WATCH_EVENT
            if not is_reply and limit and len(self.out) + len(message) > limit:
                log.warning("%s: output over quota, watch event dropped", self.name)
                continue
            if tracer is not None:
                tracer.output(self.name, message)
            self.out += message
            self._queued.append((len(message), is_reply))
            self.outstanding += is_reply

    def _wrote(self, n: int) -> None:
        del self.out[:n]
        queued = self._queued
        while n and queued:
            left, is_reply = queued[0]
            if n >= left:
                n -= left
                queued.popleft()
                self.outstanding -= is_reply
            else:
                queued[0] = (left - n, is_reply)
                n = 0

    # -- the pump -----------------------------------------------------------

    def process(self) -> None:
        """Move bytes both ways until no more progress can be made.

        Handling a request can queue output for this very ring (through
        :meth:`send`); the call made then returns at once and the running
        loop writes it, so the pump never re-enters itself.
        """
        if self.ignored or self.closed or self._busy:
            return
        self._busy = True
        try:
            self._pump()
        finally:
            self._busy = False

    def _pump(self) -> None:
        ring = self.ring
        if ring is None:
            return
        engine = self.daemon.engine
        kicked = False
        try:
            while True:
                progress = False
                if (
                    ring.connection == ConnectionState.RECONNECT
                    and self.quiesce is Quiesce.ACTIVE
                ):
                    self._reconnect()
                    kicked = True
                if self.out:
                    n = ring.write_replies(bytes(self.out[:4096]))
                    if n:
                        self._wrote(n)
                        progress = kicked = True
                if self._may_read():
                    data = ring.read_requests(self.decoder.wanted())
                    if data:
                        progress = kicked = True
                        self.decoder.receive_data(data)
                        packet = self.decoder.next_packet()
                        if packet is not NEED_DATA:
                            if self.daemon.tracer is not None:
                                self.daemon.tracer.request(self.name, packet)
                            engine.handle(self.conn, packet)
                            self.daemon.flush()
                if not progress:
                    break
        except RingCorrupt as error:
            self._fail(RingError.RINGIDX, str(error))
        except RemoteProtocolError as error:
            self._fail(RingError.PROTO, str(error))
        if kicked and not self.closed:
            self._notify()
        if (
            self.quiesce is Quiesce.DRAINING
            and not self.decoder.partial
            and not self.out
        ):
            self._quiesced()

    # -- QUIESCE ----------------------------------------------------------------

    def begin_quiesce(self, done: Callable[[bool], None], timeout: float) -> None:
        """Stop taking requests; call ``done(True)`` once drained and unmapped.

        ``done(False)`` if that takes longer than ``timeout`` seconds; the
        ring then stays closed to new requests and keeps draining.
        """
        if self.quiesce is Quiesce.QUIESCED or self.ignored:
            self.quiesce = Quiesce.QUIESCED
            done(True)
            return
        self.quiesce = Quiesce.DRAINING
        self._quiesce_waiters.append(done)
        if self._quiesce_timer is None:
            loop = asyncio.get_running_loop()
            self._quiesce_timer = loop.call_later(timeout, self._quiesce_timeout)
        self.process()

    def _quiesce_timeout(self) -> None:
        self._quiesce_timer = None
        waiters, self._quiesce_waiters = self._quiesce_waiters, []
        if waiters:
            log.warning(
                "%s: QUIESCE timed out (partial input or output left)", self.name
            )
        for done in waiters:
            done(False)
        self.daemon.flush()

    def _quiesced(self) -> None:
        """Drained: drop the mapping (Xen marks the page dirty on unmap)."""
        self.quiesce = Quiesce.QUIESCED
        if self.ring is not None:
            self.ring.release()
            self.ring = None
            self._close_mapping()
        log.info("%s: quiesced", self.name)
        if self._quiesce_timer is not None:
            self._quiesce_timer.cancel()
            self._quiesce_timer = None
        waiters, self._quiesce_waiters = self._quiesce_waiters, []
        for done in waiters:
            done(True)

    def resume(self, ring: Ring, close_mapping: Callable[[], None]) -> None:
        """INTRODUCE of the quiesced domain: serve the ring again."""
        if self.ring is not None:
            self.ring.release()
            self._close_mapping()
        self.ring = ring
        self._close_mapping = close_mapping
        self.quiesce = Quiesce.ACTIVE
        if self._quiesce_timer is not None:
            self._quiesce_timer.cancel()
            self._quiesce_timer = None
        waiters, self._quiesce_waiters = self._quiesce_waiters, []
        for done in waiters:
            done(False)
        log.info("%s: resumed", self.name)
        self.process()

    # -- failure and reset --------------------------------------------------

    def _fail(self, code: RingError, reason: str) -> None:
        log.warning("%s: %s; ring marked broken (error %d)", self.name, reason, code)
        if self.ring is not None:
            self.ring.error = code
        self.ignored = True
        self.daemon.engine.reset_connection(self.conn)
        self.reset()

    def reset(self) -> None:
        """Forget partial input and every queued message."""
        self.decoder.clear()
        self.out.clear()
        self._queued.clear()
        self.outstanding = 0

    def _reconnect(self) -> None:
        """The guest asked for a reset (RING.md 6), done the way O does it."""
        log.info("%s: guest requested a reconnection", self.name)
        self.daemon.engine.reset_connection(self.conn)
        self.reset()
        ring = self.ring
        assert ring is not None
        ring.reset_indexes()
        ring.connection = ConnectionState.CONNECTED

    def close(self) -> None:
        """Stop serving and release the page."""
        if self.closed:
            return
        self.closed = True
        self.reset()
        if self._quiesce_timer is not None:
            self._quiesce_timer.cancel()
            self._quiesce_timer = None
        if self.ring is not None:
            self.ring.release()
            self.ring = None
            self._close_mapping()
