"""The seed migration operations: QUIESCE, ADD_ and GET_DOMAIN_WATCHES.

MIGRATION.md a.3 to a.6 with the decisions of part c.  Numbers 27, 28,
29 are this project's choice (PROTOCOL.md section 2).  All three are for
the privileged toolstack only and take no transaction.

* QUIESCE finishes the request the domain has half sent, flushes its
  output, then stops taking requests from its ring and unmaps the page;
  the reply is deferred until then (``EBUSY`` after a timeout).
* ADD_DOMAIN_WATCHES registers watches on behalf of a domain, atomically,
  each firing its initial event to the domain, as if it had sent WATCH.
  Before INTRODUCE they are staged, and the domain is marked "restored"
  (its unknown transaction ids then become doomed transactions, c.11).
* GET_DOMAIN_WATCHES reads a domain's watch list in pages, by watch index,
  with a generation count that changes whenever the list changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxenstored.engine.domains import StagedWatches, domid_arg, introduced_arg
from pyxenstored.errors import AlreadyExists, Busy, InvalidArgument, NoEntry, TooBig
from pyxenstored.paths import canonicalize, domain_home
from pyxenstored.wire.ops import PAYLOAD_MAX
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import ENCODING, OK, parse_unsigned, split_args

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine
    from pyxenstored.store.transaction import Transaction

__all__ = [
    "StagedWatches",
    "do_add_domain_watches",
    "do_get_domain_watches",
    "do_quiesce",
]


def _no_transaction(packet: Packet) -> None:
    if packet.tx_id:
        raise InvalidArgument("seed migration operations take no transaction")


def do_quiesce(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes | None:
    """QUIESCE: OK (queued later) once drained, EBUSY if not.  EINVAL, ENOENT."""
    _no_transaction(packet)
    target = introduced_arg(engine, packet, "QUIESCE")
    hypervisor = engine.domains.require_hypervisor()

    def done(ok: bool) -> None:
        # The toolstack may have gone while the domain drained.
        if conn.closed:
            return
        if ok:
            engine.reply(conn, packet, OK)
        else:
            engine.reply_error(conn, packet, Busy.code)

    hypervisor.quiesce(target, done)
    return None


def _watch_pairs(args: list[str]) -> list[tuple[str, str]]:
    if len(args) % 2:
        raise InvalidArgument("watches come as path and token pairs")
    return [(args[i], args[i + 1]) for i in range(0, len(args), 2)]


def do_add_domain_watches(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """ADD_DOMAIN_WATCHES: watches for a domain; OK.  EINVAL, ENOENT, EEXIST."""
    _no_transaction(packet)
    args = split_args(packet.payload)
    if not args:
        raise InvalidArgument("ADD_DOMAIN_WATCHES takes a domid")
    domid = domid_arg(engine, args[0])
    pairs = _watch_pairs(args[1:])
    domains = engine.domains
    target = domains.connection(domid)
    if target is None and not domains.state(domid).exists:
        raise NoEntry(f"domain {domid} does not exist")
    if target is not None and not pairs:
        raise InvalidArgument("no watches given for an introduced domain")
    # Validate everything first: on any error nothing is added.
    home = domain_home(domid)
    seen: set[tuple[str, str]] = set()
    if target is not None:
        seen = {(w.path, w.token) for w in engine.watches.of(target.id)}
    else:
        staged = domains.staged(domid)
        if staged is not None:
            seen = {
                (canonicalize(p, home, allow_special=True), t)
                for p, t in staged.watches
            }
    for wpath, token in pairs:
        key = (canonicalize(wpath, home, allow_special=True), token)
        if key in seen:
            raise AlreadyExists(f"domain {domid} already watches {wpath!r} ({token!r})")
        seen.add(key)
    if target is not None:
        for wpath, token in pairs:
            engine.add_watch(target, wpath, token)
        return OK
    staged = domains.stage(domid)
    staged.watches.extend(pairs)
    staged.generation = engine.watches.bump()
    return OK


def do_get_domain_watches(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """GET_DOMAIN_WATCHES: a page of a domain's watches.  EINVAL, ENOENT, E2BIG."""
    _no_transaction(packet)
    args = split_args(packet.payload)
    if len(args) != 2:
        raise InvalidArgument("GET_DOMAIN_WATCHES takes a domid and an index")
    domid = domid_arg(engine, args[0])
    index = parse_unsigned(args[1], "index")
    target = engine.domains.connection(domid)
    if target is not None:
        watches = engine.watches.of(target.id)
        if any(w.depth is not None for w in watches):
            # The seed format has no place for a depth (MIGRATION.md c.7):
            # refuse rather than silently widen the watches.
            raise InvalidArgument("domain has depth-limited watches")
        pairs = [(w.wpath, w.token) for w in watches]
        generation = engine.watches.generation(target.id)
    elif (staged := engine.domains.staged(domid)) is not None:
        pairs = staged.watches
        generation = staged.generation
    else:
        raise NoEntry(f"domain {domid} not introduced")
    out = bytearray(f"{generation}\0".encode())
    for number, (wpath, token) in enumerate(pairs[index:]):
        entry = f"{wpath}\0{token}\0".encode(ENCODING)
        if len(out) + len(entry) > PAYLOAD_MAX:
            if number == 0:
                # An empty page would look like the end of the list.
                raise TooBig("one watch does not fit next to the generation")
            break
        out += entry
    return bytes(out)
