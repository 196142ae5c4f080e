"""The engine: one request in, replies and watch events out.

Theory of operation:

1. :meth:`Engine.handle` takes one decoded request of one connection and
   never waits, so every request is atomic without locks; requests of one
   connection are handled strictly in arrival order, as C does.
2. Dispatch follows C's order (PROTOCOL.md 1.2): unknown type -> ENOSYS;
   privileged-only type from an unprivileged caller -> EACCES; a non-zero
   ``tx_id`` that names no open transaction of the connection -> ENOENT
   (WATCH and UNWATCH ignore ``tx_id``); then the operation.
3. An operation either raises an :class:`~pyxenstored.errors.XsError`,
   which becomes the ERROR reply here and nowhere else, or returns its
   reply payload.  Operations check everything before changing anything,
   so an error never leaves a half-applied change.
4. Changes recorded by the store fire watches *before* the success reply
   is queued, so a connection watching what it writes sees the event
   first and the ``OK`` second, as clients of C expect.  WATCH queues its
   own ``OK`` and then the initial event.
5. Output is queued on each :class:`Connection`; the connections that got
   output are collected in :attr:`Engine.pending` for the I/O shell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyxenstored import paths
from pyxenstored.engine.connections import Connection
from pyxenstored.engine.control import LoggingOperator, Operator
from pyxenstored.engine.domains import (
    DomainInfo,
    Domains,
    DomainState,
    Hypervisor,
    reap_unintroduced,
    release_changes,
)
from pyxenstored.engine.features import DEFAULT_DOMAIN_FEATURES
from pyxenstored.engine.handlers import HANDLERS, NOTID, PRIV
from pyxenstored.engine.liveupdate import LiveUpdate
from pyxenstored.errors import (
    InternalError,
    NoEntry,
    NotSupported,
    PermissionDenied,
    TooBig,
    XsError,
)
from pyxenstored.paths import RELEASE_DOMAIN, SPECIAL_NODES, parent_of
from pyxenstored.perms import READ_BIT, Perms, access_for
from pyxenstored.store import tree
from pyxenstored.store.node import Change
from pyxenstored.store.quota import Limits, QuotaRule, Quotas
from pyxenstored.store.transaction import Transaction
from pyxenstored.store.tree import Store
from pyxenstored.watches import WatchTable
from pyxenstored.wire.ops import PAYLOAD_MAX, Op, ServerFeature
from pyxenstored.wire.packet import HEADER, Packet, encode_packet
from pyxenstored.wire.payload import ENCODING

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)


def _describe(packet: Packet) -> str:
    """The request, for the log line of an internal error (never raises)."""
    try:
        try:
            name = Op(packet.op).name
        except ValueError:
            name = f"type {packet.op}"
        return (
            f"{name} (req_id {packet.req_id}, tx_id {packet.tx_id}, "
            f"payload {packet.payload[:256]!r})"
        )
    except Exception:
        return repr(packet)[:300]


def _no_clock() -> float:
    return 0.0


@dataclass(frozen=True, slots=True)
class _Privileged:
    """The caller used for the daemon's own clean-up work."""

    domid: int = 0
    target: int | None = None
    privileged: bool = True
    watch_bytes: int = 0


_PRIVILEGED = _Privileged()


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of the pure core (the daemon's command line fills them)."""

    #: The privileged domain (C ``-p``); socket clients act as it.
    priv_domid: int = 0
    limits: Limits = field(default_factory=Limits)
    quota_rule: QuotaRule = QuotaRule.AT_MOST_N


class Engine:
    """All of xenstored's state and the request handlers."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        hypervisor: Hypervisor | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.priv_domid = self.config.priv_domid
        self.store = Store(self.priv_domid)
        self.quotas = Quotas(self.config.limits, self.config.quota_rule)
        self.watches = WatchTable()
        self.connections: dict[int, Connection] = {}
        #: Connections that got output since :meth:`take_pending`.
        self.pending: dict[int, Connection] = {}
        self._next_conn_id = 1
        #: Every domain's state, and the hypervisor (the shell may set it
        #: later; ``sim.hypervisor.MemoryHypervisor`` for tests).
        self.domains = Domains(self.priv_domid, hypervisor)
        #: What CONTROL asks of the daemon (log lines, trace, report files).
        self.operator: Operator = LoggingOperator()
        #: Seconds, for transaction ages (the shell gives a monotonic clock).
        self.clock: Callable[[], float] = _no_clock
        #: The CONTROL ``live-update`` session, if one is open.
        self.live_update: LiveUpdate | None = None

    # -- connections --------------------------------------------------------

    def _connect(self, domid: int, *, is_socket: bool) -> Connection:
        conn = Connection(
            self._next_conn_id,
            domid,
            is_socket=is_socket,
            privileged=is_socket or domid == self.priv_domid,
            watches=self.watches,
        )
        self._next_conn_id += 1
        self.connections[conn.id] = conn
        return conn

    def connect_socket(self) -> Connection:
        """A new local socket client; it acts as the privileged domain."""
        return self._connect(self.priv_domid, is_socket=True)

    def connect_domain(self, domid: int) -> Connection:
        """A new ring connection of a domain."""
        return self._connect(domid, is_socket=False)

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection: its watches, transactions and output go."""
        conn.parked = None
        if self.live_update is not None and self.live_update.conn is conn:
            log.info("live update abandoned: its connection closed")
            self.end_live_update()
        self.reset_connection(conn)
        conn.closed = True
        self.connections.pop(conn.id, None)
        self.pending.pop(conn.id, None)

    def reset_connection(self, conn: Connection) -> None:
        """Drop watches, transactions and queued output of a connection."""
        self.watches.remove_all(conn.id)
        conn.transactions.clear()
        conn.take_output()

    # -- domains ----------------------------------------------------------------

    def domain_introduced(self, conn: Connection) -> None:
        """A new domain's connection is attached: attach staged watches."""
        staged = self.domains.take_staged(conn.domid)
        if staged is None:
            return
        conn.restored = True
        for wpath, token in staged.watches:
            self.add_watch(conn, wpath, token)

    def introduce_master(self, domid: int, remote_port: int) -> Connection:
        """dom0's own ring at start-up (C's ``dom0_init``).

        Introduced like any domain (its kernel waits for the first kick
        before it probes xenbus), but without @introduceDomain.
        """
        hypervisor = self.domains.require_hypervisor()
        conn = self.connect_domain(domid)
        try:
            hypervisor.attach(conn, 0, remote_port, int(self.domain_features(domid)))
        except BaseException:
            self.disconnect(conn)
            raise
        self.domains.add(conn, DomainInfo(domid, 0, remote_port))
        log.info("dom%d's own ring introduced (port %d)", domid, remote_port)
        return conn

    def reintroduce(self, conn: Connection, gfn: int, port: int) -> None:
        """INTRODUCE of a domain already introduced: C's compatibility mode.

        The event channel is re-bound and the connection reset (watches,
        transactions and buffers dropped); the ring indices are left alone
        (MIGRATION.md a.6).
        """
        hypervisor = self.domains.require_hypervisor()
        info = self.domains.info(conn.domid)
        if hypervisor.is_quiesced(conn):
            # The rollback of a failed migration: carry on where it stopped,
            # with watches, transactions and queued output intact.
            hypervisor.resume(conn, port)
            info.gfn, info.remote_port = gfn, port
            return
        if port != info.remote_port:
            hypervisor.rebind(conn, port)
        info.gfn, info.remote_port = gfn, port
        self.reset_connection(conn)
        hypervisor.reset(conn)

    def destroy_domain(self, domid: int) -> None:
        """RELEASE or death: drop the connection, its nodes; fire @releaseDomain."""
        domains = self.domains
        conn = domains.remove(domid)
        # Watches first, so the domain is not told about its own clean-up.
        self.watches.remove_all(conn.id)
        if domains.hypervisor is not None:
            domains.hypervisor.detach(conn)
        self.disconnect(conn)
        self.fire(release_changes(self, domid))
        self.quotas.forget_domain(domid)
        domains.forget(domid)
        self.fire_special(RELEASE_DOMAIN)

    def check_domains(self) -> None:
        """VIRQ_DOM_EXC: look at every domain, as C's ``check_domains``.

        A domain dying or gone is cleaned up (each fires @releaseDomain); a
        domain first seen shut down or crashed is reported once with one
        @releaseDomain for the whole scan (again only after RESUME).
        """
        domains = self.domains
        hypervisor = domains.hypervisor
        if hypervisor is None:
            return
        shutdown = False
        for domid in domains.domids():
            state = hypervisor.domain_state(domid)
            if state is DomainState.SHUTDOWN:
                info = domains.info(domid)
                if not info.shutdown_reported:
                    info.shutdown_reported = shutdown = True
                    log.info("domain %d shut down", domid)
            elif state is not DomainState.RUNNING:
                log.info("domain %d is gone; cleaning up", domid)
                self.destroy_domain(domid)
        for domid in domains.staged_domids():
            if not hypervisor.domain_state(domid).exists:
                domains.take_staged(domid)
        self.fire(reap_unintroduced(self))
        if shutdown:
            self.fire_special(RELEASE_DOMAIN)

    def remove_subtree(self, path: str) -> None:
        """Remove a node and its subtree as the privileged domain."""
        tree.rm(self.store, _PRIVILEGED, path)

    def is_introduced(self, domid: int) -> bool:
        # C introduces the privileged domain itself at start-up (dom0_init),
        # so IS_DOMAIN_INTRODUCED answers T for it although it has no ring.
        return domid == self.priv_domid or domid in self.domains

    def domain_features(self, domid: int) -> ServerFeature:
        """The ``server_features`` word a domain is given."""
        return self.domains.features(domid, DEFAULT_DOMAIN_FEATURES)

    def usage(self, domid: int) -> dict[str, int]:
        """What a domain currently uses of each quota."""
        conns = [
            c for c in self.connections.values() if c.domid == domid and not c.is_socket
        ]
        return {
            "nodes": self.store.owned(domid),
            "watches": sum(self.watches.count(c.id) for c in conns),
            "transactions": sum(len(c.transactions) for c in conns),
            "memory": self.store.owned_bytes(domid)
            + sum(self.watches.bytes(c.id) for c in conns),
        }

    def report(self) -> dict[str, int]:
        """Sizes for CONTROL ``memreport``."""
        store = self.store
        value_bytes = path_bytes = 0
        for path, node in store.walk():
            value_bytes += len(node.value)
            path_bytes += len(path)
        return {
            "nodes": len(store),
            "value-bytes": value_bytes,
            "path-bytes": path_bytes,
            "watches": len(self.watches),
            "connections": len(self.connections),
            "transactions": sum(len(c.transactions) for c in self.connections.values()),
            "domains": len(self.domains),
        }

    def take_pending(self) -> Iterable[Connection]:
        """The connections with queued output, in the order they got it."""
        pending = self.pending
        if not pending:
            return ()
        self.pending = {}
        return pending.values()

    # -- dispatch ------------------------------------------------------------

    def handle(self, conn: Connection, packet: Packet) -> None:
        """Handle one request of ``conn``; replies and events are queued.

        Never raises.  A request either succeeds whole or changes nothing in
        the store: an :class:`~pyxenstored.errors.XsError` becomes the
        ERROR reply, and any other exception is a bug of ours, which must
        not cost the client its connection: it is logged once with the
        request, the store is put back as it was (:meth:`Store.rollback`),
        a transaction the request acted in is failed (its commit answers
        ENOMEM, as C's ``fail_transaction``), and the client gets EIO, as C
        answers its own internal failures.  A reply longer than
        ``PAYLOAD_MAX`` is answered E2BIG instead.  Some replies come later:
        QUIESCE's, ``live-update -s``'s, and those of a connection whose
        requests are parked while a live update waits (:meth:`_park`).
        """
        if self.live_update is not None and self._park(conn, packet):
            return
        store = self.store
        store.journal = []  # Store.begin(), inline: this runs for every request
        tx = None
        try:
            entry = HANDLERS.get(packet.op)
            if entry is None:
                raise NotSupported()
            func, flags = entry
            if flags & PRIV and not conn.privileged:
                raise PermissionDenied()
            if packet.tx_id and not flags & NOTID:
                tx = conn.transactions.get(packet.tx_id)
                if tx is None:
                    tx = self._doomed_transaction(conn, packet)
            payload = func(self, conn, packet, tx)
            if store.changes:
                changes = store.changes
                store.changes = []
                self.fire(changes)
        except XsError as error:
            store.rollback()
            store.changes.clear()
            self.reply_error(conn, packet, error.code)
            return
        except Exception:
            log.exception(
                "%s: internal error handling %s; answered EIO, nothing changed",
                conn.describe(),
                _describe(packet),
            )
            store.rollback()
            store.changes.clear()
            if tx is not None:
                tx.failed = True
            self.reply_error(conn, packet, InternalError.code)
            return
        store.journal = None  # Store.end()
        if payload is not None:
            if len(payload) > PAYLOAD_MAX:
                self.reply_error(conn, packet, TooBig.code)
                return
            # encode_packet, written out (its size check is the one above).
            conn.out.append(
                HEADER.pack(packet.op, packet.req_id, packet.tx_id, len(payload))
                + payload
            )
            self.pending[conn.id] = conn

    # -- live update -----------------------------------------------------------

    def _park(self, conn: Connection, packet: Packet) -> bool:
        """Hold back a new transaction while a live update waits (as C).

        A connection with a parked request has all its later ones parked
        too, so its requests are still handled in order.
        """
        if conn.parked is not None:
            conn.parked.append(packet)
            return True
        if packet.op == Op.TRANSACTION_START and not conn.transactions:
            conn.parked = [packet]
            return True
        return False

    def end_live_update(self) -> None:
        """The update is aborted or failed: handle the parked requests now."""
        self.live_update = None
        for conn in list(self.connections.values()):
            parked, conn.parked = conn.parked, None
            for packet in parked or ():
                if conn.closed:
                    break
                self.handle(conn, packet)

    def _doomed_transaction(self, conn: Connection, packet: Packet) -> Transaction:
        """An unknown transaction id of a migrated domain (MIGRATION.md c.11).

        The guest opened it on the source host.  It is re-created here
        as a transaction that acts normally but can only end in EAGAIN
        (or OK for an abort), which every client handles by redoing the
        transaction; its writes never become visible.

        Raises:
            NoEntry: not a restored domain, or over its transaction quota.
        """
        if not conn.restored or packet.op == Op.TRANSACTION_START:
            raise NoEntry("no such transaction")
        if not conn.privileged and self.quotas.would_exceed(
            conn.domid, "transactions", len(conn.transactions) + 1
        ):
            raise NoEntry("no such transaction")
        tx = Transaction(
            packet.tx_id, self.store, self.quotas, conn.domid, conn.privileged
        )
        tx.doomed = True
        conn.transactions[packet.tx_id] = tx
        log.info(
            "%s: transaction %d from before migration, doomed",
            conn.describe(),
            packet.tx_id,
        )
        return tx

    def add_watch(self, conn: Connection, wpath: str, token: str) -> None:
        """Register a watch for ``conn`` as if it had sent WATCH itself.

        Used by ADD_DOMAIN_WATCHES: the initial event goes to the domain.
        The watch quota is not enforced but the watch is counted.
        """
        path = paths.canonicalize(wpath, conn.home, allow_special=True)
        home = conn.home if wpath[0] not in "/@" else None
        self.watches.add(conn.id, path, token, wpath, home)
        self.queue_event(conn, wpath, token)

    def reply(self, conn: Connection, packet: Packet, payload: bytes) -> None:
        """Queue the success reply of a request (E2BIG if it cannot fit)."""
        if len(payload) > PAYLOAD_MAX:
            self.reply_error(conn, packet, TooBig.code)
            return
        conn.queue(encode_packet(packet.op, packet.req_id, packet.tx_id, payload))
        self.pending[conn.id] = conn

    def reply_error(self, conn: Connection, packet: Packet, code: str) -> None:
        """Queue an ERROR reply naming ``code`` (an :class:`XsError`'s ``code``)."""
        payload = code.encode() + b"\0"
        conn.queue(encode_packet(Op.ERROR, packet.req_id, packet.tx_id, payload))
        self.pending[conn.id] = conn

    # -- watch events ----------------------------------------------------------

    def fire(self, changes: Iterable[Change]) -> None:
        """Queue the watch events a list of changes causes."""
        connections = self.connections
        for change in changes:
            if not change.perms:
                continue
            matched = list(self.watches.matches(change.path, change.exact))
            if not matched:
                continue
            if len(matched) > 1:
                matched.sort(key=lambda w: w.seq)
            for watch in matched:
                conn = connections.get(watch.conn_id)
                if conn is None:
                    continue
                if not conn.privileged and not self._may_see(conn, change):
                    continue
                self.queue_event(conn, watch.event_path(change.path), watch.token)

    def fire_special(self, name: str) -> None:
        """Fire ``@introduceDomain`` or ``@releaseDomain``."""
        node = self.store.special[name]
        self.fire([Change(name, True, (node.perms,))])

    def _may_see(self, conn: Connection, change: Change) -> bool:
        """XSA-115: tell only callers that may read the node or its parent."""
        candidates: tuple[Perms, ...] = change.perms
        if change.parent and change.path not in SPECIAL_NODES:
            parent = self.store.get(parent_of(change.path))
            if parent is not None:
                candidates = (*candidates, parent.perms)
        return any(
            access_for(p, conn.domid, conn.target, False) & READ_BIT for p in candidates
        )

    def queue_event(self, conn: Connection, path: str, token: str) -> None:
        """Queue one WATCH_EVENT, dropping an identical one still queued."""
        payload = f"{path}\0{token}\0".encode(ENCODING)
        if len(payload) > PAYLOAD_MAX:
            log.warning(
                "%s: watch event for %s too large, dropped", conn.describe(), path
            )
            return
        if path[0] != "@":
            if payload in conn.queued_events:
                return
            conn.queued_events.add(payload)
        conn.queue(encode_packet(Op.WATCH_EVENT, 0, 0, payload))
        self.pending[conn.id] = conn
