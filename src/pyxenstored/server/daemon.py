"""The daemon: an asyncio loop around one :class:`~pyxenstored.engine.Engine`.

Everything that decides what happens is in the engine; this module only
moves bytes.  Each socket client is an :class:`asyncio.Protocol`: bytes in
go through a :class:`~pyxenstored.wire.PacketDecoder` to
``Engine.handle``; after each read the output the engine queued for any
connection is written out.  The engine never awaits, so there are no
locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import stat
import time
from typing import Protocol

from pyxenstored.engine.connections import Connection
from pyxenstored.engine.engine import Engine
from pyxenstored.engine.livestate import ConnIO, Restored
from pyxenstored.errors import RemoteProtocolError
from pyxenstored.migration.xsstate import ConnectionData, ConnType
from pyxenstored.server.config import Config
from pyxenstored.server.guests import Guests, Platform
from pyxenstored.server.liveupdate import Updater, binary_problem
from pyxenstored.server.rings import Quiesce, RingClient
from pyxenstored.server.trace import Tracer
from pyxenstored.wire.decoder import NEED_DATA, PacketDecoder
from pyxenstored.wire.ops import HEADER_SIZE, PAYLOAD_MAX
from pyxenstored.wire.packet import HEADER, Packet, encode_packet

__all__ = ["Daemon", "SocketInUse"]

log = logging.getLogger(__name__)

#: Stop reading a client's requests while this much of its output waits.
_PAUSE_AT = 256 * 1024


class _Client(Protocol):
    """Where the output of one connection goes."""

    def send(self, messages: list[bytes]) -> None: ...


class SocketInUse(Exception):
    """Another daemon already serves the socket path."""


#: Bytes read from a socket client at a time.
_READ_SIZE = 65536
#: The one read buffer of every socket client.  The loop reads one client
#: at a time and each read is handled before the next one (a message still
#: incomplete is copied into its client's decoder), so they can share it:
#: it stays hot in the cache, and a new connection has no 64 KiB to
#: allocate and zero.
_READ_VIEW = memoryview(bytearray(_READ_SIZE))


class _SocketClient(asyncio.Protocol, asyncio.BufferedProtocol):
    """One local client on the Unix socket.

    Both kinds of protocol, and each loop takes the one it is fastest with.
    asyncio's own loop sees a ``BufferedProtocol`` and reads into one buffer
    shared by every client (``recv_into``); as a plain Protocol it would
    allocate a fresh 256 KiB ``bytes`` for every read, which cost more than
    handling the request itself.  uvloop treats anything that is an
    ``asyncio.Protocol`` as a plain one and hands over each read as a small
    ``bytes``: about 2,000 instructions per request fewer than its buffered
    path (``get_buffer`` and ``buffer_updated`` are two Python calls, plus
    the buffer's acquisition), measured with ``bench.instructions``.  Either
    way the request is the same, so either choice by a loop is correct.
    """

    def __init__(
        self,
        daemon: Daemon,
        conn: Connection | None = None,
        saved: ConnectionData | None = None,
    ) -> None:
        """``conn`` and ``saved``: a connection carried over by a live update,
        with the input it had not handled and the output not yet sent."""
        self.daemon = daemon
        self.decoder = PacketDecoder()
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = conn
        self._saved = saved
        self.name = "socket"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.  (Not
        # typing.cast: a call at run time, on every connection.)
        own: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = own
        own.set_write_buffer_limits(high=_PAUSE_AT)
        if self.conn is None:
            self.conn = self.daemon.engine.connect_socket()
        self.name = f"conn{self.conn.id}"
        self.daemon.clients[self.conn.id] = self
        if self.daemon.log_connections:
            log.debug("%s: connected", self.name)
        saved, self._saved = self._saved, None
        if saved is not None:
            if saved.out_data:
                self.transport.write(saved.out_data)
            if saved.in_data:
                self.data_received(saved.in_data)

    def fileno(self) -> int:
        """The client socket's descriptor (-1 once closed)."""
        if self.transport is None:
            return -1
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def can_hand_over(self) -> bool:
        """Whether a live update carries this connection over.

        Not once closing, nor (a forced update) while the kernel has not
        taken all its output: asyncio keeps those bytes out of reach, and
        the rest of a message cut short would misframe the client's stream
        for good, so the connection closes instead (the client sees EOF).
        """
        return self.fileno() >= 0 and not self.unsent()

    def unsent(self) -> int:
        """Bytes written to the transport and not yet to the socket."""
        if self.transport is None or self.transport.is_closing():
            return 0
        return self.transport.get_write_buffer_size()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_VIEW[:nbytes]))

    def data_received(self, data: bytes) -> None:
        nbytes = len(data)
        if nbytes >= HEADER_SIZE and not self.decoder.buffer:
            # The common case, one whole request and nothing buffered before
            # it: handled from the read itself, no copy through the decoder.
            op, req_id, tx_id, length = HEADER.unpack_from(data)
            if nbytes == HEADER_SIZE + length and length <= PAYLOAD_MAX:
                conn = self.conn
                assert conn is not None
                daemon = self.daemon
                request = Packet(op, req_id, tx_id, data[HEADER_SIZE:])
                tracer = daemon.tracer
                if tracer is not None:
                    tracer.request(self.name, request)
                daemon.engine.handle(conn, request)
                daemon.flush()
                return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Requests in pieces or several at once: through the decoder."""
        conn = self.conn
        assert conn is not None
        daemon = self.daemon
        decoder = self.decoder
        decoder.receive_data(data)
        handle = daemon.engine.handle
        while True:
            try:
                packet = decoder.next_packet()
            except RemoteProtocolError as error:
                log.warning("%s: %s; closing the connection", self.name, error)
                decoder.clear()
                self.close()
                break
            if packet is NEED_DATA:
                break
            # Looked up each time: CONTROL ``log off`` closes it in handle().
            tracer = daemon.tracer
            if tracer is not None:
                tracer.request(self.name, packet)
            handle(conn, packet)
        daemon.flush()

    def send(self, messages: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.daemon.tracer is not None:
            for message in messages:
                self.daemon.tracer.output(self.name, message)
        transport.write(b"".join(messages))
        if transport.get_write_buffer_size() > self.daemon.config.socket_output_limit:
            log.warning("%s: client does not read its replies; closing", self.name)
            self.decoder.clear()
            self.close()

    def pause_writing(self) -> None:
        # The client is not reading: stop taking its requests until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            if self.decoder.partial:
                log.warning(
                    "%s: closed with %d bytes of an incomplete message; discarded",
                    self.name,
                    self.decoder.buffered,
                )
            else:
                if self.daemon.log_connections:
                    log.debug("%s: disconnected", self.name)
            self.daemon.clients.pop(self.conn.id, None)
            self.daemon.engine.disconnect(self.conn)
            self.daemon.flush()
        self.transport = None


def _adopt_socket(fd: int) -> socket.socket:
    """A socket inherited across exec, closed on the next exec again."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


class Daemon:
    """Serve one engine on the Unix socket until stopped."""

    def __init__(
        self,
        config: Config,
        engine: Engine | None = None,
        platform: Platform | None = None,
        restored: Restored | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or Engine(config.engine)
        self.clients: dict[int, _Client] = {}
        #: The hypervisor backend to serve guests through (None: sockets only).
        self.platform = platform
        self.guests: Guests | None = None
        self._scanner: asyncio.Task[None] | None = None
        self.tracer: Tracer | None = None
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        #: Where the request trace goes (``-T``, CONTROL ``logfile``).
        self.trace_file = config.trace_file
        self.engine.operator = self
        self.engine.clock = time.monotonic
        #: What a live update left for this program to take over.
        self.restored = restored
        self.updater = Updater(self)
        #: Whether connections and disconnections are logged (debug): asked
        #: once, here, rather than two logging calls per connection.
        self.log_connections = log.isEnabledFor(logging.DEBUG)

    # -- CONTROL (the engine's Operator) ----------------------------------

    def note(self, text: str) -> None:
        log.info("control: %s", text)

    def set_tracing(self, on: bool) -> None:
        """``log on`` (re)opens the trace file, ``log off`` closes it (as C)."""
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
        if on and self.trace_file:
            try:
                self.tracer = Tracer.open(self.trace_file)
            except OSError as error:
                log.error("cannot open the trace file %s: %s", self.trace_file, error)
        log.info("request trace %s", "on" if self.tracer is not None else "off")

    def set_trace_file(self, path: str) -> None:
        self.trace_file = path
        self.set_tracing(True)

    def append_report(self, path: str | None, text: str) -> None:
        if path is None:
            if self.tracer is None:
                raise OSError("no trace file is open")
            self.tracer.write(text)
            return
        with open(path, "a", encoding="utf-8") as report:
            report.write(text)

    def check_update_binary(self, path: str) -> str | None:
        return binary_problem(path)

    def live_update_started(self) -> None:
        self.updater.start()

    # -- live update (server/liveupdate.py) --------------------------------------

    def connection_io(self) -> list[ConnIO]:
        """What each connection holds, for the saved state (engine order)."""
        ios = []
        for conn in self.engine.connections.values():
            parked = b"".join(
                encode_packet(p.op, p.req_id, p.tx_id, p.payload)
                for p in conn.parked or ()
            )
            client = self.clients.get(conn.id)
            io = ConnIO(conn)
            if isinstance(client, _SocketClient):
                if not client.can_hand_over():
                    continue
                io.socket_fd = client.fileno()
                io.in_data = parked + client.decoder.peek()
                io.out_data = b"".join(conn.out)
            elif isinstance(client, RingClient) and self.guests is not None:
                pending, io.out_data, io.out_resp_len = client.pending_io()
                io.in_data = parked + pending
                io.port = self.guests.port_of.get(conn.domid, 0)
            else:
                continue
            ios.append(io)
        return ios

    def update_blockers(self) -> tuple[list[str], list[str]]:
        """Why the state cannot be saved right now: sockets with output not
        yet sent (``-F`` may lose it), and quiesced domains (never forced)."""
        unsent, quiesced = [], []
        for client in self.clients.values():
            if isinstance(client, _SocketClient) and client.unsent():
                unsent.append(f"{client.name}: {client.unsent()} bytes not sent")
            elif (
                isinstance(client, RingClient) and client.quiesce is not Quiesce.ACTIVE
            ):
                quiesced.append(f"Domain {client.conn.domid}: quiesced for migration")
        return unsent, quiesced

    def listening_fd(self) -> int:
        if self._server is None or not self._server.sockets:
            return -1
        return self._server.sockets[0].fileno()

    def _exec_fds(self) -> list[int]:
        fds = [self.listening_fd()]
        fds += [
            c.fileno()
            for c in self.clients.values()
            if isinstance(c, _SocketClient) and c.can_hand_over()
        ]
        return [fd for fd in fds if fd >= 0]

    def prepare_exec(self) -> None:
        """Every descriptor the new program takes over survives exec."""
        for fd in self._exec_fds():
            os.set_inheritable(fd, True)
        if self.guests is not None:
            self.platform_or_fail().prepare_exec()

    def exec_failed(self) -> None:
        for fd in self._exec_fds():
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        if self.guests is not None:
            try:
                self.platform_or_fail().exec_failed()
            except OSError as error:
                log.error("after a failed live update: %s", error)

    def platform_or_fail(self) -> Platform:
        assert self.platform is not None, "no hypervisor backend"
        return self.platform

    # -- output ------------------------------------------------------------

    def flush(self) -> None:
        """Write out everything the engine queued, to every connection."""
        engine = self.engine
        pending = engine.pending
        if not pending:
            return  # (most calls: a wake-up that answered nothing)
        engine.pending = {}  # Engine.take_pending, written out: every request
        clients = self.clients
        for conn in pending.values():
            client = clients.get(conn.id)
            messages = conn.take_output()
            if client is not None and messages:
                client.send(messages)

    # -- life cycle ----------------------------------------------------------

    def _bind(self) -> socket.socket:
        path = self.config.socket_path
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise SocketInUse(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError as error:
                if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise
                log.info("replacing stale socket %s", path)
                os.unlink(path)
            else:
                raise SocketInUse(f"another xenstored is serving {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        """Bind the socket and start accepting clients."""
        if self.trace_file:
            self.tracer = Tracer.open(self.trace_file)
        restored = self.restored
        if restored is not None and restored.socket_fd >= 0:
            sock = _adopt_socket(restored.socket_fd)
        else:
            sock = self._bind()
        loop = asyncio.get_running_loop()
        if self.platform is not None:
            self.guests = Guests(self, self.platform)
            self.guests.start(loop)
            self.engine.domains.hypervisor = self.guests
            self._scanner = loop.create_task(self._scan_rings())
            if restored is None:
                self._init_master()
        self._server = await loop.create_unix_server(
            functools.partial(_SocketClient, self), sock=sock
        )
        if restored is not None:
            await self._take_over(restored)
        log.info("serving %s", self.config.socket_path)

    async def _take_over(self, restored: Restored) -> None:
        """Serve the connections a live update carried over, then look at
        which domains still live (one may have died during the update)."""
        loop = asyncio.get_running_loop()
        rings: list[RingClient] = []
        for conn, saved in restored.connections:
            if saved.conn_type is ConnType.RING:
                if self.guests is None:
                    log.error(
                        "dom%d: a ring connection, but no hypervisor backend; dropped",
                        conn.domid,
                    )
                    self.engine.domains.remove(conn.domid)
                    self.engine.disconnect(conn)
                    continue
                client = self.guests.restore_ring(conn, saved.evtchn)
                client.restore_io(saved.in_data, saved.out_data, saved.out_resp_len)
                rings.append(client)
                continue
            try:
                sock = _adopt_socket(saved.socket_fd)
                await loop.connect_accepted_socket(
                    functools.partial(_SocketClient, self, conn, saved), sock=sock
                )
            except OSError as error:
                log.warning("%s: not restored: %s", conn.describe(), error)
                self.engine.disconnect(conn)
        self.engine.check_domains()
        for client in rings:
            client.kick()
            client.process()
        self.flush()
        log.info(
            "live update: %d connections taken over (%d rings)",
            len(restored.connections),
            len(rings),
        )

    def _init_master(self) -> None:
        """Serve dom0's own ring, as C's ``dom0_init`` (not with ``-D``)."""
        if self.platform is None or not self.config.domain_init:
            return
        port = self.platform.master_port()
        if port is None:
            return
        self.engine.introduce_master(self.config.master, port)

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`stop`), then clean up."""
        self._stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.close()

    async def _scan_rings(self) -> None:
        while self.guests is not None:
            await asyncio.sleep(self.config.ring_scan_interval)
            if self.guests is not None:
                self.guests.rescan()

    def stop(self) -> None:
        log.info("stopping")
        if self._stopped is not None:
            self._stopped.set()

    async def close(self) -> None:
        """Stop accepting, drop every client, remove the socket and pid file."""
        self.updater.cancel()
        if self._scanner is not None:
            self._scanner.cancel()
            self._scanner = None
        if self.guests is not None:
            self.guests.close()
            self.engine.domains.hypervisor = None
            self.guests = None
        if self._server is not None:
            self._server.close()
            for client in list(self.clients.values()):
                if isinstance(client, _SocketClient):
                    client.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
