"""The daemon's guests: the rings of introduced domains, over any hypervisor.

The engine reaches rings and event channels only through its
:class:`~pyxenstored.engine.domains.Hypervisor` protocol.  :class:`Guests`
implements it once, for every backend: one :class:`RingClient` per
introduced domain, one event-channel file descriptor in the event loop,
``VIRQ_DOM_EXC`` driving the engine's search for dead domains, QUIESCE and
resumption.  What differs between backends is small and sits behind the
:class:`Platform` protocol:

* :class:`~pyxenstored.server.emulated.EmulatedPlatform`: the host
  directory of EMULATION.md (files and datagram sockets);
* :class:`~pyxenstored.server.xen.XenPlatform`: the Xen libraries of a
  real dom0 (REALXEN.md), or the peers' shim that answers their calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pyxenstored.engine.connections import Connection
from pyxenstored.engine.domains import DomainState
from pyxenstored.errors import NoEntry
from pyxenstored.server.rings import Quiesce, RingClient
from pyxenstored.wire.ring import ConnectionState, Ring

if TYPE_CHECKING:
    from pyxenstored.server.daemon import Daemon

__all__ = ["Guests", "Platform", "RingPage"]

log = logging.getLogger(__name__)

#: A mapped ring page: the 4096 bytes, and how to unmap them.
RingPage = tuple[memoryview, Callable[[], None]]


class Platform(Protocol):
    """What one kind of hypervisor gives the guest layer."""

    #: For logs: "emulated hypervisor in DIR", "Xen".
    description: str

    def open(self) -> None:
        """Open the hypervisor interfaces and bind ``VIRQ_DOM_EXC``.

        Raises:
            OSError: they cannot be opened; the message says which and why.
        """

    def close(self) -> None:
        """Unbind everything and close the interfaces."""

    def fileno(self) -> int:
        """The one file descriptor that becomes readable on a kick."""

    #: The local port of ``VIRQ_DOM_EXC`` (some domain changed state); 0
    #: while unbound.  An attribute, not a property: every kick compares
    #: against it.
    virq_port: int

    def pending(self) -> int | None:
        """A kicked local port, or None if there was none.  One per wake-up,
        as C reads them: the descriptor stays readable while more are
        pending, so the loop calls again, and the usual wake-up (one kick)
        costs no second read that finds nothing."""

    def domain_state(self, domid: int) -> DomainState: ...

    def map_ring(self, domid: int) -> RingPage:
        """Map a domain's xenstore ring page.

        Raises:
            NoEntry: there is no such page (the domain does not exist).
            OSError: the hypervisor refused the mapping.
        """

    def bind(self, domid: int, remote_port: int) -> int:
        """Bind an interdomain event channel; the local port.

        Raises:
            OSError: the hypervisor refused the binding.
        """

    def unbind(self, port: int) -> None: ...

    def notifier(self, domid: int, port: int) -> Callable[[], None]:
        """A function kicking the domain through ``port`` (called per kick)."""

    def master_port(self) -> int | None:
        """The remote port of dom0's own ring, if this platform has one."""

    def prepare_exec(self) -> int:
        """Live update: make the event-channel fd survive exec; the fd.

        Ports stay bound with it; what the new program must bind again
        (the VIRQ) is released.
        """

    def exec_failed(self) -> None:
        """Undo :meth:`prepare_exec`: the exec did not happen."""


def _nothing() -> None:
    pass


class Guests:
    """The rings of the introduced domains: the engine's ``Hypervisor``."""

    def __init__(self, daemon: Daemon, platform: Platform) -> None:
        self.daemon = daemon
        self.platform = platform
        #: Ring clients by local port, and local ports by domid.
        self.by_port: dict[int, RingClient] = {}
        self.port_of: dict[int, int] = {}
        self._remote: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle ----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the platform and watch its event channel in ``loop``."""
        self.platform.open()
        self._loop = loop
        loop.add_reader(self.platform.fileno(), self._readable)
        log.info(
            "%s (VIRQ_DOM_EXC port %d)",
            self.platform.description,
            self.platform.virq_port,
        )

    def close(self) -> None:
        for client in list(self.by_port.values()):
            client.close()
        self.by_port.clear()
        self.port_of.clear()
        if self._loop is not None:
            self._loop.remove_reader(self.platform.fileno())
            self._loop = None
        self.platform.close()

    def _readable(self) -> None:
        """A kick arrived: serve the ring named, or look for dead domains."""
        platform = self.platform
        port = platform.pending()
        if port is None:
            return
        if port == platform.virq_port:
            self.daemon.engine.check_domains()
        elif (client := self.by_port.get(port)) is not None:
            client.process()
        else:
            # A port we do not know (C scans every ring on any event): after
            # a live update under the peers' shim, whose port table does
            # not survive exec as the kernel's does, guests kick ports it
            # no longer names.
            for client in list(self.by_port.values()):
                client.process()
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
        return self.platform.domain_state(domid)

    def attach(
        self, conn: Connection, gfn: int, remote_port: int, features: int
    ) -> None:
        """Map the ring, bind the event channel, serve the ring.

        Either all of it happens or none: a binding refused after the page
        was mapped unmaps it again, so no half-introduced domain is left.
        """
        domid = conn.domid
        platform = self.platform
        view, unmap = platform.map_ring(domid)
        try:
            port = platform.bind(domid, remote_port)
        except BaseException:
            unmap()
            raise
        ring = Ring(view)
        client = RingClient(
            self.daemon, conn, ring, platform.notifier(domid, port), unmap
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
        self._remote[domid] = remote_port
        self.daemon.clients[conn.id] = client
        client.kick()
        asyncio.get_running_loop().call_soon(client.process)

    def restore_ring(self, conn: Connection, port: int) -> RingClient:
        """Serve a ring connection carried over by a live update.

        The event channel is still bound (``port`` is the local end), so
        only the page is mapped again.  A page that cannot be mapped (the
        guest revoked its grant, or died meanwhile) leaves the connection
        ignored, as C does, until the domain is found dead.
        """
        domid = conn.domid
        try:
            view, unmap = self.platform.map_ring(domid)
        except (NoEntry, OSError) as error:
            log.warning("dom%d: ring not restored: %s", domid, error)
            ring: Ring | None = None
            unmap = _nothing
        else:
            ring = Ring(view)
        client = RingClient(
            self.daemon, conn, ring, self.platform.notifier(domid, port), unmap
        )
        client.ignored = ring is None
        self.by_port[port] = client
        self.port_of[domid] = port
        self._remote[domid] = -1
        self.daemon.clients[conn.id] = client
        return client

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
        view, unmap = self.platform.map_ring(conn.domid)
        ring = Ring(view)
        if ring.connection == ConnectionState.RECONNECT:
            ring.connection = ConnectionState.CONNECTED
        if remote_port != self._remote.get(conn.domid):
            self.rebind(conn, remote_port)
        client.resume(ring, unmap)
        client.kick()

    def rebind(self, conn: Connection, remote_port: int) -> None:
        """Re-INTRODUCE: unbind the event channel and bind it again (as C)."""
        domid = conn.domid
        old = self.port_of.get(domid)
        client = self.by_port.pop(old, None) if old is not None else None
        if old is not None:
            self.platform.unbind(old)
        port = self.platform.bind(domid, remote_port)
        self.port_of[domid] = port
        self._remote[domid] = remote_port
        if client is not None:
            client.set_notify(self.platform.notifier(domid, port))
            self.by_port[port] = client
        log.info("dom%d: event channel re-bound (remote port %d)", domid, remote_port)

    def reset(self, conn: Connection) -> None:
        client = self.daemon.clients.get(conn.id)
        if isinstance(client, RingClient):
            # The page's indices stay as they are (MIGRATION.md a.6).
            client.reset(keep_partial=True)

    def detach(self, conn: Connection) -> None:
        port = self.port_of.pop(conn.domid, None)
        self._remote.pop(conn.domid, None)
        client = self.by_port.pop(port, None) if port is not None else None
        self.daemon.clients.pop(conn.id, None)
        if client is not None:
            client.close()
        if port is not None:
            self.platform.unbind(port)
