"""The blocking client: :class:`Client`.

A thin façade over :mod:`~pyxenstored.client.commands` flows and the
sans-IO :class:`~pyxenstored.client.protocol.ClientProtocol`.  There is no
background thread: a call sends its request and reads until its reply is
in; watch events read on the way are queued, and :meth:`Client.wait_watch`
hands them out (reading more when the queue is empty).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

from pyxenstored.client import commands
from pyxenstored.client.commands import Flow, FlowDriver, Request
from pyxenstored.client.protocol import NEED_DATA, ClientProtocol, WatchEvent
from pyxenstored.client.transport import Transport, open_transport
from pyxenstored.errors import (
    BrokenConnection,
    ConnectionClosed,
    TransactionConflict,
    XenstoreError,
    XsError,
)
from pyxenstored.perms import Perm

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A blocking xenstore connection.

    Args:
        path: the daemon's socket (or xenbus device); ``None`` finds it as
            libxenstore does (``$XENSTORED_PATH``, ``$XENSTORED_RUNDIR``...).
        transport: an already open transport to use instead of ``path``.

    Raises:
        OSError: the daemon cannot be reached.

    Every request method raises the :class:`~pyxenstored.errors.XsError`
    subclass the server answers with (``NoEntry`` for ENOENT, ...),
    :class:`~pyxenstored.errors.BrokenConnection` if the connection breaks
    and :class:`~pyxenstored.errors.ConnectionClosed` after :meth:`close`.
    Methods taking ``tx`` act inside that transaction (0: none).  A client
    is not thread-safe; use one per thread.
    """

    def __init__(
        self, path: str | None = None, *, transport: Transport | None = None
    ) -> None:
        self._transport = transport if transport is not None else open_transport(path)
        self._protocol = ClientProtocol()
        self._closed = False

    # -- plumbing --

    def _receive(self, timeout: float | None = None) -> None:
        data = self._transport.receive_some(timeout=timeout)
        if data:
            self._protocol.receive_data(data)
        else:
            self._protocol.connection_lost("xenstored closed the connection")

    def _exchange(self, request: Request, tx: int) -> bytes | XsError:
        """Send one request; its reply, or the error the daemon answered."""
        if self._closed:
            raise ConnectionClosed("client closed")
        req_id, data = self._protocol.send(request.op, request.payload, tx)
        try:
            self._transport.send_all(data)
            while (reply := self._protocol.outcome(req_id)) is NEED_DATA:
                self._receive()
        except BaseException:
            # Interrupted or failed: a late reply must not linger.
            self._protocol.forget(req_id)
            raise
        return reply

    def pipeline(
        self, requests: Sequence[Request], tx: int = 0
    ) -> list[bytes | XsError]:
        """Send many single-reply requests in one write; collect every reply.

        Keep a batch to a few hundred requests: they must fit the socket
        buffer while the daemon's replies wait to be read.

        Returns:
            Each reply payload, or the :class:`~pyxenstored.errors.XsError`
            the daemon answered, in the order of ``requests``.
        """
        if self._closed:
            raise ConnectionClosed("client closed")
        ids, data = self._protocol.send_many(requests, tx)
        results: list[bytes | XsError] = []
        try:
            self._transport.send_all(data)
            for req_id in ids:
                while (result := self._protocol.outcome(req_id)) is NEED_DATA:
                    self._receive()
                results.append(result)
        except BaseException:
            for req_id in ids[len(results) :]:
                self._protocol.forget(req_id)
            raise
        return results

    def _run(self, flow: Flow[T], tx: int = 0) -> T:
        """Drive a command flow: send what it yields, feed it the replies."""
        driver = FlowDriver(flow)
        while (request := driver.request) is not None:
            driver.feed(self._exchange(request, tx))
        return driver.result

    # -- nodes --

    def read(self, path: str, tx: int = 0) -> bytes:
        """The value of a node."""
        return self._run(commands.read(path), tx)

    def exists(self, path: str, tx: int = 0) -> bool:
        """Whether a node exists (a READ that does not raise ENOENT)."""
        return self._run(commands.exists(path), tx)

    def write(self, path: str, value: bytes, tx: int = 0) -> None:
        """Create or overwrite a node (and create missing parents)."""
        self._run(commands.write(path, value), tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        """Create a node with an empty value if it does not exist."""
        self._run(commands.mkdir(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        """Remove a node and everything below it."""
        self._run(commands.rm(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        """The names of a node's children (any length: DIRECTORY_PART)."""
        return self._run(commands.directory(path), tx)

    def get_perms(self, path: str, tx: int = 0) -> list[Perm]:
        """A node's permission list, owner first."""
        return self._run(commands.get_perms(path), tx)

    def set_perms(self, path: str, perms: Iterable[str | Perm], tx: int = 0) -> None:
        """Replace a node's permissions (``"n0"``, ``"r5"`` or ``Perm``)."""
        self._run(commands.set_perms(path, perms), tx)

    # -- watches --

    def watch(self, path: str, token: str, depth: int | None = None) -> None:
        """Register a watch; its initial event follows the reply."""
        self._run(commands.watch(path, token, depth))

    def unwatch(self, path: str, token: str) -> None:
        """Remove the watch with this path and token."""
        self._run(commands.unwatch(path, token))

    def reset_watches(self) -> None:
        """Drop every watch and every open transaction of this connection."""
        self._run(commands.reset_watches())

    def wait_watch(self, timeout: float | None = None) -> WatchEvent:
        """The next watch event, ``(path, token)``, waiting for it if needed.

        Raises:
            TimeoutError: none came within ``timeout`` seconds.
            BrokenConnection: the connection broke.
        """
        if self._closed:
            raise ConnectionClosed("client closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while (event := self._protocol.next_event()) is NEED_DATA:
            if self._protocol.broken is not None:
                raise BrokenConnection(self._protocol.broken)
            remaining = (
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            self._receive(remaining)
        return event

    def received_events(self) -> list[WatchEvent]:
        """The watch events received so far and not yet taken (no waiting)."""
        return self._protocol.take_events()

    def watch_events(self, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Iterate over watch events; stop after ``timeout`` quiet seconds."""
        while True:
            try:
                yield self.wait_watch(timeout)
            except TimeoutError:
                return

    # -- transactions --

    def transaction_start(self) -> int:
        """Open a transaction; pass its id as ``tx`` to other methods."""
        return self._run(commands.transaction_start())

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        """Commit (or abort) a transaction.

        Raises:
            TransactionConflict: the commit lost to another change (EAGAIN);
                nothing was applied and the transaction is gone.
        """
        self._run(commands.transaction_end(commit), tx)

    def transaction(
        self, body: Callable[[int], T], *, attempts: int | None = None
    ) -> T:
        """Run ``body(tx)`` in a transaction until it commits.

        On :class:`~pyxenstored.errors.TransactionConflict` (EAGAIN, at
        commit or from the body) the body runs again in a new transaction,
        at most ``attempts`` times in all (``None``: no limit, as the C
        tools).  Any other exception aborts the transaction and propagates.

        Returns:
            What the committed run of ``body`` returned.
        """
        attempt = 0
        while True:
            attempt += 1
            tx = self.transaction_start()
            try:
                result = body(tx)
            except TransactionConflict:
                self._abort_quietly(tx)
                if attempts is not None and attempt >= attempts:
                    raise
                continue
            except BaseException:
                self._abort_quietly(tx)
                raise
            try:
                self.transaction_end(tx, commit=True)
            except TransactionConflict:
                if attempts is not None and attempt >= attempts:
                    raise
                continue
            return result

    def _abort_quietly(self, tx: int) -> None:
        try:
            self.transaction_end(tx, commit=False)
        except XenstoreError:
            pass

    # -- domains and the daemon --

    def get_domain_path(self, domid: int) -> str:
        """The home path of a domain (``/local/domain/<domid>``)."""
        return self._run(commands.get_domain_path(domid))

    def is_domain_introduced(self, domid: int) -> bool:
        """Whether the daemon serves a ring for the domain."""
        return self._run(commands.is_domain_introduced(domid))

    def introduce(self, domid: int, gfn: int, port: int) -> None:
        """Tell the daemon about a domain's ring page and event channel."""
        self._run(commands.introduce(domid, gfn, port))

    def release(self, domid: int) -> None:
        """Forget a domain (removes the nodes it owns)."""
        self._run(commands.release(domid))

    def resume(self, domid: int) -> None:
        """Clear a domain's shutdown-reported state."""
        self._run(commands.resume(domid))

    def set_target(self, domid: int, target: int) -> None:
        """Let ``domid`` act with ``target``'s permissions (stub domains)."""
        self._run(commands.set_target(domid, target))

    def get_feature(self, domid: int | None = None) -> int:
        """The feature bits of this connection, or of a domain."""
        return self._run(commands.get_feature(domid))

    def set_feature(self, domid: int, value: int) -> None:
        """Set the feature bits a domain gets when it is introduced."""
        self._run(commands.set_feature(domid, value))

    def list_quotas(self) -> list[str]:
        """The names of the quotas the daemon supports."""
        return self._run(commands.list_quotas())

    def get_quota(self, name: str, domid: int | None = None) -> int:
        """A quota's global default, or its value for one domain."""
        return self._run(commands.get_quota(name, domid))

    def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        """Set a quota's global default, or its value for one domain."""
        self._run(commands.set_quota(name, value, domid))

    def quiesce(self, domid: int) -> None:
        """Stop taking requests from a domain's ring (seed migration op)."""
        self._run(commands.quiesce(domid))

    def add_domain_watches(
        self, domid: int, watches: Iterable[tuple[str, str]]
    ) -> None:
        """Register ``(path, token)`` watches on a domain's behalf (seed op)."""
        self._run(commands.add_domain_watches(domid, watches))

    def get_domain_watches(
        self, domid: int, index: int
    ) -> tuple[int, list[tuple[str, str]]]:
        """One page of a domain's watches from number ``index`` on, with the
        list's generation (seed op; see MIGRATION.md a.5 for the loop)."""
        return self._run(commands.get_domain_watches(domid, index))

    def control(self, command: str, *args: str) -> bytes:
        """A CONTROL command (as ``xenstore-control``); the raw reply."""
        return self._run(commands.control(command, *args))

    # -- life cycle --

    def close(self) -> None:
        """Close the connection (idempotent); the daemon drops its watches
        and open transactions."""
        if not self._closed:
            self._closed = True
            self._protocol.connection_lost("client closed")
            self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
