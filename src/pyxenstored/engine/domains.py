"""Domain management: INTRODUCE, RELEASE, RESUME, SET_TARGET, domain death.

PROTOCOL.md section 8 and MIGRATION.md a.6.  The engine reaches the
hypervisor (ring pages, event channels, domain state) only through the
small :class:`Hypervisor` interface, which the daemon's shell implements
(emulated here; a real Xen backend would sit beside it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from pyxenstored.errors import InvalidArgument, NoEntry
from pyxenstored.paths import INTRODUCE_DOMAIN, RELEASE_DOMAIN
from pyxenstored.perms import DOMID_FIRST_RESERVED, parse_domid
from pyxenstored.store.node import Change
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import split_args

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine
    from pyxenstored.store.transaction import Transaction

__all__ = [
    "DomainInfo",
    "DomainState",
    "Hypervisor",
    "do_introduce",
    "do_release",
    "do_resume",
    "do_set_target",
    "domid_arg",
    "reap_unintroduced",
    "release_changes",
]

log = logging.getLogger(__name__)


class DomainState(Enum):
    RUNNING = "running"
    #: Being destroyed: xenstore cleans up as if it were gone.
    DYING = "dying"
    GONE = "gone"


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


def domid_arg(engine: Engine, text: str) -> int:
    """A domid that may be introduced/released: not the privileged domain."""
    domid = parse_domid(text)
    if domid == engine.priv_domid or domid >= DOMID_FIRST_RESERVED:
        raise InvalidArgument(f"domain {domid} cannot be managed")
    return domid


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(f"bad number {text!r}")
    return int(text)


def do_introduce(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    args = split_args(packet.payload)
    if len(args) < 3:
        raise InvalidArgument("INTRODUCE takes domid, gfn and event channel")
    domid = domid_arg(engine, args[0])
    gfn = _number(args[1])
    port = _number(args[2])
    if port == 0:
        raise InvalidArgument("event channel must be positive")
    hypervisor = engine.require_hypervisor()
    existing = engine.introduced.get(domid)
    if existing is not None:
        engine.reintroduce(existing, gfn, port)
        return b"OK\0"
    if hypervisor.domain_state(domid) is not DomainState.RUNNING:
        raise NoEntry(f"domain {domid} does not exist")
    new = engine.connect_domain(domid)
    try:
        hypervisor.attach(new, gfn, port, int(engine.domain_features(domid)))
    except Exception:
        engine.disconnect(new)
        raise
    engine.introduced[domid] = new
    engine.domain_info[domid] = DomainInfo(domid, gfn, port)
    log.info("introduced domain %d (gfn %d, port %d)", domid, gfn, port)
    engine.domain_introduced(new)
    engine.fire_special(INTRODUCE_DOMAIN)
    return b"OK\0"


def _introduced(engine: Engine, text: str) -> Connection:
    domid = domid_arg(engine, text)
    found = engine.introduced.get(domid)
    if found is None:
        raise NoEntry(f"domain {domid} not introduced")
    return found


def do_release(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    args = split_args(packet.payload)
    if len(args) != 1:
        raise InvalidArgument("RELEASE takes a domid")
    engine.destroy_domain(_introduced(engine, args[0]).domid)
    return b"OK\0"


def do_resume(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    args = split_args(packet.payload)
    if len(args) != 1:
        raise InvalidArgument("RESUME takes a domid")
    domid = _introduced(engine, args[0]).domid
    engine.domain_info[domid].shutdown_reported = False
    return b"OK\0"


def do_set_target(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    args = split_args(packet.payload)
    if len(args) != 2:
        raise InvalidArgument("SET_TARGET takes domid and target domid")
    domid = parse_domid(args[0])
    target = parse_domid(args[1])
    acting = engine.introduced.get(domid)
    if acting is None or target not in engine.introduced:
        raise NoEntry("both domains must be introduced")
    if acting.closed:
        raise InvalidArgument("domain has no live connection")
    acting.target = target
    return b"OK\0"


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
            node.perms = (old[0], *(p for p in old[1:] if p.domid != domid))
            store.touched(path, node)
            store.record(Change(path, False, (node.perms, old)))
    for special in (INTRODUCE_DOMAIN, RELEASE_DOMAIN):
        node = store.special[special]
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
    hypervisor = engine.hypervisor
    if hypervisor is None:
        return []
    store = engine.store
    named = {
        p.domid
        for node in (*(n for _, n in store.walk()), *store.special.values())
        for p in node.perms
        if not p.stale
    }
    named.update(engine.quotas.per_domain, engine.feature_overrides)
    named.difference_update(engine.introduced)
    named.discard(engine.priv_domid)
    changes: list[Change] = []
    for domid in sorted(named):
        if hypervisor.domain_state(domid) is DomainState.RUNNING:
            continue
        log.info("domain %d died before it was introduced; cleaning up", domid)
        changes += release_changes(engine, domid)
        engine.quotas.forget_domain(domid)
        engine.feature_overrides.pop(domid, None)
    return changes
