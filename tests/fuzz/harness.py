"""Drive one real pyxenstored with fuzzed requests and check every answer.

A :class:`Harness` owns the daemon's clients for a whole session: three
Unix-socket channels (dom0) and the rings of two guest domains, written
and read byte by byte as a guest kernel would.  :meth:`Harness.run` plays
one example (a list of :class:`Action`), then settles the daemon back to
a known state and checks it:

* every well-formed request got exactly one reply, echoing its ``req_id``
  and ``tx_id``, of its own type or ERROR with a known name;
* a header announcing more than 4096 bytes closed the socket without a
  reply, or marked the ring broken (``error`` = 3);
* watch events are well formed;
* afterwards the daemon is alive, logged no traceback, and CONTROL
  ``check`` answers OK: the tree is consistent and every quota account
  equals a recount.

Requests are sent one at a time (or a pipeline at once) and their replies
awaited before the next, so "exactly one reply" is decidable without
guessing at timing.  Whatever a request did to a guest's domain (RELEASE,
QUIESCE, a second INTRODUCE, a broken ring) the harness repairs before
the next action, as a toolstack would.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pyxenstored.client.sync import Client
from pyxenstored.client.transport import UnixTransport
from pyxenstored.errors import ERROR_NAMES, BrokenConnection, XsError
from pyxenstored.paths import SPECIAL_NODES
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from pyxenstored.store.quota import QUOTA_NAMES, Limits
from pyxenstored.wire import HEADER, PAYLOAD_MAX
from pyxenstored.wire.ops import Op
from tests.conftest import RunningDaemon
from tests.wiretools import Misframed, frame, take_message

#: Bound on every wait for the daemon.
TIMEOUT = 10.0
#: Socket channels (privileged dom0 clients) and guest domains with rings.
SOCKETS = 3
GUESTS = (1, 2)
#: A domain with a ring page that the fuzzer may introduce, quiesce, release.
SPARE = 3
#: Seconds QUIESCE may drain (the daemon's --quiesce-timeout).
QUIESCE_TIMEOUT = 0.5
#: Types the engine knows (PROTOCOL.md 2); any other one answers ENOSYS.
KNOWN_OPS = frozenset(int(op) for op in Op) - {
    Op.WATCH_EVENT,
    Op.ERROR,
    Op.INVALID,
}
_ERRORS = frozenset(name.encode() + b"\0" for name in ERROR_NAMES)
#: Quota values the harness restores after every example.
DEFAULT_LIMITS = Limits()

Message = tuple[int, int, int, bytes]


class Request(NamedTuple):
    """One fuzzed request (``tx`` is resolved when it is sent)."""

    op: int
    payload: bytes
    #: "none", "open" (the channel's newest transaction) or an explicit id.
    tx: str | int


class Action(NamedTuple):
    """What one step of an example does on one channel.

    ``mode``: ``whole`` (send, await the reply), ``split`` (the same, in
    three writes), ``truncate`` (a prefix, then the connection is dropped
    or the ring reset), ``oversize`` (a header announcing ``len`` > 4096)
    or ``pipeline`` (``requests`` all in one write).
    """

    channel: int
    mode: str
    requests: tuple[Request, ...]
    #: Where a truncation cuts, or the announced length of an oversize header.
    cut: int = 0


class FuzzFailure(AssertionError):
    """The daemon broke a rule of the protocol or lost its consistency."""


@dataclass
class Stats:
    """Figures printed at the end of the session."""

    examples: int = 0
    actions: int = 0
    requests: int = 0
    replies: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    events: int = 0
    truncated: int = 0
    oversize_closed: int = 0
    rings_broken: int = 0
    domains_rebuilt: int = 0
    checks: int = 0
    disagreements: int = 0
    crashes: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        top = sorted(self.errors.items(), key=lambda kv: -kv[1])[:8]
        return [
            f"examples (inputs tried): {self.examples}, actions: {self.actions}, "
            f"requests: {self.requests}, replies checked: {self.replies}, "
            f"events: {self.events}",
            f"truncated messages: {self.truncated}, oversized headers: "
            f"{self.oversize_closed} sockets closed / {self.rings_broken} rings "
            f"broken, domains rebuilt: {self.domains_rebuilt}",
            f"CONTROL check: {self.checks} run, {self.disagreements} disagreed; "
            f"crashes: {self.crashes}; {self.seconds:.1f} s",
            "error replies: " + ", ".join(f"{k} {v}" for k, v in top),
        ]


def parse(buf: bytearray) -> Message | None:
    """Take one whole message off the front of ``buf``."""
    try:
        return take_message(buf)
    except Misframed as error:
        raise FuzzFailure(f"the daemon sent {error}") from None


class Channel:
    """A byte stream to the daemon, read into :attr:`buf`."""

    name = "channel"

    def __init__(self) -> None:
        self.buf = bytearray()
        #: Transaction ids this channel opened and has not ended.
        self.open_tx: list[int] = []
        self.next_req = 1

    def write(self, data: bytes, deadline: float) -> None:
        raise NotImplementedError

    def read_some(self, deadline: float) -> None:
        """Append whatever arrives (at least one byte) to :attr:`buf`."""
        raise NotImplementedError

    def req_id(self) -> int:
        self.next_req = self.next_req % 0xFFFFFFFF + 1
        return self.next_req

    def close(self) -> None:
        raise NotImplementedError


class SocketChannel(Channel):
    def __init__(self, path: Path, index: int) -> None:
        super().__init__()
        self.name = f"socket{index}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)

    def write(self, data: bytes, deadline: float) -> None:
        # Read while writing: the daemon stops reading a client whose
        # output is not collected.
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.sock], [], 0.05)
            if writable:
                try:
                    view = view[self.sock.send(view) :]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError) as error:
                    raise FuzzFailure(f"{self.name}: closed while sending") from error
            else:
                self._try_read()
            if time.monotonic() > deadline:
                raise FuzzFailure(f"{self.name}: the daemon takes no requests")

    def _try_read(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.buf += data
        return True

    def read_some(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FuzzFailure(f"{self.name}: no reply within {TIMEOUT} s")
        readable, _, _ = select.select([self.sock], [], [], left)
        if readable and not self._try_read():
            raise FuzzFailure(f"{self.name}: the daemon closed the connection")

    def closed_by_daemon(self, deadline: float) -> bool:
        """True once the daemon closed the connection (EOF or reset)."""
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], 0.1)
            if not readable:
                continue
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            except BlockingIOError:
                continue
            if not data:
                return True
            self.buf += data
        return False

    def close(self) -> None:
        self.sock.close()


class RingChannel(Channel):
    def __init__(self, directory: Path, domid: int) -> None:
        super().__init__()
        self.domid = domid
        self.name = f"dom{domid}"
        self.directory = directory
        self.ring = GuestRing(str(directory), domid, timeout=TIMEOUT)

    def _pull(self) -> bool:
        data = self.ring.ring.read_replies(65536)
        if data:
            self.ring.kick()
            self.buf += data
        return bool(data)

    def broken(self) -> int:
        return self.ring.ring.error

    def write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if self.broken():
                raise BrokenConnection(f"ring error {self.broken()}")
            n = self.ring.ring.write_requests(bytes(view[:1024]))
            if n:
                view = view[n:]
                self.ring.kick()
                continue
            # No room: collect output meanwhile, the daemon may wait for it.
            if not self._pull():
                self.ring.wait(0.02)
            if time.monotonic() > deadline:
                raise FuzzFailure(f"{self.name}: the daemon takes no requests")

    def read_some(self, deadline: float) -> None:
        while not self._pull():
            if self.broken():
                raise FuzzFailure(f"{self.name}: ring marked broken ({self.broken()})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise FuzzFailure(f"{self.name}: no reply within {TIMEOUT} s")
            self.ring.wait(min(left, 0.05))

    def reconnect(self) -> None:
        """Ask the daemon for a ring reset (RING.md 6); start afresh."""
        self.ring.request_reconnect()
        self.buf.clear()
        self.open_tx.clear()

    def close(self) -> None:
        self.ring.close()


class Harness:
    """The fuzzing client side of one daemon, for a whole session."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.daemon = daemon
        self.dir = daemon.directory
        self.hv = HostDir(str(self.dir))
        self.control = Client(transport=UnixTransport.connect(str(daemon.socket)))
        self.toolstack = Toolstack(self.control, self.hv)
        self.stats = Stats()
        self._log_offset = 0
        for domid in GUESTS:
            self._build(domid)
        self.hv.create_domain(SPARE)
        self.rings = {domid: RingChannel(self.dir, domid) for domid in GUESTS}
        self.sockets: list[SocketChannel] = []
        self.channels: list[Channel] = []
        self.check("start")

    # -- domains ------------------------------------------------------------

    def _build(self, domid: int) -> None:
        """A fresh domain: new page, libxl's nodes, every feature, INTRODUCE."""
        self.toolstack.create_domain(domid, introduce=False)
        self.control.set_feature(domid, 3)  # reconnection + error field
        self.control.introduce(domid, 0xFEFFF, 1)

    def _restore_quotas(self) -> None:
        """The default quotas, for everyone (the fuzzer changes them)."""
        for name, attr in QUOTA_NAMES.items():
            value = getattr(DEFAULT_LIMITS, attr)
            self.control.set_quota(name, value)
            for domid in (*GUESTS, SPARE):
                with contextlib.suppress(XsError):
                    self.control.set_quota(name, value, domid)

    def rebuild(self, domid: int) -> None:
        """Destroy a guest domain (whatever state it is in) and build it anew."""
        # The toolstack's commit of the new domain's nodes is checked
        # against that domain's node quota, which the fuzzer may have cut.
        self._restore_quotas()
        self.rings[domid].close()
        self.hv.kill_domain(domid, remove=True)
        deadline = time.monotonic() + TIMEOUT
        while self.control.is_domain_introduced(domid):
            if time.monotonic() > deadline:
                raise FuzzFailure(f"dom{domid} was never cleaned up")
            time.sleep(0.005)
        self._build(domid)
        self.rings[domid] = RingChannel(self.dir, domid)
        self.channels[SOCKETS + GUESTS.index(domid)] = self.rings[domid]
        self.stats.domains_rebuilt += 1

    # -- one example ----------------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        started = time.monotonic()
        self.stats.examples += 1
        self.sockets = [SocketChannel(self.daemon.socket, i) for i in range(SOCKETS)]
        self.channels = [*self.sockets, *(self.rings[d] for d in GUESTS)]
        try:
            for action in actions:
                self.stats.actions += 1
                self._act(action)
            self._settle()
        finally:
            for sock in self.sockets:
                sock.close()
            self.stats.seconds += time.monotonic() - started
        self.check("after the example")

    def _act(self, action: Action) -> None:
        channel = self.channels[action.channel % len(self.channels)]
        deadline = time.monotonic() + TIMEOUT
        if action.mode == "pipeline":
            self._pipeline(channel, action.requests, deadline)
            return
        request = action.requests[0]
        req_id = channel.req_id()
        tx_id = self._tx(channel, request.tx)
        data = frame(request.op, request.payload, req_id, tx_id)
        if action.mode == "truncate":
            self._truncate(channel, data[: max(1, action.cut % len(data))])
        elif action.mode == "oversize":
            length = PAYLOAD_MAX + 1 + action.cut % 0xFFFFEFFE
            self._oversize(channel, HEADER.pack(request.op, req_id, tx_id, length))
        else:
            if action.mode == "split":
                third = max(1, len(data) // 3)
                for piece in (data[:third], data[third : 2 * third], data[2 * third :]):
                    channel.write(piece, deadline)
                    time.sleep(0.001)
            else:
                channel.write(data, deadline)
            self.stats.requests += 1
            reply = self._await(channel, {req_id: (request.op, tx_id)}, deadline)
            self._after(channel, request, reply[req_id])

    def _tx(self, channel: Channel, tx: str | int) -> int:
        if isinstance(tx, int):
            return tx
        if tx == "open" and channel.open_tx:
            return channel.open_tx[-1]
        return 0

    def _pipeline(
        self, channel: Channel, requests: tuple[Request, ...], deadline: float
    ) -> None:
        expected: dict[int, tuple[int, int]] = {}
        data = bytearray()
        for request in requests:
            req_id = channel.req_id()
            tx_id = self._tx(channel, request.tx)
            expected[req_id] = (request.op, tx_id)
            data += frame(request.op, request.payload, req_id, tx_id)
        channel.write(bytes(data), deadline)
        self.stats.requests += len(requests)
        replies = self._await(channel, expected, deadline)
        for request, req_id in zip(requests, expected, strict=True):
            self._after(channel, request, replies[req_id])

    def _await(
        self,
        channel: Channel,
        expected: dict[int, tuple[int, int]],
        deadline: float,
    ) -> dict[int, Message]:
        """Read until every expected reply came, checking each message."""
        got: dict[int, Message] = {}
        while len(got) < len(expected):
            message = parse(channel.buf)
            if message is None:
                channel.read_some(deadline)
                continue
            op, req, tx, payload = message
            if op == Op.WATCH_EVENT:
                self._check_event(channel, message)
                continue
            if req not in expected:
                raise FuzzFailure(f"{channel.name}: unexpected reply {message!r}")
            if req in got:
                raise FuzzFailure(f"{channel.name}: second reply to {req}: {message!r}")
            want_op, want_tx = expected[req]
            if tx != want_tx:
                raise FuzzFailure(f"{channel.name}: tx_id not echoed: {message!r}")
            if op == Op.ERROR:
                if payload not in _ERRORS:
                    raise FuzzFailure(f"{channel.name}: bad ERROR {message!r}")
                name = payload[:-1].decode()
                self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
                if want_op not in KNOWN_OPS and payload != b"ENOSYS\0":
                    raise FuzzFailure(f"unknown type {want_op}: {message!r}")
            elif op != want_op or want_op not in KNOWN_OPS:
                raise FuzzFailure(f"{channel.name}: reply of type {op} to {want_op}")
            got[req] = message
            self.stats.replies += 1
        return got

    def _check_event(self, channel: Channel, message: Message) -> None:
        _, req, tx, payload = message
        if (req, tx) != (0, 0) or payload.count(b"\0") != 2 or payload[-1:] != b"\0":
            raise FuzzFailure(f"{channel.name}: malformed event {message!r}")
        self.stats.events += 1

    # -- what a reply does to the harness's picture -----------------------------

    def _after(self, channel: Channel, request: Request, reply: Message) -> None:
        op, _, tx, payload = reply
        if op == Op.TRANSACTION_START:
            channel.open_tx.append(int(payload[:-1]))
        elif op == Op.TRANSACTION_END or (
            op == Op.ERROR
            and request.op == Op.TRANSACTION_END
            # EINVAL (neither T nor F) leaves the transaction open.
            and payload != b"EINVAL\0"
        ):
            with contextlib.suppress(ValueError):
                channel.open_tx.remove(tx)
        elif op == Op.RESET_WATCHES:
            channel.open_tx.clear()
        elif op == Op.CONTROL and request.payload.startswith(b"check\0"):
            self.stats.checks += 1
        elif op == Op.ERROR and request.op == Op.CONTROL and payload == b"EIO\0":
            self.stats.disagreements += 1
            raise FuzzFailure(f"CONTROL {request.payload!r} answered EIO")
        domid = _first_domid(request.payload)
        if domid is None:
            return
        if request.op == Op.QUIESCE and payload in (b"OK\0", b"EBUSY\0"):
            # A toolstack resumes a domain it quiesced by INTRODUCE.
            with contextlib.suppress(XsError):
                self.control.introduce(domid, 0xFEFFF, 1)
        if op == Op.ERROR or domid not in GUESTS:
            return
        if request.op == Op.RELEASE:
            self.rebuild(domid)
        elif request.op == Op.INTRODUCE:
            # A second INTRODUCE resets the connection (its transactions
            # and queued output); the guest resets its ring to resync.
            self.rings[domid].reconnect()

    def _truncate(self, channel: Channel, prefix: bytes) -> None:
        self.stats.truncated += 1
        deadline = time.monotonic() + TIMEOUT
        channel.write(prefix, deadline)
        if isinstance(channel, RingChannel):
            channel.reconnect()
            return
        assert isinstance(channel, SocketChannel)
        self._replace_socket(channel)

    def _oversize(self, channel: Channel, header: bytes) -> None:
        deadline = time.monotonic() + TIMEOUT
        if isinstance(channel, RingChannel):
            with contextlib.suppress(BrokenConnection):
                channel.write(header + b"smuggled\0", deadline)
            while channel.broken() != 3:
                if time.monotonic() > deadline:
                    raise FuzzFailure(f"{channel.name}: oversize header accepted")
                time.sleep(0.005)
            self.stats.rings_broken += 1
            self.rebuild(channel.domid)
            return
        assert isinstance(channel, SocketChannel)
        with contextlib.suppress(FuzzFailure):  # closed before all was sent
            channel.write(header + b"smuggled\0", deadline)
        if not channel.closed_by_daemon(deadline):
            raise FuzzFailure(f"{channel.name}: oversize header did not close it")
        while (message := parse(channel.buf)) is not None:
            if message[0] != Op.WATCH_EVENT:
                raise FuzzFailure(f"{channel.name}: a reply to an oversize header")
        self.stats.oversize_closed += 1
        self._replace_socket(channel)

    def _replace_socket(self, channel: SocketChannel) -> None:
        channel.close()
        index = self.sockets.index(channel)
        fresh = SocketChannel(self.daemon.socket, index)
        self.sockets[index] = fresh
        self.channels[index] = fresh

    # -- back to a known state ----------------------------------------------------

    def _settle(self) -> None:
        """Barrier on every channel; undo what would pile up across examples."""
        for channel in self.channels:
            deadline = time.monotonic() + TIMEOUT
            req_id = channel.req_id()
            channel.write(frame(Op.RESET_WATCHES, b"\0", req_id), deadline)
            self._await(channel, {req_id: (Op.RESET_WATCHES, 0)}, deadline)
            channel.open_tx.clear()
            while (message := parse(channel.buf)) is not None:
                if message[0] != Op.WATCH_EVENT:
                    raise FuzzFailure(f"{channel.name}: extra reply {message!r}")
            channel.buf.clear()
        control = self.control
        control.control("log", "on")
        self._restore_quotas()
        for path in ("/", "/local", "/local/domain", *SPECIAL_NODES):
            with contextlib.suppress(XsError):
                control.set_perms(path, ["n0"])
        for name in control.directory("/"):
            if name not in ("tool", "local"):
                control.rm(f"/{name}")
        with contextlib.suppress(XsError):  # the fuzzer may have removed it
            for name in control.directory("/local/domain"):
                if name not in ("0", "1", "2"):
                    control.rm(f"/local/domain/{name}")
        for domid in GUESTS:
            if not control.is_domain_introduced(domid):
                raise FuzzFailure(f"dom{domid} is no longer introduced")
            if not control.exists(f"/local/domain/{domid}/name"):
                self.rebuild(domid)  # its nodes were removed: start afresh

    def check(self, when: str) -> None:
        """The daemon lives, logged no crash, and its accounts add up."""
        if not self.daemon.alive():
            self.stats.crashes += 1
            raise FuzzFailure(f"the daemon died ({when})")
        with self.daemon.log.open("rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
            self._log_offset = f.tell()
        for bad in ("Traceback", " ERROR ", " CRITICAL "):
            if bad in text:
                self.stats.crashes += 1
                raise FuzzFailure(f"the daemon logged {bad.strip()} ({when}):\n{text}")
        self.stats.checks += 1
        reply = self.control.control("check")
        if reply != b"OK\0":
            self.stats.disagreements += 1
            raise FuzzFailure(f"CONTROL check ({when}): {reply!r}")

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.control.close()


def _first_domid(payload: bytes) -> int | None:
    """The leading domid argument of a domain operation, if it is valid."""
    text = payload.split(b"\0", 1)[0]
    if not text.isdigit() or len(text) > 5:
        return None
    return int(text)
