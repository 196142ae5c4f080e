"""The engine's whole state as xenstore state-stream records, and back.

Live update (MIGRATION.md b.5-b.7) carries everything a daemon holds to
the program that replaces it: every node with its permissions, every
connection with the bytes it had read but not handled and the bytes it
had not yet sent, every watch, the quotas and the domains' feature words.
This module turns an :class:`~pyxenstored.engine.engine.Engine` into the
records of :mod:`pyxenstored.migration.xsstate` (:func:`capture`) and a
fresh engine back into that state (:func:`restore`).  File descriptors,
ring pages and event channels belong to the shell: it says what each
connection holds (:class:`ConnIO`) and gets back which connection to
attach to which descriptor or port (:class:`Restored`).

The records are written in C xenstored's order (b.6), so C reads what we
write: the global record, the quotas, each connection followed by its
watches, every node in pre-order from ``/``, the two special nodes, one
record per known domain.  C restores the master domain's ring before any
node (it creates its tree then), which holds here because the master's
ring is the first connection a daemon makes.

Open transactions: C never writes them (its update waits until none is
open, or drops them with ``-F``).  We write a TRANSACTION_DATA record for
each, so the replacement knows the ids: a client that goes on using one
gets the answers of a transaction that can only end in EAGAIN (the
"doomed" transactions of MIGRATION.md c.11), which every client handles
by starting it again, instead of C's ENOENT.  C skips these records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pyxenstored import paths
from pyxenstored.engine.connections import Connection
from pyxenstored.engine.domains import DomainInfo
from pyxenstored.engine.features import DEFAULT_DOMAIN_FEATURES
from pyxenstored.errors import XsError
from pyxenstored.migration.xsstate import (
    DOMID_INVALID,
    ConnectionData,
    ConnType,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    StateRecord,
    StateStream,
    TransactionData,
    WatchData,
)
from pyxenstored.paths import SPECIAL_NODES
from pyxenstored.store.quota import QUOTA_NAMES, Limits
from pyxenstored.store.transaction import Transaction
from pyxenstored.store.tree import Store
from pyxenstored.wire.ops import ServerFeature

if TYPE_CHECKING:
    from pyxenstored.engine.engine import Engine

__all__ = ["ConnIO", "RestoreError", "Restored", "capture", "cold_start", "restore"]

log = logging.getLogger(__name__)

#: The order C writes the special nodes in (b.6).
_SPECIAL_ORDER = ("@releaseDomain", "@introduceDomain")


@dataclass(slots=True)
class ConnIO:
    """What the shell holds for one connection when the state is written."""

    conn: Connection
    #: Socket connections: the descriptor the replacement inherits.
    socket_fd: int = -1
    #: Ring connections: the daemon's local event-channel port.
    port: int = 0
    #: Bytes read and not handled yet: whole parked requests, then the
    #: partial one.
    in_data: bytes = b""
    #: Bytes not yet sent, the first message possibly cut at the front.
    out_data: bytes = b""
    #: How much of ``out_data`` is the rest of a partly sent message.
    out_resp_len: int = 0


class RestoreError(ValueError):
    """A stream that decodes but cannot be a daemon's state."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(slots=True)
class Restored:
    """What :func:`restore` leaves for the shell to attach."""

    socket_fd: int = -1
    evtchn_fd: int = -1
    #: Each restored connection with its record (descriptor or port, and
    #: the pending input and output), in stream order.
    connections: list[tuple[Connection, ConnectionData]] = field(default_factory=list)
    #: Transactions re-created as doomed (MIGRATION.md c.11).
    doomed: int = 0


# -- writing -------------------------------------------------------------------


def capture(
    engine: Engine,
    conns: Sequence[ConnIO],
    *,
    socket_fd: int,
    evtchn_fd: int,
) -> tuple[int, list[StateRecord]]:
    """The stream version needed and the records of the engine's state.

    Version 1 (what every C release reads) unless a watch has a depth or
    a domain a feature word of its own, which only version 2 carries.
    """
    records: list[StateRecord] = [GlobalData(socket_fd, evtchn_fd)]
    records.append(GlobalQuotaData(_quota_values(engine.quotas.defaults)))
    version = 1
    for conn_id, io in enumerate(conns, 1):
        records.append(_connection(conn_id, io))
        for watch in engine.watches.of(io.conn.id):
            if watch.depth is not None:
                version = 2
            records.append(WatchData(conn_id, watch.wpath, watch.token, watch.depth))
        for tx_id in io.conn.transactions:
            records.append(TransactionData(conn_id, tx_id))
    store = engine.store
    records.extend(
        NodeData(path, node.value, node.perms) for path, node in store.walk()
    )
    records.extend(
        NodeData(name, b"", store.special[name].perms) for name in _SPECIAL_ORDER
    )
    domains = engine.domains
    known = dict.fromkeys(
        [*domains.domids(), *engine.quotas.per_domain, *domains.featured_domids()]
    )
    if domains.featured_domids():
        version = 2
    for domid in known:
        # Version 2 carries each domain's word as it is (0 too, as C);
        # version 1 has no place for it.
        features = int(engine.domain_features(domid)) if version >= 2 else 0
        quotas: tuple[tuple[str, int], ...] = ()
        if domid in engine.quotas.per_domain:
            quotas = _quota_values(engine.quotas.per_domain[domid])
        records.append(DomainData(domid, features, quotas))
    return version, records


def _quota_values(limits: Limits) -> tuple[tuple[str, int], ...]:
    return tuple((name, getattr(limits, attr)) for name, attr in QUOTA_NAMES.items())


def _connection(conn_id: int, io: ConnIO) -> ConnectionData:
    conn = io.conn
    if conn.is_socket:
        return ConnectionData(
            conn_id,
            ConnType.SOCKET,
            socket_fd=io.socket_fd,
            in_data=io.in_data,
            out_data=io.out_data,
            out_resp_len=io.out_resp_len,
        )
    return ConnectionData(
        conn_id,
        ConnType.RING,
        domid=conn.domid,
        tdomid=DOMID_INVALID if conn.target is None else conn.target,
        evtchn=io.port,
        in_data=io.in_data,
        out_data=io.out_data,
        out_resp_len=io.out_resp_len,
    )


# -- reading -------------------------------------------------------------------


def restore(engine: Engine, stream: StateStream) -> Restored:
    """Rebuild a fresh engine's state from a live-update stream.

    The engine must be new (nothing connected, the initial tree only).
    Nodes are linked to their parents without quota checks and counted
    for their owners, as C restores them; each gets a fresh generation.

    Raises:
        RestoreError: a record refers to something the stream has not
            created (a watch of an unknown connection, a node whose parent
            is missing, the same connection twice).
    """
    result = Restored()
    store = Store(engine.priv_domid, skeleton=False)
    engine.store = store
    by_id: dict[int, Connection] = {}
    offsets = stream.offsets or (0,) * len(stream.records)
    pending_nodes = 0
    for record, offset in zip(stream.records, offsets, strict=True):
        if isinstance(record, GlobalData):
            result.socket_fd, result.evtchn_fd = record.socket_fd, record.evtchn_fd
        elif isinstance(record, ConnectionData):
            if record.conn_id in by_id:
                raise RestoreError(offset, f"connection {record.conn_id} twice")
            conn = _restore_connection(engine, record, offset)
            by_id[record.conn_id] = conn
            result.connections.append((conn, record))
        elif isinstance(record, WatchData):
            _restore_watch(
                engine, _known(by_id, record.conn_id, offset), record, offset
            )
        elif isinstance(record, TransactionData):
            conn = _known(by_id, record.conn_id, offset)
            _restore_transaction(engine, conn, record.tx_id)
            result.doomed += 1
        elif isinstance(record, NodeData):
            if record.conn_id:
                # A node of an open transaction: the transaction is doomed,
                # so what it read or wrote does not matter any more.
                pending_nodes += 1
                continue
            _restore_node(store, record, offset)
        elif isinstance(record, GlobalQuotaData):
            engine.quotas.defaults = _limits(
                engine.quotas.defaults, record.domain_quotas + record.global_quotas
            )
        elif isinstance(record, DomainData):
            _restore_domain(engine, record, stream.version)
    if pending_nodes:
        log.info("live update: %d nodes of open transactions ignored", pending_nodes)
    return result


def cold_start(stream: StateStream) -> StateStream:
    """Only what outlives the daemon's process: nodes, quotas, domains.

    ``--restore FILE`` starts a daemon from a saved state with no client:
    connections, their watches and transactions (and the descriptors of
    the global record) belonged to the process that wrote it.
    """
    kept = [
        (record, offset)
        for record, offset in zip(
            stream.records, stream.offsets or (0,) * len(stream.records), strict=True
        )
        if isinstance(record, (GlobalQuotaData, DomainData))
        or (isinstance(record, NodeData) and not record.conn_id)
    ]
    return replace(
        stream,
        records=tuple(r for r, _ in kept),
        offsets=tuple(o for _, o in kept),
    )


def _known(by_id: dict[int, Connection], conn_id: int, offset: int) -> Connection:
    try:
        return by_id[conn_id]
    except KeyError:
        raise RestoreError(offset, f"connection {conn_id} not restored") from None


def _restore_connection(
    engine: Engine, record: ConnectionData, offset: int
) -> Connection:
    if record.conn_type is ConnType.SOCKET:
        return engine.connect_socket()
    domid = record.domid
    if domid in engine.domains:
        raise RestoreError(offset, f"domain {domid} has two ring connections")
    conn = engine.connect_domain(domid)
    if record.tdomid != DOMID_INVALID:
        conn.target = record.tdomid
    # The remote port and the frame are not in the stream (grant entry 1
    # finds the page); -1 makes a later INTRODUCE re-bind, as C always does.
    engine.domains.add(conn, DomainInfo(domid, 0, -1))
    return conn


def _restore_watch(
    engine: Engine, conn: Connection, record: WatchData, offset: int
) -> None:
    wpath = record.path
    try:
        path = paths.canonicalize(wpath, conn.home, allow_special=True)
    except XsError as error:
        raise RestoreError(offset, f"watch {wpath!r}: {error}") from None
    home = conn.home if wpath[:1] not in ("/", "@") else None
    # No initial event: the watch is not new to its client.
    engine.watches.add(conn.id, path, record.token, wpath, home, record.depth)


def _restore_transaction(engine: Engine, conn: Connection, tx_id: int) -> None:
    tx = Transaction(tx_id, engine.store, engine.quotas, conn.domid, conn.privileged)
    tx.doomed = True
    tx.started = engine.clock()
    conn.transactions[tx_id] = tx
    conn.next_tx_id = max(conn.next_tx_id, (tx_id + 1) & 0xFFFFFFFF)


def _restore_node(store: Store, record: NodeData, offset: int) -> None:
    path = record.path
    if not record.perms:
        raise RestoreError(offset, f"node {path} has no owner")
    if path in SPECIAL_NODES:
        store.special[path].perms = record.perms
        return
    try:
        canonical = paths.canonicalize(path, "/")
    except XsError:
        canonical = ""
    if canonical != path:
        raise RestoreError(offset, f"bad node path {path!r}")
    if not store.restore_node(path, record.value, record.perms):
        raise RestoreError(offset, f"node {path}: parent missing or node repeated")


def _limits(current: Limits, values: Sequence[tuple[str, int]]) -> Limits:
    """``current`` with the named values; names this daemon lacks are dropped."""
    changes = {}
    for name, value in values:
        attr = QUOTA_NAMES.get(name)
        if attr is None:
            log.info("live update: quota %r unknown here, dropped", name)
            continue
        changes[attr] = value
    return replace(current, **changes)


def _restore_domain(engine: Engine, record: DomainData, version: int) -> None:
    domid = record.domid
    features = ServerFeature(record.features)
    if version >= 2 and features != DEFAULT_DOMAIN_FEATURES:
        # 0 too: a domain given no feature at all keeps none.
        engine.domains.set_features(domid, features)
    if record.quotas:
        # The domain's own values, as they were (C writes them for every
        # domain: each of its domains has its own copy).
        engine.quotas.per_domain[domid] = _limits(engine.quotas.defaults, record.quotas)
