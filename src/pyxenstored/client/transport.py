"""Byte transports under the clients: the contract and its socket versions.

A transport moves opaque bytes; framing belongs to
:class:`~pyxenstored.client.protocol.ClientProtocol`.  The contract is
deliberately tiny so other carriers can sit beside the Unix socket (the
shared-memory ring of a guest domain is the next one):

``send_all(data)``
    Deliver every byte of ``data``, in order, or raise.
``receive_some(max_bytes, timeout)``
    Block until at least one byte is available and return up to
    ``max_bytes`` of them.  Returns ``b""`` if and only if the peer closed
    the stream (EOF); after that it keeps returning ``b""``.
``close()``
    Release the resources.  Idempotent.

Errors (trio's closed-vs-broken split): :class:`~pyxenstored.errors.
ConnectionClosed` when this side already closed the transport,
:class:`~pyxenstored.errors.BrokenConnection` when the peer or the medium
failed, :class:`TimeoutError` when ``timeout`` seconds passed with nothing
to read (``None`` waits for ever).  The asyncio twin has the same methods
as coroutines, without ``timeout`` (use :func:`asyncio.timeout`), and
``aclose()`` instead of ``close()``.

:func:`open_transport` finds the daemon the way libxenstore's ``xs_open``
does: ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket``, else
``/var/run/xenstored/socket``; a path that is not a socket is opened as the
xenbus device, and the last resort is the xenbus device itself.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import stat
from typing import Protocol

from pyxenstored.errors import BrokenConnection, ConnectionClosed
from pyxenstored.rundir import socket_path

__all__ = [
    "AsyncTransport",
    "AsyncUnixTransport",
    "DeviceTransport",
    "Transport",
    "UnixTransport",
    "open_transport",
    "socket_path",
]

#: Bytes asked for per read: a whole largest message and then some.
CHUNK = 65536
#: libxenstore's fallbacks when no socket can be used (Linux names).
XENBUS_DEVICES = ("/dev/xen/xenbus", "/proc/xen/xenbus")


class Transport(Protocol):
    """A blocking byte stream to xenstored (see the module docstring)."""

    def send_all(self, data: bytes) -> None: ...

    def receive_some(
        self, max_bytes: int = CHUNK, timeout: float | None = None
    ) -> bytes: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The asyncio twin of :class:`Transport`."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int = CHUNK) -> bytes: ...

    async def aclose(self) -> None: ...


def _wait_readable(fd: int, timeout: float | None) -> None:
    if timeout is None:
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(max(0, int(timeout * 1000 + 0.999))):
        raise TimeoutError(f"nothing received within {timeout} s")


class UnixTransport:
    """A blocking Unix stream socket (dom0 tools talking to xenstored)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock

    @classmethod
    def connect(cls, path: str) -> UnixTransport:
        """Connect to the daemon's socket.

        Raises:
            OSError: nothing accepts connections at ``path``.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def _open(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionClosed("transport closed")
        return self._sock

    def send_all(self, data: bytes) -> None:
        sock = self._open()
        try:
            sock.sendall(data)
        except OSError as exc:
            raise BrokenConnection(f"sending to xenstored: {exc}") from exc

    def receive_some(
        self, max_bytes: int = CHUNK, timeout: float | None = None
    ) -> bytes:
        sock = self._open()
        _wait_readable(sock.fileno(), timeout)
        try:
            return sock.recv(max_bytes)
        except OSError as exc:
            raise BrokenConnection(f"receiving from xenstored: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class DeviceTransport:
    """The xenbus character device (``/dev/xen/xenbus``) of a Xen guest."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: str) -> DeviceTransport:
        """Open the device read-write.

        Raises:
            OSError: the device cannot be opened.
        """
        return cls(os.open(path, os.O_RDWR | os.O_CLOEXEC))

    def _open(self) -> int:
        if self._fd is None:
            raise ConnectionClosed("transport closed")
        return self._fd

    def send_all(self, data: bytes) -> None:
        fd = self._open()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise BrokenConnection(f"writing to the xenbus device: {exc}") from exc

    def receive_some(
        self, max_bytes: int = CHUNK, timeout: float | None = None
    ) -> bytes:
        fd = self._open()
        _wait_readable(fd, timeout)
        try:
            return os.read(fd, max_bytes)
        except OSError as exc:
            raise BrokenConnection(f"reading the xenbus device: {exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_path(path: str) -> Transport:
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        is_socket = False
    if is_socket:
        return UnixTransport.connect(path)
    return DeviceTransport.open(path)


def open_transport(path: str | None = None) -> Transport:
    """Connect to xenstored.

    Args:
        path: a socket (or xenbus device) path; ``None`` looks for one as
            libxenstore does (see the module docstring).

    Raises:
        OSError: nothing could be opened (the first failure is reported).
    """
    if path is not None:
        return _open_path(path)
    candidates = [socket_path()]
    candidates.append(os.environ.get("XENSTORED_PATH") or XENBUS_DEVICES[0])
    candidates.append(XENBUS_DEVICES[1])
    first: OSError | None = None
    for candidate in candidates:
        try:
            return _open_path(candidate)
        except OSError as exc:
            first = first or exc
    assert first is not None
    raise first


class AsyncUnixTransport:
    """An asyncio Unix stream socket."""

    #: C xenstored listens with a backlog of 1, and any daemon's backlog
    #: fills when many clients connect at once: a non-blocking connect then
    #: fails with EAGAIN, so retry for a while.
    CONNECT_ATTEMPTS = 50

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    @classmethod
    async def connect(cls, path: str | None = None) -> AsyncUnixTransport:
        """Connect to the daemon's socket (``None``: the libxenstore lookup).

        Raises:
            OSError: nothing accepts connections at the path.
        """
        path = socket_path() if path is None else path
        # The connect is ours, not the loop's: asyncio's own loop takes
        # EAGAIN from a Unix socket's connect for "in progress", as on TCP,
        # waits until the socket is writable and hands over a socket that
        # never connected (the first write then fails: connection lost).
        # On a Unix socket EAGAIN means the listener's backlog is full and
        # nothing was started.
        for attempt in range(cls.CONNECT_ATTEMPTS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                sock.close()
                if attempt == cls.CONNECT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            except OSError:
                sock.close()
                raise
            try:
                reader, writer = await asyncio.open_unix_connection(sock=sock)
            except BaseException:
                sock.close()
                raise
            return cls(reader, writer)
        raise AssertionError("unreachable")

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionClosed("transport closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise BrokenConnection(f"sending to xenstored: {exc}") from exc

    async def receive_some(self, max_bytes: int = CHUNK) -> bytes:
        if self._closed:
            raise ConnectionClosed("transport closed")
        try:
            return await self._reader.read(max_bytes)
        except OSError as exc:
            raise BrokenConnection(f"receiving from xenstored: {exc}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
