"""The guest's end of a ring page and event channel, over a host directory.

:class:`HostDir` is the simulated hypervisor's view of a host directory
(create a domain's page, mark it dying, kick the daemon's VIRQ).
:class:`GuestRing` is what a guest kernel's xenbus driver does: write
requests into ``req``, read replies from ``rsp``, kick the daemon through
``DIR/evtchn`` and wait for its kicks on ``DIR/notify-N``.  It is a
blocking byte transport; the client library frames xenstore messages over
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import select
import socket
import struct
import threading
import time

from pyxenstored.errors import BrokenConnection, ConnectionClosed
from pyxenstored.wire.ops import ServerFeature
from pyxenstored.wire.ring import PAGE_SIZE, ConnectionState, Ring

__all__ = ["AsyncGuestRing", "GuestRing", "HostDir"]

KICK = struct.Struct("=I")
#: Re-check the ring at least this often even without a kick (a lost kick
#: is harmless by design, but must not stall the guest).
_POLL = 0.5


class HostDir:
    """The simulated hypervisor of one host directory (EMULATION.md)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def create_domain(self, domid: int, page: bytes | None = None) -> None:
        """Give domain ``domid`` a ring page (zeroed, or the bytes given)."""
        os.makedirs(self.directory, exist_ok=True)
        data = page if page is not None else bytes(PAGE_SIZE)
        if len(data) != PAGE_SIZE:
            raise ValueError("a ring page is 4096 bytes")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(f"dying-{domid}"))
        tmp = self.path(f".ring-{domid}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path(f"ring-{domid}"))

    def read_page(self, domid: int) -> bytes:
        with open(self.path(f"ring-{domid}"), "rb") as f:
            return f.read()

    def domain_exists(self, domid: int) -> bool:
        return os.path.exists(self.path(f"ring-{domid}"))

    def kill_domain(self, domid: int, *, remove: bool = False) -> None:
        """Mark a domain dying (or remove it) and tell the daemon."""
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(f"ring-{domid}"))
        else:
            with open(self.path(f"dying-{domid}"), "w", encoding="ascii"):
                pass
        self.kick(self.read_port("virq-port"))

    def read_port(self, name: str) -> int:
        with open(self.path(name), encoding="ascii") as f:
            return int(f.read().strip())

    def kick(self, port: int) -> None:
        """Send one event-channel kick to the daemon."""
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s,
            contextlib.suppress(OSError),
        ):
            s.sendto(KICK.pack(port), self.path("evtchn"))


class GuestRing:
    """Blocking byte transport over a domain's ring (the guest's side).

    The daemon-side port is read from ``DIR/port-N`` when first needed, so
    a guest can be created before the toolstack introduces it, and
    :meth:`move` re-points it at another host without the client above
    noticing (EMULATION.md, "Moving a guest between hosts").
    """

    def __init__(
        self, directory: str, domid: int, timeout: float | None = 30.0
    ) -> None:
        self.domid = domid
        self.timeout = timeout
        self._host = HostDir(directory)
        #: Held while the guest touches the page; held by the hypervisor
        #: while the guest is paused (:meth:`pause`).
        self._vcpu = threading.Lock()
        #: A pipe the hypervisor rings to wake the guest when it moves it.
        self._doorbell = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._mapping: mmap.mmap | None = None
        self._ring: Ring | None = None
        self._notify: socket.socket | None = None
        #: Unbound and blocking, for kicks (see :meth:`kick`).
        self._kicker: socket.socket | None = None
        self._port: int | None = None
        self._open(directory)

    def _open(self, directory: str) -> None:
        self._host = HostDir(directory)
        fd = os.open(self._host.path(f"ring-{self.domid}"), os.O_RDWR)
        try:
            self._mapping = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._ring = Ring(memoryview(self._mapping))
        path = self._host.path(f"notify-{self.domid}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self._notify = sock
        self._kicker = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._port = None

    @property
    def ring(self) -> Ring:
        if self._ring is None:
            raise ConnectionClosed("ring closed")
        return self._ring

    def fileno(self) -> int:
        """The notification socket, for select/poll and asyncio readers."""
        if self._notify is None:
            raise ConnectionClosed("ring closed")
        return self._notify.fileno()

    def _daemon_port(self) -> int | None:
        if self._port is None:
            try:
                self._port = self._host.read_port(f"port-{self.domid}")
            except (FileNotFoundError, ValueError):
                return None
        return self._port

    def kick(self) -> None:
        """Kick the daemon through the guest's one kick socket.

        One socket for the guest's life, as a real guest has one event
        channel: a socket made and closed per kick would charge its
        tear-down to whichever daemon receives the kick.  It blocks while
        the daemon's queue of kicks is full: a kick is never lost (an
        event channel's pending bit is not), so many guests kicking at
        once wait their turn rather than stall until a rescan.
        """
        port = self._daemon_port()
        kicker = self._kicker
        if port is None or kicker is None:
            return
        with contextlib.suppress(OSError):
            kicker.sendto(KICK.pack(port), self._host.path("evtchn"))

    def drain_kicks(self) -> None:
        if self._notify is None:
            return
        with contextlib.suppress(BlockingIOError):
            while True:
                self._notify.recv(64)

    def wait(self, timeout: float | None) -> None:
        """Sleep until the daemon kicks (or ``timeout``); then re-check.

        The hypervisor may move the guest meanwhile (closing this socket):
        the wake-up is then spurious, which is harmless.
        """
        with self._vcpu:
            notify = self._notify
        if notify is None:
            return
        try:
            select.select([notify.fileno(), self._doorbell[0]], [], [], timeout)
            with self._vcpu:
                self.drain_kicks()
        except (OSError, ValueError):
            pass
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._doorbell[0], 64)

    def pause(self) -> None:
        """The hypervisor pauses the guest: it stops touching the ring.

        Returns once the guest is out of any ring access; :meth:`move` may
        then be called safely.  The guest's code is not told.
        """
        self._vcpu.acquire()

    def unpause(self) -> None:
        self._vcpu.release()

    def _check(self) -> None:
        ring = self.ring
        if ring.error:
            raise BrokenConnection(
                f"the daemon marked the ring broken (error {ring.error})"
            )

    # -- transport ----------------------------------------------------------

    def send_all(self, data: bytes) -> None:
        """Write all of ``data`` into ``req``, waiting for space.

        Raises:
            BrokenConnection: the daemon marked the ring broken, or left no
                space for ``self.timeout`` seconds.
        """
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        view = memoryview(data)
        while view:
            with self._vcpu:
                self._check()
                n = self.ring.write_requests(bytes(view[:1024]))
                if n:
                    self.kick()
            if n:
                view = view[n:]
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise BrokenConnection("the daemon does not consume requests")
            self.wait(_POLL)

    def receive_some(
        self, max_bytes: int = 65536, timeout: float | None = None
    ) -> bytes:
        """Read what is in ``rsp``, waiting for at least one byte.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            BrokenConnection: the daemon marked the ring broken.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._vcpu:
                self._check()
                data = self.ring.read_replies(max_bytes)
                if data:
                    self.kick()
            if data:
                return data
            wait = _POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"nothing received within {timeout} s")
                wait = min(left, _POLL)
            self.wait(wait)

    def request_reconnect(self) -> None:
        """Ask the daemon for a ring reset (RING.md 6) and wait for it.

        Raises:
            BrokenConnection: the daemon does not advertise reconnection
                (a guest may only ask when it does), or did not complete it
                within ``self.timeout`` seconds (it gave up on this ring).
        """
        ring = self.ring
        if not ring.server_features & ServerFeature.RECONNECTION:
            raise BrokenConnection("the daemon does not offer reconnection")
        ring.connection = ConnectionState.RECONNECT
        self.kick()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while ring.connection == ConnectionState.RECONNECT:
            if deadline is not None and time.monotonic() > deadline:
                raise BrokenConnection("the daemon did not complete the reconnection")
            self.wait(_POLL)

    def move(self, directory: str) -> None:
        """Re-point this guest at another host directory (migration).

        The page itself is copied by the hypervisor, not here; the guest's
        client keeps its state and is told nothing.
        """
        self._close_local()
        self._open(directory)

    def _close_local(self) -> None:
        if self._ring is not None:
            self._ring.release()
            self._ring = None
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._kicker is not None:
            self._kicker.close()
            self._kicker = None
        # Wake a guest thread sleeping on the old socket: closing it from
        # another thread does not reliably wake a select() on it.
        with contextlib.suppress(BlockingIOError):
            os.write(self._doorbell[1], b"\0")

    def close(self) -> None:
        self._close_local()
        for fd in self._doorbell:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._doorbell = (-1, -1)


class AsyncGuestRing:
    """The asyncio twin of :class:`GuestRing` (same page, same kicks)."""

    def __init__(self, directory: str, domid: int) -> None:
        self.sync = GuestRing(directory, domid, timeout=None)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self.sync.fileno()

        def woken() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, woken)
        try:
            await asyncio.wait_for(ready, _POLL)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
        self.sync.drain_kicks()

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self.sync._check()
            n = self.sync.ring.write_requests(bytes(view[:1024]))
            if n:
                view = view[n:]
                self.sync.kick()
            else:
                await self._wait()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        while True:
            self.sync._check()
            data = self.sync.ring.read_replies(max_bytes)
            if data:
                self.sync.kick()
                return data
            await self._wait()

    def move(self, directory: str) -> None:
        self.sync.move(directory)

    async def aclose(self) -> None:
        self.sync.close()
