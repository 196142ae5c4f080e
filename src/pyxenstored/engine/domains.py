"""Domain management: INTRODUCE, RELEASE, RESUME, SET_TARGET, domain death.

PROTOCOL.md section 8 and MIGRATION.md a.6.  The engine reaches the
hypervisor (ring pages, event channels, domain state) only through the
small :class:`Hypervisor` interface, which the daemon's shell implements
(emulated here; a real Xen backend would sit beside it).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from pyxenstored.errors import InvalidArgument, NoEntry, XsError
from pyxenstored.paths import INTRODUCE_DOMAIN, RELEASE_DOMAIN
from pyxenstored.perms import DOMID_FIRST_RESERVED, parse_domid
from pyxenstored.store.node import Change
from pyxenstored.wire.ops import ServerFeature
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import OK, parse_unsigned, split_args

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine
    from pyxenstored.store.transaction import Transaction

__all__ = [
    "DomainInfo",
    "DomainState",
    "Domains",
    "Hypervisor",
    "StagedWatches",
    "do_introduce",
    "do_release",
    "do_resume",
    "do_set_target",
    "domid_arg",
    "introduced_arg",
    "reap_unintroduced",
    "release_changes",
]

log = logging.getLogger(__name__)


class DomainState(Enum):
    RUNNING = "running"
    #: Shut down or crashed, not yet destroyed: it still exists, and
    #: watchers of @releaseDomain are told once (PROTOCOL.md 6.5).
    SHUTDOWN = "shutdown"
    #: Being destroyed: xenstore cleans up as if it were gone.
    DYING = "dying"
    GONE = "gone"

    @property
    def exists(self) -> bool:
        return self in (DomainState.RUNNING, DomainState.SHUTDOWN)


class Hypervisor(Protocol):
    """What the engine needs from the hypervisor (implemented by a shell)."""

    def domain_state(self, domid: int) -> DomainState: ...

    def attach(
        self, conn: Connection, gfn: int, remote_port: int, features: int
    ) -> None:
        """Map the domain's ring, bind its event channel, start serving it.

        Raises:
            NoEntry: the domain's ring page cannot be mapped.
        """

    def rebind(self, conn: Connection, remote_port: int) -> None:
        """Re-bind the event channel of an introduced domain."""

    def reset(self, conn: Connection) -> None:
        """Forget partial input and unsent output of a ring connection."""

    def detach(self, conn: Connection) -> None:
        """Stop serving the ring, unmap it and unbind the event channel."""

    def quiesce(self, conn: Connection, done: Callable[[bool], None]) -> None:
        """Drain and stop the ring (MIGRATION.md a.3); call ``done`` once.

        ``done(True)`` when drained and unmapped (at once if already
        quiesced), ``done(False)`` on timeout; the domain stays quiesced.
        """

    def is_quiesced(self, conn: Connection) -> bool: ...

    def resume(self, conn: Connection, remote_port: int) -> None:
        """Map the ring again and carry on serving it (MIGRATION.md a.6)."""


@dataclass(slots=True)
class DomainInfo:
    """What the engine remembers about an introduced domain."""

    domid: int
    gfn: int
    remote_port: int
    #: A shutdown was reported with @releaseDomain; reset by RESUME.
    shutdown_reported: bool = False


@dataclass(slots=True)
class StagedWatches:
    """Watches added for a domain not yet introduced (MIGRATION.md a.4)."""

    #: ``(path as registered, token)`` in registration order.
    watches: list[tuple[str, str]] = field(default_factory=list)
    #: Generation of this list (GET_DOMAIN_WATCHES works on staged lists).
    generation: int = 0


class Domains:
    """Every domain the daemon deals with: the one owner of their state.

    The introduced domains with their ring connections and what is known of
    them (:class:`DomainInfo`), watches staged for a domain not yet
    introduced (ADD_DOMAIN_WATCHES), feature words set before INTRODUCE
    (SET_FEATURE), and the hypervisor that maps rings and says whether a
    domain lives.  The request handlers and the engine change domain state
    only through these methods.
    """

    def __init__(self, priv_domid: int, hypervisor: Hypervisor | None = None) -> None:
        self.priv_domid = priv_domid
        #: The shell's access to rings and event channels (None: sockets only).
        self.hypervisor = hypervisor
        self._conns: dict[int, Connection] = {}
        self._info: dict[int, DomainInfo] = {}
        self._staged: dict[int, StagedWatches] = {}
        self._features: dict[int, ServerFeature] = {}

    # -- introduced domains ---------------------------------------------------

    def connection(self, domid: int) -> Connection | None:
        """The ring connection of an introduced domain."""
        return self._conns.get(domid)

    def __contains__(self, domid: object) -> bool:
        return domid in self._conns

    def __len__(self) -> int:
        return len(self._conns)

    def domids(self) -> list[int]:
        """The introduced domains, in introduction order."""
        return list(self._conns)

    def info(self, domid: int) -> DomainInfo:
        return self._info[domid]

    def add(self, conn: Connection, info: DomainInfo) -> None:
        self._conns[conn.domid] = conn
        self._info[conn.domid] = info

    def remove(self, domid: int) -> Connection:
        """Forget an introduced domain (RELEASE, death); its connection."""
        self._info.pop(domid, None)
        self._staged.pop(domid, None)
        return self._conns.pop(domid)

    # -- what the hypervisor says ---------------------------------------------

    def require_hypervisor(self) -> Hypervisor:
        if self.hypervisor is None:
            raise NoEntry("this daemon serves no domains (no hypervisor backend)")
        return self.hypervisor

    def state(self, domid: int) -> DomainState:
        return self.require_hypervisor().domain_state(domid)

    def exists(self, domid: int) -> bool:
        """Whether permissions may name the domain (SET_PERMS, quotas)."""
        if domid == self.priv_domid:
            return True
        if self.hypervisor is not None:
            # A dying domain is as good as gone: rights given to it now would
            # survive its clean-up and pass to the next domain with its domid.
            return self.hypervisor.domain_state(domid).exists
        return domid in self._conns

    # -- before INTRODUCE -----------------------------------------------------

    def staged(self, domid: int) -> StagedWatches | None:
        return self._staged.get(domid)

    def stage(self, domid: int) -> StagedWatches:
        """The staged watch list of a domain, made if needed."""
        return self._staged.setdefault(domid, StagedWatches())

    def take_staged(self, domid: int) -> StagedWatches | None:
        return self._staged.pop(domid, None)

    def staged_domids(self) -> list[int]:
        return list(self._staged)

    def set_features(self, domid: int, features: ServerFeature) -> None:
        self._features[domid] = features

    def features(self, domid: int, default: ServerFeature) -> ServerFeature:
        return self._features.get(domid, default)

    def featured_domids(self) -> list[int]:
        return list(self._features)

    def forget(self, domid: int) -> None:
        """Drop what was set for a domain that is gone."""
        self._features.pop(domid, None)
        self._staged.pop(domid, None)


def domid_arg(engine: Engine, text: str) -> int:
    """A domid that may be introduced/released: not the privileged domain."""
    domid = parse_domid(text)
    if domid == engine.priv_domid or domid >= DOMID_FIRST_RESERVED:
        raise InvalidArgument(f"domain {domid} cannot be managed")
    return domid


def do_introduce(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """INTRODUCE: attach a domain's ring; OK.  EINVAL, ENOENT, or the hypervisor's."""
    args = split_args(packet.payload)
    if len(args) < 3:
        raise InvalidArgument("INTRODUCE takes domid, gfn and event channel")
    domid = domid_arg(engine, args[0])
    gfn = parse_unsigned(args[1], "gfn")
    port = parse_unsigned(args[2], "event channel")
    if port == 0:
        raise InvalidArgument("event channel must be positive")
    domains = engine.domains
    hypervisor = domains.require_hypervisor()
    existing = domains.connection(domid)
    if existing is not None:
        engine.reintroduce(existing, gfn, port)
        return OK
    if not hypervisor.domain_state(domid).exists:
        raise NoEntry(f"domain {domid} does not exist")
    new = engine.connect_domain(domid)
    try:
        hypervisor.attach(new, gfn, port, int(engine.domain_features(domid)))
    except OSError as error:
        # The hypervisor refused (a grant, a binding): C answers its errno,
        # EINVAL when xenstore has no name for it.
        engine.disconnect(new)
        log.warning("INTRODUCE of domain %d failed: %s", domid, error)
        name = errno.errorcode.get(error.errno or 0, InvalidArgument.code)
        raise XsError.from_code(name, str(error)) from None
    except Exception:
        engine.disconnect(new)
        raise
    domains.add(new, DomainInfo(domid, gfn, port))
    log.info("introduced domain %d (gfn %d, port %d)", domid, gfn, port)
    engine.domain_introduced(new)
    engine.fire_special(INTRODUCE_DOMAIN)
    return OK


def introduced_arg(engine: Engine, packet: Packet, op: str) -> Connection:
    """The introduced domain named by the one argument of an ``op`` request.

    Raises:
        InvalidArgument: not one argument, or not a domid that may be managed.
        NoEntry: the domain is not introduced.
    """
    args = split_args(packet.payload)
    if len(args) != 1:
        raise InvalidArgument(f"{op} takes a domid")
    domid = domid_arg(engine, args[0])
    found = engine.domains.connection(domid)
    if found is None:
        raise NoEntry(f"domain {domid} not introduced")
    return found


def do_release(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """RELEASE: forget a domain, its connection and nodes; OK.  EINVAL, ENOENT."""
    engine.destroy_domain(introduced_arg(engine, packet, "RELEASE").domid)
    return OK


def do_resume(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """RESUME: clear the domain's shutdown-reported flag; OK.  EINVAL, ENOENT."""
    domid = introduced_arg(engine, packet, "RESUME").domid
    engine.domains.info(domid).shutdown_reported = False
    return OK


def do_set_target(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """SET_TARGET: let a domain act as another; OK.  EINVAL, ENOENT."""
    args = split_args(packet.payload)
    if len(args) != 2:
        raise InvalidArgument("SET_TARGET takes domid and target domid")
    domid = parse_domid(args[0])
    target = parse_domid(args[1])
    acting = engine.domains.connection(domid)
    if acting is None or target not in engine.domains:
        raise NoEntry("both domains must be introduced")
    if acting.closed:
        raise InvalidArgument("domain has no live connection")
    acting.target = target
    return OK


def release_changes(engine: Engine, domid: int) -> list[Change]:
    """Remove what a dead domain leaves behind (PROTOCOL.md 8.2 step 3).

    Every node the domain owns goes with its whole subtree; every other
    node loses the permission entries naming the domain (4.22), so a
    domain created later with the same domid inherits nothing.
    """
    store = engine.store
    owned = [p for p, n in store.walk() if n.perms[0].domid == domid]
    # Shallow paths first; one already removed with an ancestor is skipped.
    owned.sort(key=lambda p: p.count("/"))
    for path in owned:
        if path != "/" and store.get(path) is not None:
            engine.remove_subtree(path)
    for path, node in store.walk():
        if any(p.domid == domid for p in node.perms[1:]):
            old = node.perms
            store.changing(node)
            node.perms = (old[0], *(p for p in old[1:] if p.domid != domid))
            store.touched(path, node)
            store.record(Change(path, False, (node.perms, old)))
    for special in (INTRODUCE_DOMAIN, RELEASE_DOMAIN):
        node = store.special[special]
        store.changing(node)
        node.perms = (node.perms[0], *(p for p in node.perms[1:] if p.domid != domid))
    for conn in engine.connections.values():
        # A transaction still holding nodes that name the domain would put
        # them back at commit, for the next domain with this domid.
        for tx in conn.transactions.values():
            tx.domain_gone(domid)
        # A stub domain must not keep owner rights over whichever domain
        # is next given its target's domid.
        if conn.target == domid:
            conn.target = None
    changes = store.changes
    store.changes = []
    return changes


def reap_unintroduced(engine: Engine) -> list[Change]:
    """Forget dead domains that were named but never introduced.

    A toolstack writes a domain's nodes (owned by it, or granting it
    access) and may set its quotas and features before INTRODUCE; if the
    domain dies first, nothing of that may pass to the next domain given
    the same domid (XSA-322/417, PROTOCOL.md 8.2, last paragraph).  Called
    on VIRQ_DOM_EXC next to the clean-up of introduced domains.  Stale
    entries are not looked at: they grant nothing already.
    """
    domains = engine.domains
    hypervisor = domains.hypervisor
    if hypervisor is None:
        return []
    store = engine.store
    named = {
        p.domid
        for node in (*(n for _, n in store.walk()), *store.special.values())
        for p in node.perms
        if not p.stale
    }
    named.update(engine.quotas.per_domain, domains.featured_domids())
    named.difference_update(domains.domids())
    named.discard(engine.priv_domid)
    changes: list[Change] = []
    for domid in sorted(named):
        if hypervisor.domain_state(domid).exists:
            continue
        log.info("domain %d died before it was introduced; cleaning up", domid)
        changes += release_changes(engine, domid)
        engine.quotas.forget_domain(domid)
        domains.forget(domid)
    return changes
