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

It is one :class:`~pyxenstored.server.guests.Platform`; the Xen libraries
are the other (:mod:`pyxenstored.server.xen`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable

from pyxenstored.engine.domains import DomainState
from pyxenstored.errors import NoEntry
from pyxenstored.server.guests import RingPage
from pyxenstored.wire.ring import PAGE_SIZE

__all__ = ["EmulatedPlatform"]

log = logging.getLogger(__name__)

#: A kick: one native-endian u32 port number (little-endian here).
KICK = struct.Struct("=I")


class EmulatedPlatform:
    """The host directory of EMULATION.md as a hypervisor."""

    def __init__(
        self,
        directory: str,
        *,
        evtchn_fd: int | None = None,
        ports: dict[int, int] | None = None,
    ) -> None:
        """``evtchn_fd`` and ``ports`` (local port -> domid): what a live
        update hands over, the ``DIR/evtchn`` socket and the ports bound
        before the exec (the guests keep kicking those numbers)."""
        self.directory = directory
        self.description = f"emulated hypervisor in {directory}"
        self._sock: socket.socket | None = None
        self._inherited_fd = evtchn_fd
        self._next_port = 1
        self.virq_port = 0
        #: The domain of each bound port (for the ``port-N`` files).
        self._domain_of: dict[int, int] = dict(ports or {})
        #: The port each domain was last given: bound again, it keeps it.
        self._port_for: dict[int, int] = {d: p for p, d in self._domain_of.items()}
        if self._domain_of:
            self._next_port = max(self._domain_of) + 1

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

    def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if self._inherited_fd is not None:
            # Bound at DIR/evtchn by the program we replace (this daemon or
            # C under the peers' shim, which use the same conventions).
            sock = socket.socket(fileno=self._inherited_fd)
            sock.set_inheritable(False)
            self._inherited_fd = None
        else:
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

    def prepare_exec(self) -> int:
        """Live update: the event-channel socket, kept open across exec."""
        assert self._sock is not None, "not open"
        self._sock.set_inheritable(True)
        return self._sock.fileno()

    def exec_failed(self) -> None:
        if self._sock is not None:
            self._sock.set_inheritable(False)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path("evtchn"))

    def fileno(self) -> int:
        assert self._sock is not None, "not open"
        return self._sock.fileno()

    def pending(self) -> int | None:
        sock = self._sock
        assert sock is not None, "not open"
        try:
            data = sock.recv(64)
        except BlockingIOError:
            return None
        if len(data) != KICK.size:
            return None
        port: int = KICK.unpack(data)[0]
        return port

    # -- domains and rings ---------------------------------------------------

    def domain_state(self, domid: int) -> DomainState:
        if domid == 0:
            return DomainState.RUNNING
        if not os.path.exists(self._path(f"ring-{domid}")):
            return DomainState.GONE
        if os.path.exists(self._path(f"dying-{domid}")):
            return DomainState.DYING
        return DomainState.RUNNING

    def map_ring(self, domid: int) -> RingPage:
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
        return memoryview(mapping), mapping.close

    def bind(self, domid: int, remote_port: int) -> int:
        """A local port for the domain; the same one when it is bound again.

        A simulated guest kicks the number it read from ``DIR/port-N``
        once; on Xen the guest's end is its own port and the daemon's local
        number does not matter to it, so keeping the number across a
        re-INTRODUCE is the faithful emulation.
        """
        port = self._port_for.get(domid)
        if port is None or port in self._domain_of:
            port = self._alloc_port()
            self._port_for[domid] = port
        self._domain_of[port] = domid
        self._write_small(f"port-{domid}", f"{port}\n")
        return port

    def unbind(self, port: int) -> None:
        domid = self._domain_of.pop(port, None)
        if domid is not None and domid not in self._domain_of.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(f"port-{domid}"))

    def notifier(self, domid: int, port: int) -> Callable[[], None]:
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

    def master_port(self) -> int | None:
        """None: under the emulation dom0 talks over the socket only."""
        return None
