"""The emulated hypervisor: domains, ring pages and event channels as files.

This is the only module that knows the host-directory conventions of
``EMULATION.md`` (shared with the peers' LD_PRELOAD shim, so the same
simulated guest can talk to this daemon, C xenstored and oxenstored):

* ``DIR/ring-N``: domain N's ring page (4096 bytes, ``mmap``'ed shared);
  its existence means "domain N exists"; ``DIR/dying-N`` means dying.
* ``DIR/evtchn``: a datagram socket this daemon binds; each kick to the
  daemon is a 4-byte native-endian daemon-side port number.
* ``DIR/port-N``: the daemon-side port bound for domain N (decimal).
* ``DIR/notify-N``: domain N's datagram socket; the daemon kicks it with its
  own port number, and a kick nobody receives is dropped.
* ``DIR/virq-port``: the VIRQ_DOM_EXC port: a kick on it makes the daemon
  look for dead domains.

A backend for a real Xen host (``/dev/xen/evtchn``, grant mapping) would
implement the same :class:`~pyxenstored.engine.domains.Hypervisor`
interface beside this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxenstored.engine.connections import Connection
from pyxenstored.engine.domains import DomainState
from pyxenstored.errors import NoEntry
from pyxenstored.server.rings import Quiesce, RingClient
from pyxenstored.wire.ring import PAGE_SIZE, ConnectionState, Ring

if TYPE_CHECKING:
    from pyxenstored.server.daemon import Daemon

__all__ = ["EmulatedHost"]

log = logging.getLogger(__name__)

#: A kick: one native-endian u32 port number (little-endian here).
KICK = struct.Struct("=I")


class EmulatedHost:
    """Host directory backend implementing the engine's ``Hypervisor``."""

    def __init__(self, directory: str, daemon: Daemon) -> None:
        self.directory = directory
        self.daemon = daemon
        self._sock: socket.socket | None = None
        self._next_port = 1
        self.virq_port = 0
        #: Ring clients by daemon-side port, and ports by domid.
        self.by_port: dict[int, RingClient] = {}
        self.port_of: dict[int, int] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _write_small(self, name: str, text: str) -> None:
        tmp = self._path(f".{name}.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, self._path(name))

    def _alloc_port(self) -> int:
        port = self._next_port
        self._next_port += 1
        return port

    # -- life cycle ----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        os.makedirs(self.directory, exist_ok=True)
        path = self._path("evtchn")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock = sock
        self.virq_port = self._alloc_port()
        self._write_small("virq-port", f"{self.virq_port}\n")
        loop.add_reader(sock.fileno(), self._readable)
        log.info(
            "emulated hypervisor in %s (VIRQ_DOM_EXC port %d)",
            self.directory,
            self.virq_port,
        )

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        for client in list(self.by_port.values()):
            client.close()
        self.by_port.clear()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path("evtchn"))

    def _readable(self) -> None:
        """Kicks arrived: serve the rings named, or look for dead domains."""
        assert self._sock is not None
        kicked: dict[int, RingClient] = {}
        virq = False
        while True:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                break
            if len(data) != KICK.size:
                continue
            (port,) = KICK.unpack(data)
            if port == self.virq_port:
                virq = True
            elif (client := self.by_port.get(port)) is not None:
                kicked[port] = client
        for client in kicked.values():
            client.process()
        if virq:
            self.daemon.engine.check_domains()
        self.daemon.flush()

    def rescan(self) -> None:
        """Safety net for lost kicks: look at every ring once."""
        for client in list(self.by_port.values()):
            client.process()
        self.daemon.flush()

    # -- Hypervisor ---------------------------------------------------------

    def domain_state(self, domid: int) -> DomainState:
        if domid == self.daemon.engine.priv_domid:
            return DomainState.RUNNING
        if not os.path.exists(self._path(f"ring-{domid}")):
            return DomainState.GONE
        if os.path.exists(self._path(f"dying-{domid}")):
            return DomainState.DYING
        return DomainState.RUNNING

    def _map(self, domid: int) -> tuple[Ring, mmap.mmap]:
        try:
            fd = os.open(self._path(f"ring-{domid}"), os.O_RDWR)
        except FileNotFoundError:
            raise NoEntry(f"no ring page for domain {domid}") from None
        try:
            if os.fstat(fd).st_size < PAGE_SIZE:
                raise NoEntry(f"ring page of domain {domid} is not {PAGE_SIZE} bytes")
            mapping = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        return Ring(memoryview(mapping)), mapping

    def attach(
        self, conn: Connection, gfn: int, remote_port: int, features: int
    ) -> None:
        domid = conn.domid
        ring, mapping = self._map(domid)
        port = self._alloc_port()
        client = RingClient(
            self.daemon, conn, ring, self._notifier(domid, port), mapping.close
        )
        # The page is never cleared or re-indexed here (MIGRATION.md a.6):
        # requests already waiting in it are served.
        withdrawn = ring.server_features & ~features
        if withdrawn:
            # The page came from another host (migration) that offered more.
            # A server may never withdraw a bit the guest has seen (RING.md
            # 5); nothing restored here depends on those bits (MIGRATION.md
            # c.7, c.8: no depth watches, no DOMID_ANY), so warn and go on.
            log.warning(
                "dom%d: page shows features %#x this host does not offer",
                domid,
                withdrawn,
            )
        ring.server_features = features
        if ring.connection == ConnectionState.RECONNECT:
            ring.connection = ConnectionState.CONNECTED
        self.by_port[port] = client
        self.port_of[domid] = port
        self.daemon.clients[conn.id] = client
        self._write_small(f"port-{domid}", f"{port}\n")
        self._notify(domid, port)
        asyncio.get_running_loop().call_soon(client.process)

    def _client(self, conn: Connection) -> RingClient:
        client = self.daemon.clients.get(conn.id)
        assert isinstance(client, RingClient), f"dom{conn.domid} has no ring"
        return client

    def quiesce(self, conn: Connection, done: Callable[[bool], None]) -> None:
        self._client(conn).begin_quiesce(done, self.daemon.config.quiesce_timeout)

    def is_quiesced(self, conn: Connection) -> bool:
        return self._client(conn).quiesce is not Quiesce.ACTIVE

    def resume(self, conn: Connection, remote_port: int) -> None:
        client = self._client(conn)
        ring, mapping = self._map(conn.domid)
        if ring.connection == ConnectionState.RECONNECT:
            ring.connection = ConnectionState.CONNECTED
        client.resume(ring, mapping.close)
        self._notify(conn.domid, self.port_of[conn.domid])

    def rebind(self, conn: Connection, remote_port: int) -> None:
        # The daemon-side port stays; only the guest's end would change.
        log.info(
            "dom%d: event channel re-bound (remote port %d)", conn.domid, remote_port
        )

    def reset(self, conn: Connection) -> None:
        client = self.daemon.clients.get(conn.id)
        if isinstance(client, RingClient):
            # The page's indices stay as they are (MIGRATION.md a.6).
            client.reset(keep_partial=True)

    def detach(self, conn: Connection) -> None:
        port = self.port_of.pop(conn.domid, None)
        client = self.by_port.pop(port, None) if port is not None else None
        self.daemon.clients.pop(conn.id, None)
        if client is not None:
            client.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(f"port-{conn.domid}"))

    def _notify(self, domid: int, port: int) -> None:
        self._notifier(domid, port)()

    def _notifier(self, domid: int, port: int) -> Callable[[], None]:
        """How to kick domain ``domid``: its port number to ``DIR/notify-N``.

        By path on every kick, as EMULATION.md says: a guest may re-bind its
        socket at any time (a new boot, a migration).  A kick nobody
        receives is dropped: both sides re-check the indices anyway.  The
        path and the datagram are made once: kicks are on every request.
        """
        path = os.fsencode(self._path(f"notify-{domid}"))
        kick = KICK.pack(port)

        def notify() -> None:
            sock = self._sock
            if sock is None:
                return
            try:
                sock.sendto(kick, path)
            except OSError as error:
                if error.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    log.debug("dom%d: kick failed: %s", domid, error)

        return notify
