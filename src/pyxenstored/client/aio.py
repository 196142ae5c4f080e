"""The asyncio client: :class:`AsyncClient`.

The same methods as :class:`~pyxenstored.client.sync.Client`, as
coroutines, over the same flows and sans-IO protocol.  One reader task
feeds the protocol; requests are pipelined: any number of coroutines may
await replies at once, each matched by ``req_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

from pyxenstored.client import commands
from pyxenstored.client.commands import Flow, FlowDriver, Request
from pyxenstored.client.protocol import NEED_DATA, ClientProtocol, WatchEvent
from pyxenstored.client.transport import AsyncTransport, AsyncUnixTransport
from pyxenstored.errors import (
    BrokenConnection,
    ConnectionClosed,
    LocalProtocolError,
    TransactionConflict,
    XenstoreError,
    XsError,
)
from pyxenstored.perms import Perm

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """An asyncio xenstore connection.

    Args:
        path: the daemon's socket; ``None`` finds it as libxenstore does.
        transport: an already open transport to use instead of ``path``.

    The connection is opened by :meth:`connect`, ``async with``, or the
    first request.  Errors are those of the blocking client: the server's
    :class:`~pyxenstored.errors.XsError` subclass,
    :class:`~pyxenstored.errors.BrokenConnection`,
    :class:`~pyxenstored.errors.ConnectionClosed` after :meth:`aclose`.
    """

    def __init__(
        self, path: str | None = None, *, transport: AsyncTransport | None = None
    ) -> None:
        self._path = path
        self._transport = transport
        self._protocol = ClientProtocol()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._events_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    # -- plumbing --

    async def connect(self) -> None:
        """Open the connection and start reading (idempotent).

        Raises:
            OSError: the daemon cannot be reached.
        """
        if self._closed:
            raise ConnectionClosed("client closed")
        if self._reader is not None:
            return
        async with self._connect_lock:  # concurrent first requests
            if self._reader is None:  # still (mypy cannot know: we awaited)
                if self._transport is None:
                    transport = await AsyncUnixTransport.connect(self._path)
                    if self._was_closed():  # aclose() ran while we connected
                        await transport.aclose()
                        raise ConnectionClosed("client closed")
                    self._transport = transport
                self._reader = asyncio.create_task(self._read_loop(self._transport))

    def _was_closed(self) -> bool:
        # A method, not the attribute: an await may have changed it, which
        # type narrowing of ``self._closed`` would hide.
        return self._closed

    async def _read_loop(self, transport: AsyncTransport) -> None:
        reason = "xenstored closed the connection"
        try:
            while data := await transport.receive_some():
                for req_id in self._protocol.receive_data(data):
                    waiter = self._waiters.get(req_id)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                if self._protocol.queued_events:
                    self._events_changed.set()
        except ConnectionClosed:
            reason = "client closed"
        except (XenstoreError, OSError) as exc:  # broken transport or stream
            reason = str(exc) or type(exc).__name__
        finally:
            self._protocol.connection_lost(reason)
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_result(None)
            self._events_changed.set()

    async def _exchange(self, request: Request, tx: int) -> bytes | XsError:
        """Send one request; its reply, or the error the daemon answered."""
        await self.connect()
        assert self._transport is not None
        req_id, data = self._protocol.send(request.op, request.payload, tx)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[req_id] = waiter
        try:
            await self._transport.send_all(data)
            await waiter
        except BaseException:
            self._protocol.forget(req_id)
            raise
        finally:
            del self._waiters[req_id]
        if self._closed:
            self._protocol.forget(req_id)
            raise ConnectionClosed("client closed")
        reply = self._protocol.outcome(req_id)
        if reply is NEED_DATA:  # the reader only wakes us when it is in
            raise LocalProtocolError(f"woken without a reply to {req_id}")
        return reply

    async def pipeline(
        self, requests: Sequence[Request], tx: int = 0
    ) -> list[bytes | XsError]:
        """Send many single-reply requests in one write; collect every reply.

        The daemon answers one connection's requests in order, so only the
        last request needs a waiter: when its reply is in, all are.  This
        is how bulk work (a domain's whole subtree, for migration) avoids
        one round trip, and one asyncio task, per request.

        Returns:
            Each reply payload, or the :class:`~pyxenstored.errors.XsError`
            the daemon answered, in the order of ``requests``.
        """
        if not requests:
            return []
        await self.connect()
        assert self._transport is not None
        ids, data = self._protocol.send_many(requests, tx)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ids[-1]] = waiter
        try:
            await self._transport.send_all(data)
            await waiter
        except BaseException:
            for req_id in ids:
                self._protocol.forget(req_id)
            raise
        finally:
            del self._waiters[ids[-1]]
        results: list[bytes | XsError] = []
        for req_id in ids:
            result = self._protocol.outcome(req_id)
            if result is NEED_DATA:
                raise LocalProtocolError(f"no reply to {req_id} in order")
            results.append(result)
        return results

    async def _run(self, flow: Flow[T], tx: int = 0) -> T:
        """Drive a command flow: send what it yields, feed it the replies."""
        driver = FlowDriver(flow)
        while (request := driver.request) is not None:
            driver.feed(await self._exchange(request, tx))
        return driver.result

    # -- nodes --

    async def read(self, path: str, tx: int = 0) -> bytes:
        """The value of a node."""
        return await self._run(commands.read(path), tx)

    async def exists(self, path: str, tx: int = 0) -> bool:
        """Whether a node exists (a READ that does not raise ENOENT)."""
        return await self._run(commands.exists(path), tx)

    async def write(self, path: str, value: bytes, tx: int = 0) -> None:
        """Create or overwrite a node (and create missing parents)."""
        await self._run(commands.write(path, value), tx)

    async def mkdir(self, path: str, tx: int = 0) -> None:
        """Create a node with an empty value if it does not exist."""
        await self._run(commands.mkdir(path), tx)

    async def rm(self, path: str, tx: int = 0) -> None:
        """Remove a node and everything below it."""
        await self._run(commands.rm(path), tx)

    async def directory(self, path: str, tx: int = 0) -> list[str]:
        """The names of a node's children (any length: DIRECTORY_PART)."""
        return await self._run(commands.directory(path), tx)

    async def get_perms(self, path: str, tx: int = 0) -> list[Perm]:
        """A node's permission list, owner first."""
        return await self._run(commands.get_perms(path), tx)

    async def set_perms(
        self, path: str, perms: Iterable[str | Perm], tx: int = 0
    ) -> None:
        """Replace a node's permissions (``"n0"``, ``"r5"`` or ``Perm``)."""
        await self._run(commands.set_perms(path, perms), tx)

    # -- watches --

    async def watch(self, path: str, token: str, depth: int | None = None) -> None:
        """Register a watch; its initial event follows the reply."""
        await self._run(commands.watch(path, token, depth))

    async def unwatch(self, path: str, token: str) -> None:
        """Remove the watch with this path and token."""
        await self._run(commands.unwatch(path, token))

    async def reset_watches(self) -> None:
        """Drop every watch and every open transaction of this connection."""
        await self._run(commands.reset_watches())

    async def wait_watch(self, timeout: float | None = None) -> WatchEvent:  # noqa: ASYNC109
        """The next watch event, ``(path, token)``.

        Raises:
            TimeoutError: none came within ``timeout`` seconds.
            BrokenConnection: the connection broke.
        """
        await self.connect()
        async with asyncio.timeout(timeout):
            while (event := self._protocol.next_event()) is NEED_DATA:
                if self._protocol.broken is not None:
                    raise BrokenConnection(self._protocol.broken)
                self._events_changed.clear()
                await self._events_changed.wait()
        return event

    def received_events(self) -> list[WatchEvent]:
        """The watch events received so far and not yet taken (no waiting)."""
        return self._protocol.take_events()

    async def watch_events(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as Client
    ) -> AsyncIterator[WatchEvent]:
        """Iterate over watch events; stop after ``timeout`` quiet seconds."""
        while True:
            try:
                yield await self.wait_watch(timeout)
            except TimeoutError:
                return

    # -- transactions --

    async def transaction_start(self) -> int:
        """Open a transaction; pass its id as ``tx`` to other methods."""
        return await self._run(commands.transaction_start())

    async def transaction_end(self, tx: int, commit: bool = True) -> None:
        """Commit (or abort) a transaction.

        Raises:
            TransactionConflict: the commit lost to another change (EAGAIN).
        """
        await self._run(commands.transaction_end(commit), tx)

    async def transaction(
        self, body: Callable[[int], Awaitable[T]], *, attempts: int | None = None
    ) -> T:
        """Run ``await body(tx)`` in a transaction until it commits.

        Same rules as :meth:`pyxenstored.client.Client.transaction`.
        """
        attempt = 0
        while True:
            attempt += 1
            tx = await self.transaction_start()
            try:
                result = await body(tx)
            except TransactionConflict:
                await self._abort_quietly(tx)
                if attempts is not None and attempt >= attempts:
                    raise
                continue
            except BaseException:
                await self._abort_quietly(tx)
                raise
            try:
                await self.transaction_end(tx, commit=True)
            except TransactionConflict:
                if attempts is not None and attempt >= attempts:
                    raise
                continue
            return result

    async def _abort_quietly(self, tx: int) -> None:
        with contextlib.suppress(XenstoreError):
            await self.transaction_end(tx, commit=False)

    # -- domains and the daemon --

    async def get_domain_path(self, domid: int) -> str:
        """The home path of a domain (``/local/domain/<domid>``)."""
        return await self._run(commands.get_domain_path(domid))

    async def is_domain_introduced(self, domid: int) -> bool:
        """Whether the daemon serves a ring for the domain."""
        return await self._run(commands.is_domain_introduced(domid))

    async def introduce(self, domid: int, gfn: int, port: int) -> None:
        """Tell the daemon about a domain's ring page and event channel."""
        await self._run(commands.introduce(domid, gfn, port))

    async def release(self, domid: int) -> None:
        """Forget a domain (removes the nodes it owns)."""
        await self._run(commands.release(domid))

    async def resume(self, domid: int) -> None:
        """Clear a domain's shutdown-reported state."""
        await self._run(commands.resume(domid))

    async def set_target(self, domid: int, target: int) -> None:
        """Let ``domid`` act with ``target``'s permissions (stub domains)."""
        await self._run(commands.set_target(domid, target))

    async def get_feature(self, domid: int | None = None) -> int:
        """The feature bits of this connection, or of a domain."""
        return await self._run(commands.get_feature(domid))

    async def set_feature(self, domid: int, value: int) -> None:
        """Set the feature bits a domain gets when it is introduced."""
        await self._run(commands.set_feature(domid, value))

    async def list_quotas(self) -> list[str]:
        """The names of the quotas the daemon supports."""
        return await self._run(commands.list_quotas())

    async def get_quota(self, name: str, domid: int | None = None) -> int:
        """A quota's global default, or its value for one domain."""
        return await self._run(commands.get_quota(name, domid))

    async def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        """Set a quota's global default, or its value for one domain."""
        await self._run(commands.set_quota(name, value, domid))

    async def quiesce(self, domid: int) -> None:
        """Stop taking requests from a domain's ring (seed migration op)."""
        await self._run(commands.quiesce(domid))

    async def add_domain_watches(
        self, domid: int, watches: Iterable[tuple[str, str]]
    ) -> None:
        """Register ``(path, token)`` watches on a domain's behalf (seed op)."""
        await self._run(commands.add_domain_watches(domid, watches))

    async def get_domain_watches(
        self, domid: int, index: int
    ) -> tuple[int, list[tuple[str, str]]]:
        """One page of a domain's watches from number ``index`` on, with the
        list's generation (seed op; see MIGRATION.md a.5 for the loop)."""
        return await self._run(commands.get_domain_watches(domid, index))

    async def control(self, command: str, *args: str) -> bytes:
        """A CONTROL command (as ``xenstore-control``); the raw reply."""
        return await self._run(commands.control(command, *args))

    # -- life cycle --

    async def aclose(self) -> None:
        """Close the connection (idempotent); pending calls fail."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            await self._transport.aclose()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._protocol.connection_lost("client closed")
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._events_changed.set()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
