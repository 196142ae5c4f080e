"""The ceiling: a do-nothing xenstore server in Python, on the same event loop.

``python -m bench.nullserver --socket PATH [--event-loop auto|asyncio|uvloop]``

It answers the xenstore wire protocol on a Unix socket well enough for the
benchmark clients (the peers' ``xsbench`` on libxenstore, and
``bench/pyclient.py``) to run unchanged, and does as little as it can per
request.  The I/O has pyxenstored's shape (``server/daemon.py``): a
protocol per client that is both an :class:`asyncio.Protocol` (uvloop then
hands each read over as ``bytes``, its cheapest path) and an
:class:`asyncio.BufferedProtocol` (asyncio's own loop then reads into one
shared buffer), and one ``transport.write`` per read for the replies.  So it
measures what the interpreter, the event loop and the kernel cost for a
request before any xenstore semantics: no Python xenstored on this loop
can answer faster, and pyxenstored's figures over this server's say how
much of that budget the daemon's own work takes.

What it does:

* a store of ``path -> value`` (bytes, never decoded) and of each node's
  children, in insertion order, as C xenstored lists them; WRITE and
  MKDIR create missing parents with empty values; RM removes the subtree;
* READ (ENOENT if missing), WRITE (the value is what follows the first
  NUL), MKDIR, RM, DIRECTORY (the listing is cached until the children
  change), GET_PERMS (always ``n0``), SET_PERMS (OK, ignored),
  TRANSACTION_START (a fresh id), TRANSACTION_END (OK), WATCH (OK, then the
  initial event), UNWATCH, RESET_WATCHES and GET_DOMAIN_PATH;
* watches are a dict ``path -> [(client, token)]``; a WRITE, MKDIR or RM
  fires the watches on that exact path and on its ancestors (not those
  under a removed subtree).  With no watch registered that check is one
  test of an empty dict;
* anything else is answered ``ENOSYS``.

What it skips, and so never pays for: permissions (every client is dom0
and may do anything), quotas, payload and path validation (no limits, no
relative paths, a malformed request gets whatever falls out of the
parsing), transactions' isolation and conflicts (requests in a
transaction act on the store at once; TRANSACTION_END never fails),
generation counts, domains and guest rings (there is no ``--host-dir``),
DIRECTORY_PART, CONTROL, logging, tracing and any journal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import cast

from pyxenstored.errors import InvalidArgument, NoEntry, NotSupported
from pyxenstored.wire.ops import Op
from pyxenstored.wire.packet import HEADER
from pyxenstored.wire.payload import OK

__all__ = ["NullServer", "main"]

# Plain ints: comparing with an IntEnum member costs more in the hot loop.
_DIRECTORY = int(Op.DIRECTORY)
_READ = int(Op.READ)
_GET_PERMS = int(Op.GET_PERMS)
_WATCH = int(Op.WATCH)
_UNWATCH = int(Op.UNWATCH)
_TRANSACTION_START = int(Op.TRANSACTION_START)
_TRANSACTION_END = int(Op.TRANSACTION_END)
_GET_DOMAIN_PATH = int(Op.GET_DOMAIN_PATH)
_WRITE = int(Op.WRITE)
_MKDIR = int(Op.MKDIR)
_RM = int(Op.RM)
_SET_PERMS = int(Op.SET_PERMS)
_WATCH_EVENT = int(Op.WATCH_EVENT)
_ERROR = int(Op.ERROR)
_RESET_WATCHES = int(Op.RESET_WATCHES)

_ENOENT = NoEntry.code.encode() + b"\0"
_ENOSYS = NotSupported.code.encode() + b"\0"
_EINVAL = InvalidArgument.code.encode() + b"\0"
#: Bytes read from a client at a time (as pyxenstored).
_READ_SIZE = 65536
#: One read buffer for every client, as pyxenstored has: the loop reads one
#: socket at a time and each read is copied out before the next, and a new
#: connection then has no buffer to allocate and zero.
_READ_VIEW = memoryview(bytearray(_READ_SIZE))
#: Stop reading a client's requests while this much of its output waits.
_PAUSE_AT = 256 * 1024


class NullServer:
    """The store and the watches, shared by every client."""

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {b"/": b""}
        #: path -> its children's names (a dict as an ordered set).
        self.children: dict[bytes, dict[bytes, None]] = {}
        #: path -> the DIRECTORY reply payload, until the children change.
        self.listings: dict[bytes, bytes] = {}
        self.watches: dict[bytes, list[tuple[_Client, bytes]]] = {}
        self.next_tx = 1

    def create(self, path: bytes) -> None:
        """Make the missing node ``path`` and its missing parents."""
        self.values[path] = b""
        slash = path.rfind(b"/")
        if slash < 0:  # not a path (such as "@introduceDomain"): no parent
            return
        parent = path[:slash] or b"/"
        if parent not in self.values:
            self.create(parent)
        self.children.setdefault(parent, {})[path[slash + 1 :]] = None
        self.listings.pop(parent, None)

    def remove(self, path: bytes) -> None:
        """Remove the existing node ``path`` and everything under it."""
        for name in self.children.pop(path, {}):
            self.remove(path + b"/" + name if path != b"/" else b"/" + name)
        self.listings.pop(path, None)
        del self.values[path]
        slash = path.rfind(b"/")
        if slash < 0:
            return
        parent = path[:slash] or b"/"
        siblings = self.children.get(parent)
        if siblings is not None:
            siblings.pop(path[slash + 1 :], None)
            self.listings.pop(parent, None)

    def listing(self, path: bytes) -> bytes:
        cached = self.listings.get(path)
        if cached is None:
            names = self.children.get(path)
            cached = b"\0".join(names) + b"\0" if names else b""
            self.listings[path] = cached
        return cached

    def fire(self, path: bytes, writer: _Client) -> None:
        """Send the events of a change of ``path`` to its and its ancestors'
        watchers."""
        watches = self.watches
        node = path
        while True:
            for client, token in watches.get(node, ()):
                client.event(path, token, writer)
            if node == b"/":
                return
            slash = node.rfind(b"/")
            if slash < 0:
                return
            node = node[:slash] or b"/"


class _Client(asyncio.Protocol, asyncio.BufferedProtocol):
    """One client on the socket (a plain protocol to uvloop, a buffered one
    to asyncio's own loop, as pyxenstored's)."""

    def __init__(self, server: NullServer) -> None:
        self.server = server
        self._view = _READ_VIEW
        #: The start of a request cut by the end of a read.
        self._partial = b""
        #: Replies (and own events) of the read being handled.
        self._out: list[bytes] = []
        #: (path, token) of every watch this client holds.
        self._watches: set[tuple[bytes, bytes]] = set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_PAUSE_AT)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        server = self.server
        values = server.values
        watches = server.watches
        pack = HEADER.pack
        unpack_from = HEADER.unpack_from
        out = self._out
        end = len(data)
        pos = 0
        while end - pos >= 16:
            op, req_id, tx_id, length = unpack_from(data, pos)
            start = pos + 16
            if start + length > end:
                break
            pos = start + length
            if op == _WRITE:
                payload = data[start:pos]
                nul = payload.find(0)
                path = payload[:nul]
                if path not in values:
                    server.create(path)
                values[path] = payload[nul + 1 :]
                out += (pack(_WRITE, req_id, tx_id, 3), OK)
                if watches:
                    server.fire(path, self)
            elif op == _READ:
                value = values.get(data[start : pos - 1])
                if value is None:
                    out += (pack(_ERROR, req_id, tx_id, 7), _ENOENT)
                else:
                    out += (pack(_READ, req_id, tx_id, len(value)), value)
            else:
                reply_op, reply = self.other(op, data[start:pos])
                out += (pack(reply_op, req_id, tx_id, len(reply)), reply)
                if op == _WATCH and reply_op == _WATCH:
                    path, token = data[start:pos].split(b"\0", 2)[:2]
                    self.event(path, token, self)
        if pos < end:
            self._partial = data[pos:]
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))
            out.clear()

    def other(self, op: int, payload: bytes) -> tuple[int, bytes]:
        """The reply (type, payload) to a request other than WRITE and READ."""
        server = self.server
        if op == _TRANSACTION_START:
            tx = server.next_tx
            server.next_tx = tx % 0xFFFFFFFF + 1
            return op, b"%d\0" % tx
        if op in (_TRANSACTION_END, _SET_PERMS):
            return op, OK
        path = payload.split(b"\0", 1)[0]
        if op == _DIRECTORY:
            if path not in server.values:
                return _ERROR, _ENOENT
            return op, server.listing(path)
        if op == _GET_PERMS:
            return (op, b"n0\0") if path in server.values else (_ERROR, _ENOENT)
        if op == _MKDIR:
            if path not in server.values:
                server.create(path)
                if server.watches:
                    server.fire(path, self)
            return op, OK
        if op == _RM:
            if path not in server.values:
                return _ERROR, _ENOENT
            if path == b"/":
                return _ERROR, _EINVAL
            server.remove(path)
            if server.watches:
                server.fire(path, self)
            return op, OK
        if op == _WATCH:
            parts = payload.split(b"\0")
            if len(parts) < 2:
                return _ERROR, _EINVAL
            token = parts[1]
            server.watches.setdefault(path, []).append((self, token))
            self._watches.add((path, token))
            return op, OK  # the initial event follows (data_received)
        if op == _UNWATCH:
            parts = payload.split(b"\0")
            if len(parts) < 2 or (path, parts[1]) not in self._watches:
                return _ERROR, _ENOENT
            self._unwatch(path, parts[1])
            return op, OK
        if op == _RESET_WATCHES:
            for path, token in list(self._watches):
                self._unwatch(path, token)
            return op, OK
        if op == _GET_DOMAIN_PATH:
            return op, b"/local/domain/" + path + b"\0"
        return _ERROR, _ENOSYS

    def _unwatch(self, path: bytes, token: bytes) -> None:
        self._watches.discard((path, token))
        watchers = self.server.watches[path]
        watchers.remove((self, token))
        if not watchers:
            del self.server.watches[path]

    def event(self, path: bytes, token: bytes, writer: _Client) -> None:
        """Send a WATCH_EVENT: after the current replies if this client made
        the change, at once otherwise (before the writer's reply, as
        pyxenstored does)."""
        payload = path + b"\0" + token + b"\0"
        message = HEADER.pack(_WATCH_EVENT, 0, 0, len(payload)) + payload
        if writer is self:
            self._out.append(message)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(message)

    def pause_writing(self) -> None:
        # The client is not reading: stop taking its requests until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        for path, token in list(self._watches):
            self._unwatch(path, token)
        self.transport = None


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop ``--event-loop NAME`` asks for, resolved as pyxenstored does
    (``auto``: uvloop when installed; None: asyncio's own)."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise SystemExit("nullserver: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


async def serve(path: str) -> None:
    """Serve on the Unix socket ``path`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = NullServer()
    listener = await loop.create_unix_server(lambda: _Client(server), path)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    try:
        await stop
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.nullserver", description=__doc__)
    p.add_argument("--socket", required=True, help="the Unix socket to serve")
    p.add_argument(
        "--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto"
    )
    args = p.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        runner.run(serve(args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
