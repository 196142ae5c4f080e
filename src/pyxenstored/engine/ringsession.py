"""One guest domain's ring session: its shared page and the engine (RING.md 3).

A :class:`RingSession` moves bytes between the ring page and the engine.
It is sans-IO: the page is memory (a ``memoryview`` of any buffer, a
``bytearray`` in the unit tests), time comes from an injected clock, and
kicking the guest, unmapping the page, tracing and writing out the other
connections' output are functions the shell passes in
(:class:`~pyxenstored.server.rings.RingClient` is the shell's subclass,
which adds the QUIESCE timer).

The session reads no more than the message being received needs (so a request is
never split between hosts by QUIESCE), stops reading while the domain's
outstanding replies or queued output are over quota (back-pressure:
the guest simply waits), and writes output as ring space allows.  A ring
the guest corrupted marks only that connection broken: the ``error`` field
is set and the connection is ignored until the domain goes away.

A guest that stops reading must not cost the daemon unbounded memory, nor
unbounded log: replies are bounded by the outstanding quota (reading
stops), watch events by the memory quota (the surplus is dropped) and by
the watch-event timeout (events nobody collected are discarded, as C
does, PROTOCOL.md 6.4).  Each such episode is logged once when it starts
and once, with a count, when the guest has caught up.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from pyxenstored.engine.connections import Connection
from pyxenstored.errors import RemoteProtocolError
from pyxenstored.store.quota import Limits
from pyxenstored.wire.decoder import NEED_DATA, PacketDecoder
from pyxenstored.wire.ops import HEADER_SIZE, Op
from pyxenstored.wire.packet import HEADER, Packet
from pyxenstored.wire.ring import (
    ConnectionState,
    Ring,
    RingCorrupt,
    RingError,
)

if TYPE_CHECKING:
    from pyxenstored.engine.engine import Engine

__all__ = ["Quiesce", "RingSession", "TraceSource", "Tracing"]

log = logging.getLogger(__name__)


class Quiesce(Enum):
    """Where a ring stands with QUIESCE (MIGRATION.md a.3)."""

    #: Served normally.
    ACTIVE = "active"
    #: No new request is taken; the partial one and the output drain.
    DRAINING = "draining"
    #: Drained and unmapped; events are kept in memory.
    QUIESCED = "quiesced"


@dataclass(slots=True)
class _Message:
    """One framed message waiting for ring space."""

    data: bytes
    #: Replies count as outstanding requests; events do not.
    is_reply: bool
    #: Clock time after which an unsent event is discarded.
    expires: float = math.inf


class Tracing(Protocol):
    """Where a session reports what it moves (the daemon's request trace)."""

    def request(self, conn: str, packet: Packet) -> None: ...

    def output(self, conn: str, message: bytes) -> None: ...

    def note(self, conn: str, text: str) -> None: ...


class TraceSource(Protocol):
    """Who holds the trace in force (the daemon: it is switched on and off)."""

    @property
    def tracer(self) -> Tracing | None: ...


class _NoTrace:
    tracer = None


class _Episode:
    """Messages lost while a guest does not read: logged at start and end."""

    __slots__ = ("count", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def lost(self, name: str, n: int, why: str) -> None:
        if not self.count:
            log.warning("%s: %s; watch events %s until it reads", name, why, self.what)
        self.count += n

    def end(self, name: str) -> None:
        if self.count:
            log.warning(
                "%s: caught up; %d watch events %s", name, self.count, self.what
            )
            self.count = 0


class RingSession:
    """The daemon's side of one domain's ring."""

    def __init__(
        self,
        engine: Engine,
        conn: Connection,
        ring: Ring | None,
        notify: Callable[[], None],
        close_mapping: Callable[[], None],
        *,
        clock: Callable[[], float],
        event_timeout: float = 20.0,
        after_request: Callable[[], None] = lambda: None,
        tracing: TraceSource | None = None,
    ) -> None:
        self.engine = engine
        #: Seconds an event may wait for an unprivileged guest (0: for ever).
        self.event_timeout = event_timeout
        self._clock = clock
        #: Called after each request (the shell writes out every output).
        self._after_request = after_request
        #: Holds the trace in force now (looked up as an attribute: a
        #: call per request and reply would cost more than the check).
        self._trace_source: TraceSource = tracing or _NoTrace()
        self.conn = conn
        self.ring = ring
        self.name = f"dom{conn.domid}"
        self._notify = notify
        self._close_mapping = close_mapping
        self.decoder = PacketDecoder()
        #: Output not yet in the ring; the first may be partly written.
        self._queue: deque[_Message] = deque()
        #: Bytes of ``_queue[0]`` already in the ring.
        self._offset = 0
        #: Bytes in ``_queue`` not yet written.
        self.queued = 0
        #: Replies queued and not completely written (RING.md 3.1).
        self.outstanding = 0
        self._dropped = _Episode("dropped")
        self._expired = _Episode("discarded")
        self.ignored = False
        self.closed = False
        self.quiesce = Quiesce.ACTIVE
        self._quiesce_waiters: list[Callable[[bool], None]] = []
        #: When a QUIESCE still draining answers EBUSY (clock time).
        self.quiesce_deadline = math.inf
        self._busy = False
        #: The guest is owed a kick (request space freed, output written).
        self._kick = False

    def kick(self) -> None:
        """Notify the domain now (after INTRODUCE or a resumption)."""
        if not self.closed:
            self._notify()

    def set_notify(self, notify: Callable[[], None]) -> None:
        """The event channel was bound again: kick through the new port."""
        self._notify = notify

    # -- quotas ----------------------------------------------------------------

    def _limits(self) -> Limits | None:
        """The domain's quotas (None: privileged, no quota applies)."""
        if self.conn.privileged:
            return None
        return self.engine.quotas.for_domain(self.conn.domid)

    def _may_dispatch(self, limits: Limits | None) -> bool:
        """Whether the next complete request may be handled now."""
        if self.ignored or self.closed:
            return False
        if limits is None:
            return True
        if limits.outstanding and self.outstanding >= limits.outstanding:
            return False
        return not (limits.memory and self.queued >= limits.memory)

    def _read_limit(self, limits: Limits | None) -> int:
        """How many request bytes to take off the ring now (0: none).

        Only what completes the message being received, as C does: a
        request left in the ring is the guest's to keep (QUIESCE stops at
        a message boundary, MIGRATION.md a.3), and the outstanding quota
        pauses reading exactly at a request.
        """
        missing = self.decoder.missing()
        if not missing or self.ring is None:
            return 0
        if self.quiesce is not Quiesce.ACTIVE:
            return missing if self.decoder.buffer else 0
        return missing if self._may_dispatch(limits) else 0

    def _event_timeout(self) -> float:
        """Seconds an event may wait for this guest (0: for ever)."""
        if self.conn.privileged:
            return 0.0
        return self.event_timeout

    # -- output -------------------------------------------------------------

    def send(self, messages: list[bytes]) -> None:
        """Write framed messages from the engine; queue what does not fit."""
        if self.ignored or self.closed:
            return
        ring = self.ring
        if ring is not None and not self._queue:
            # Nothing waits before them: straight into the ring, which
            # takes a reply whole nearly always (no queue entry to make).
            # Only messages that fit whole are written (the guest only ever
            # frees space); the rest is queued.  Inconsistent indices leave
            # no space: the rest goes to the queue and the pump reports the
            # ring broken.
            try:
                space = ring.reply_space()
                tracer = self._trace_source.tracer
                for i, message in enumerate(messages):
                    if len(message) > space:
                        messages = messages[i:]
                        break
                    ring.write_replies(message)
                    space -= len(message)
                    self._kick = True
                    if tracer is not None:
                        tracer.output(self.name, message)
                else:
                    messages = []
            except RingCorrupt as error:
                self._fail(RingError.RINGIDX, str(error))
                return
            if not self._busy and self._kick:
                self._kick = False
                self._notify()
            if not messages:
                return
        self._enqueue(messages)
        self.process()

    def _enqueue(self, messages: list[bytes]) -> None:
        limit = self.engine.quotas.for_domain(self.conn.domid).memory
        tracer = self._trace_source.tracer
        timeout = self._event_timeout()
        expires = self._clock() + timeout if timeout else math.inf
        for message in messages:
            is_reply = HEADER.unpack_from(message)[0] != Op.WATCH_EVENT
            if not is_reply and limit and self.queued + len(message) > limit:
                # Replies are bounded by the outstanding quota; events only
                # by this: the guest is not reading, it loses the surplus.
                self._dropped.lost(self.name, 1, "output over the memory quota")
                continue
            if tracer is not None:
                tracer.output(self.name, message)
            self._queue.append(
                _Message(message, is_reply, math.inf if is_reply else expires)
            )
            self.queued += len(message)
            self.outstanding += is_reply

    def _write(self, ring: Ring) -> bool:
        """Write queued output while the ring has space; True if any."""
        queue = self._queue
        wrote = False
        while queue:
            message = queue[0]
            n = ring.write_replies(message.data[self._offset :])
            if not n:
                break
            wrote = True
            self._offset += n
            self.queued -= n
            if self._offset < len(message.data):
                break  # the ring is full
            queue.popleft()
            self._offset = 0
            self.outstanding -= message.is_reply
        if not queue:
            self._dropped.end(self.name)
            self._expired.end(self.name)
        return wrote

    def _discard_expired(self) -> None:
        """Drop events that waited longer than the watch-event timeout.

        Only events none of whose bytes reached the ring (C's rule): a
        message cut in the middle would wreck the stream.  Expiry times
        grow along the queue, so the expired events are all in front of
        the first live one and the scan stops there.
        """
        queue = self._queue
        kept = [queue.popleft()] if self._offset else []
        now = self._clock()
        discarded = 0
        while queue:
            message = queue[0]
            if message.is_reply:
                kept.append(queue.popleft())
            elif message.expires <= now:
                queue.popleft()
                discarded += 1
                self.queued -= len(message.data)
            else:
                break
        queue.extendleft(reversed(kept))
        if discarded:
            timeout = self._event_timeout()
            self._expired.lost(self.name, discarded, f"events unread for {timeout:g} s")
            tracer = self._trace_source.tracer
            if tracer is not None:
                # They were traced when queued; say they never went out.
                tracer.note(self.name, f"{discarded} events discarded")

    # -- the pump -----------------------------------------------------------

    def process(self) -> None:
        """Move bytes both ways until no more progress can be made.

        Handling a request can queue output for this very ring (through
        :meth:`send`); the call made then returns at once and the running
        loop writes it, so the pump never re-enters itself.
        """
        if self.ignored or self.closed or self._busy:
            return
        ring = self.ring
        if (
            ring is not None
            and not self._queue
            and not self._kick
            and not self.decoder.buffer
            and self.quiesce is Quiesce.ACTIVE
            and ring.quiet()
        ):
            # The common spurious wake-up: the guest signals after it reads
            # a reply too (RING.md 4), and then there is nothing to do.
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
        decoder = self.decoder
        # Once per pass: only privileged callers change quotas (SET_QUOTA,
        # CONTROL), and a privileged domain's own ring has none.
        limits = self._limits()
        if self._queue and self._event_timeout() and self.quiesce is Quiesce.ACTIVE:
            self._discard_expired()
        try:
            if (
                ring.connection == ConnectionState.RECONNECT
                and self.quiesce is Quiesce.ACTIVE
            ):
                self._reconnect()
                self._kick = True
            while True:
                # The common case first: a whole request in the ring and
                # nothing half-received: one read, no decoder.
                if (
                    self.quiesce is Quiesce.ACTIVE
                    and not decoder.buffer
                    and self._may_dispatch(limits)
                ):
                    data = ring.read_message()
                    if data:
                        self._kick = True
                        op, req_id, tx_id, _ = HEADER.unpack_from(data)
                        request = Packet(op, req_id, tx_id, data[HEADER_SIZE:])
                        # _dispatch, written out: every request passes here.
                        tracer = self._trace_source.tracer
                        if tracer is not None:
                            tracer.request(self.name, request)
                        self.engine.handle(self.conn, request)
                        self._after_request()
                        if self._queue and self._write(ring):
                            self._kick = True
                    if not self._queue and not ring.requests_pending():
                        break  # the ring is empty and all output is out
                    if data:
                        continue
                progress = False
                # Otherwise take what completes the message being received
                # (one longer than the ring arrives in pieces).
                while limit := self._read_limit(limits):
                    data = ring.read_requests(limit)
                    if not data:
                        break
                    progress = self._kick = True
                    decoder.receive_data(data)
                if not decoder.missing() and self._may_dispatch(limits):
                    packet = decoder.next_packet()
                    assert packet is not NEED_DATA
                    progress = True
                    self._dispatch(packet)
                if self._queue and self._write(ring):
                    progress = self._kick = True
                if not progress:
                    break
        except RingCorrupt as error:
            self._fail(RingError.RINGIDX, str(error))
        except RemoteProtocolError as error:
            self._fail(RingError.PROTO, str(error))
        if self._kick:
            self._kick = False
            if not self.closed:
                self._notify()
        if (
            self.quiesce is Quiesce.DRAINING
            and not self.decoder.buffer
            and not self._queue
        ):
            self._quiesced()

    def _dispatch(self, packet: Packet) -> None:
        tracer = self._trace_source.tracer
        if tracer is not None:
            tracer.request(self.name, packet)
        self.engine.handle(self.conn, packet)
        self._after_request()

    # -- QUIESCE ----------------------------------------------------------------

    def begin_quiesce(self, done: Callable[[bool], None], timeout: float) -> None:
        """Stop taking requests; call ``done(True)`` once drained and unmapped.

        ``done(False)`` if that takes longer than ``timeout`` seconds (the
        shell calls :meth:`tick` then); the ring then stays closed to new
        requests and keeps draining.
        """
        if self.quiesce is Quiesce.QUIESCED or self.ignored:
            self.quiesce = Quiesce.QUIESCED
            done(True)
            return
        self.quiesce = Quiesce.DRAINING
        self._quiesce_waiters.append(done)
        if self.quiesce_deadline == math.inf:
            self.quiesce_deadline = self._clock() + timeout
        self.process()

    def tick(self) -> None:
        """Time passed: a QUIESCE past its deadline answers EBUSY."""
        if self._clock() < self.quiesce_deadline:
            return
        self.quiesce_deadline = math.inf
        if self._quiesce_waiters:
            log.warning(
                "%s: QUIESCE timed out (partial input or output left)", self.name
            )
        self._answer_quiesce(False)

    def _answer_quiesce(self, drained: bool) -> None:
        """Answer every QUIESCE waiting; the deadline goes with them."""
        self.quiesce_deadline = math.inf
        waiters, self._quiesce_waiters = self._quiesce_waiters, []
        for done in waiters:
            done(drained)

    def _unmap(self) -> None:
        """Drop the views of the page, then the mapping itself."""
        if self.ring is not None:
            self.ring.release()
            self.ring = None
            self._close_mapping()

    def _quiesced(self) -> None:
        """Drained: drop the mapping (Xen marks the page dirty on unmap)."""
        self.quiesce = Quiesce.QUIESCED
        self._unmap()
        log.info("%s: quiesced", self.name)
        self._answer_quiesce(True)

    def resume(self, ring: Ring, close_mapping: Callable[[], None]) -> None:
        """INTRODUCE of the quiesced domain: serve the ring again."""
        self._unmap()
        self.ring = ring
        self._close_mapping = close_mapping
        self.quiesce = Quiesce.ACTIVE
        # Events kept while quiesced (MIGRATION.md a.3 item 7) start their
        # watch-event timeout now: the guest could not read them before.
        timeout = self._event_timeout()
        if timeout:
            expires = self._clock() + timeout
            for message in self._queue:
                if not message.is_reply:
                    message.expires = expires
        self._answer_quiesce(False)
        log.info("%s: resumed", self.name)
        self.process()

    # -- live update ------------------------------------------------------------

    def pending_io(self) -> tuple[bytes, bytes, int]:
        """What a live update saves: input taken off the ring and not yet
        handled, output not yet in the ring, and how much of that output is
        the rest of a message partly written (MIGRATION.md b.5)."""
        queue = self._queue
        out = b"".join(m.data for m in queue)[self._offset :]
        resp_len = len(queue[0].data) - self._offset if self._offset else 0
        return self.decoder.peek(), out, resp_len

    def restore_io(self, in_data: bytes, out_data: bytes, resp_len: int) -> None:
        """Take back what :meth:`pending_io` saved (the restored image).

        Whole requests in ``in_data`` are handled before anything new is
        read from the ring; the output is queued message by message, the
        partly written one first.
        """
        self.decoder.receive_data(in_data)
        if resp_len:
            # The tail of a message: no header to tell what it is; C counts
            # it as a reply (outstanding) too.
            self._queue.append(_Message(out_data[:resp_len], is_reply=True))
            self.queued += resp_len
            self.outstanding += 1
        messages: list[bytes] = []
        pos = resp_len
        while pos < len(out_data):
            if len(out_data) - pos < HEADER_SIZE:
                log.warning("%s: saved output ends in a cut header; dropped", self.name)
                break
            length = HEADER_SIZE + HEADER.unpack_from(out_data, pos)[3]
            messages.append(out_data[pos : pos + length])
            pos += length
        self._enqueue(messages)

    # -- failure and reset --------------------------------------------------

    def _fail(self, code: RingError, reason: str) -> None:
        log.warning("%s: %s; ring marked broken (error %d)", self.name, reason, code)
        if self.ring is not None:
            self.ring.error = code
        self.ignored = True
        self.engine.reset_connection(self.conn)
        self.reset()

    def reset(self, *, keep_partial: bool = False) -> None:
        """Forget partial input and every queued message.

        With ``keep_partial`` a message already partly written into the
        ring is kept (and finished): the indices are not reset then (a
        repeated INTRODUCE), and cutting it would misframe the guest's
        stream for good.
        """
        self.decoder.clear()
        first = self._queue[0] if keep_partial and self._offset else None
        self._queue.clear()
        self.queued = 0
        self.outstanding = 0
        if first is None:
            self._offset = 0
            return
        self._queue.append(first)
        self.queued = len(first.data) - self._offset
        self.outstanding = int(first.is_reply)

    def _reconnect(self) -> None:
        """The guest asked for a reset (RING.md 6), done the way O does it."""
        log.info("%s: guest requested a reconnection", self.name)
        self.engine.reset_connection(self.conn)
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
        # A QUIESCE still draining gets its answer (EBUSY): the domain went.
        self._answer_quiesce(False)
        self._unmap()
