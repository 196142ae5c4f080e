"""GET/SET_FEATURE and GET/SET_QUOTA (PROTOCOL.md 8.3, RING.md 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxenstored.errors import Busy, InvalidArgument, NoEntry, PermissionDenied
from pyxenstored.perms import parse_domid
from pyxenstored.store.quota import QUOTA_NAMES, field_for
from pyxenstored.wire.ops import ServerFeature
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import OK, join_args, parse_unsigned, split_args

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine
    from pyxenstored.store.transaction import Transaction

__all__ = [
    "DEFAULT_DOMAIN_FEATURES",
    "SUPPORTED",
    "do_get_feature",
    "do_get_quota",
    "do_set_feature",
    "do_set_quota",
    "watch_depth",
]

#: Everything this daemon implements.
SUPPORTED = ServerFeature.RECONNECTION | ServerFeature.ERROR | ServerFeature.WATCHDEPTH
#: What a guest gets unless the toolstack says otherwise.  Watch depth is
#: left out: the seed migration format cannot carry a depth (MIGRATION.md
#: c.7), so a guest only gets it when its toolstack asks with SET_FEATURE.
DEFAULT_DOMAIN_FEATURES = ServerFeature.RECONNECTION | ServerFeature.ERROR

_UINT32_MAX = 0xFFFFFFFF


def watch_depth(engine: Engine, conn: Connection) -> bool:
    """Whether WATCH may carry a depth on this connection."""
    if conn.is_socket:
        return True
    return bool(engine.domain_features(conn.domid) & ServerFeature.WATCHDEPTH)


def do_get_feature(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """GET_FEATURE: the connection's or a domain's features.  EINVAL, EACCES, ENOENT."""
    args = split_args(packet.payload) if packet.payload not in (b"", b"\0") else []
    if not args:
        if conn.is_socket:
            return join_args(str(int(SUPPORTED)))
        return join_args(str(int(engine.domain_features(conn.domid))))
    if len(args) > 1:
        raise InvalidArgument("GET_FEATURE takes at most a domid")
    if not conn.privileged:
        raise PermissionDenied()
    domid = parse_domid(args[0])
    if not engine.domains.exists(domid):
        raise NoEntry("no such domain")
    return join_args(str(int(engine.domain_features(domid))))


def do_set_feature(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """SET_FEATURE: a domain's features at INTRODUCE; OK.  EINVAL, ENOENT, EBUSY."""
    args = split_args(packet.payload)
    if len(args) != 2:
        raise InvalidArgument("SET_FEATURE takes a domid and a value")
    domid = parse_domid(args[0])
    value = parse_unsigned(args[1], "feature value")
    if value & ~int(SUPPORTED):
        raise InvalidArgument("unsupported feature bits")
    if not engine.domains.exists(domid):
        raise NoEntry("no such domain")
    if engine.is_introduced(domid):
        raise Busy("domain already introduced")
    engine.domains.set_features(domid, ServerFeature(value))
    return OK


def do_get_quota(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """GET_QUOTA: the quota names, a default or a domain's value.  EINVAL, ENOENT."""
    args = split_args(packet.payload) if packet.payload not in (b"", b"\0") else []
    if not args:
        return join_args(" ".join(QUOTA_NAMES))
    if len(args) == 1:
        return join_args(str(getattr(engine.quotas.defaults, field_for(args[0]))))
    if len(args) == 2:
        domid = parse_domid(args[0])
        if not engine.domains.exists(domid):
            raise NoEntry("no such domain")
        limits = engine.quotas.for_domain(domid)
        return join_args(str(getattr(limits, field_for(args[1]))))
    raise InvalidArgument("GET_QUOTA takes at most a domid and a name")


def do_set_quota(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """SET_QUOTA: set a default or a domain's value; OK.  EINVAL, ENOENT."""
    args = split_args(packet.payload)
    if len(args) not in (2, 3):
        raise InvalidArgument("SET_QUOTA takes [domid] name value")
    value = parse_unsigned(args[-1], "quota value")
    if value >= _UINT32_MAX:
        raise InvalidArgument("quota value out of range")
    field_for(args[-2])
    if len(args) == 2:
        engine.quotas.set_default(args[0], value)
    else:
        domid = parse_domid(args[0])
        if not engine.domains.exists(domid):
            raise NoEntry("no such domain")
        engine.quotas.set_domain(domid, args[1], value)
    return OK
