"""Registered watches and which of them a change fires (PROTOCOL.md 6).

Watches are indexed by canonical path, so finding the watches a change
fires costs one dictionary lookup per ancestor of the changed path,
whatever the number of watches registered on the host.
"""

from __future__ import annotations

from collections.abc import Iterator

from pyxenstored.errors import AlreadyExists, NoEntry

__all__ = ["Watch", "WatchTable", "watch_bytes"]


class Watch:
    """One watch of one connection."""

    __slots__ = ("conn_id", "depth", "home", "path", "seq", "token", "wpath")

    def __init__(
        self,
        conn_id: int,
        path: str,
        token: str,
        wpath: str,
        home: str | None,
        seq: int,
        depth: int | None = None,
    ) -> None:
        self.conn_id = conn_id
        #: Canonical (absolute or special) path.
        self.path = path
        self.token = token
        #: The path exactly as the client registered it.
        self.wpath = wpath
        #: Home prefix stripped from event paths (relative watches only).
        self.home = home
        #: Registration order, host-wide: events on one connection are
        #: queued in the order its watches were registered, as C does.
        self.seq = seq
        self.depth = depth

    def event_path(self, path: str) -> str:
        """How an event for ``path`` is reported to this watch."""
        home = self.home
        if home is not None and path.startswith(home) and len(path) > len(home):
            return path[len(home) + 1 :]
        return path

    def __repr__(self) -> str:
        return f"Watch({self.conn_id}, {self.wpath!r}, {self.token!r})"


def watch_bytes(wpath: str, token: str) -> int:
    """What one watch costs its domain's ``memory`` account."""
    return 32 + len(wpath) + len(token)


def _levels(path: str) -> int:
    return 0 if path == "/" else path.count("/")


class WatchTable:
    """Every watch on the host, by path and by connection."""

    def __init__(self) -> None:
        self._by_path: dict[str, list[Watch]] = {}
        self._by_conn: dict[int, dict[tuple[str, str], Watch]] = {}
        #: Host-wide counter: orders registrations and numbers list versions.
        self._seq = 0
        #: Per connection: the counter value at the last change of its list.
        self._generation: dict[int, int] = {}
        #: Per connection: memory its watches take (:func:`watch_bytes`).
        self._bytes: dict[int, int] = {}

    def bump(self) -> int:
        """A fresh value of the counter (never reused in this process)."""
        self._seq += 1
        return self._seq

    def generation(self, conn_id: int) -> int:
        """Changes whenever the connection's watch list changes (GET_DOMAIN_WATCHES)."""
        return self._generation.get(conn_id, 0)

    def __len__(self) -> int:
        return sum(len(w) for w in self._by_conn.values())

    def by_conn(self) -> dict[int, dict[tuple[str, str], Watch]]:
        """Read-only use: the watches of each connection."""
        return self._by_conn

    def by_path(self) -> dict[str, list[Watch]]:
        """Read-only use: the watches on each path."""
        return self._by_path

    def bytes(self, conn_id: int) -> int:
        """Memory the connection's watches take, for its memory quota."""
        return self._bytes.get(conn_id, 0)

    def count(self, conn_id: int) -> int:
        return len(self._by_conn.get(conn_id, ()))

    def of(self, conn_id: int) -> list[Watch]:
        """The watches of a connection, in registration order."""
        return list(self._by_conn.get(conn_id, {}).values())

    def find(self, conn_id: int, path: str, token: str) -> Watch | None:
        return self._by_conn.get(conn_id, {}).get((path, token))

    def add(
        self,
        conn_id: int,
        path: str,
        token: str,
        wpath: str,
        home: str | None,
        depth: int | None = None,
    ) -> Watch:
        """Register a watch.

        Raises:
            AlreadyExists: the connection already watches ``path`` with
                ``token``.
        """
        mine = self._by_conn.setdefault(conn_id, {})
        if (path, token) in mine:
            raise AlreadyExists()
        seq = self.bump()
        self._generation[conn_id] = seq
        watch = Watch(conn_id, path, token, wpath, home, seq, depth)
        mine[(path, token)] = watch
        self._bytes[conn_id] = self._bytes.get(conn_id, 0) + watch_bytes(wpath, token)
        self._by_path.setdefault(path, []).append(watch)
        return watch

    def remove(self, conn_id: int, path: str, token: str) -> Watch:
        """Unregister a watch.

        Raises:
            NoEntry: no such watch.
        """
        mine = self._by_conn.get(conn_id)
        watch = mine.pop((path, token), None) if mine else None
        if watch is None:
            raise NoEntry()
        self._generation[conn_id] = self.bump()
        self._bytes[conn_id] -= watch_bytes(watch.wpath, watch.token)
        self._unindex(watch)
        return watch

    def remove_all(self, conn_id: int) -> list[Watch]:
        """Unregister every watch of a connection."""
        mine = self._by_conn.pop(conn_id, {})
        self._bytes.pop(conn_id, None)
        if mine:
            self._generation[conn_id] = self.bump()
        for watch in mine.values():
            self._unindex(watch)
        return list(mine.values())

    def _unindex(self, watch: Watch) -> None:
        same = self._by_path[watch.path]
        same.remove(watch)
        if not same:
            del self._by_path[watch.path]

    def matches(self, path: str, exact: bool) -> Iterator[Watch]:
        """The watches fired by a change of ``path``.

        Subtree mode fires watches on ``path`` and on each ancestor;
        exact mode only those on ``path``.  Depth-limited watches also
        require ``path`` to be at most ``depth`` levels below them.
        """
        by_path = self._by_path
        if not by_path:
            return
        found = by_path.get(path)
        if found:
            yield from found
        if exact or path[0] != "/":
            return
        ancestor = path
        while ancestor != "/":
            ancestor = ancestor[: ancestor.rfind("/")] or "/"
            found = by_path.get(ancestor)
            if found:
                below = _levels(path) - _levels(ancestor)
                for watch in found:
                    if watch.depth is None or below <= watch.depth:
                        yield watch
