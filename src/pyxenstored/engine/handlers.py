"""The request handlers, one function per message type.

Each handler takes ``(engine, conn, packet, tx)`` and returns the success
payload, or ``None`` when it queued its reply itself; it raises an
``XsError`` to fail.  :data:`HANDLERS` maps each type to its handler and
the dispatch flags of C's ``wire_funcs`` table.

Each handler's docstring says what it answers and which errors it raises,
by their xenstore names.  EINVAL always includes a malformed payload or
path (and the ``path-max`` quota); ENOSPC in a transaction includes its
``transaction-nodes`` quota.  The dispatch errors (ENOSYS, EACCES for a
privileged type, ENOENT for an unknown transaction) are
:meth:`Engine.handle`'s, and so is E2BIG for a reply that does not fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxenstored import paths
from pyxenstored.engine import control, domains, features, seed
from pyxenstored.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    NoEntry,
    NoSpace,
    OutOfMemory,
    PermissionDenied,
    TooBig,
    TransactionConflict,
)
from pyxenstored.perms import (
    DOMID_SELF,
    OWNER_BIT,
    READ_BIT,
    WRITE_BIT,
    Perms,
    access_for,
    format_perms,
    parse_domid,
    parse_perms,
)
from pyxenstored.store import tree
from pyxenstored.store.node import Node
from pyxenstored.store.quota import QuotaRule
from pyxenstored.store.transaction import Transaction
from pyxenstored.watches import watch_bytes
from pyxenstored.wire.ops import PAYLOAD_MAX, Op
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import (
    ENCODING,
    OK,
    join_args,
    one_arg,
    parse_unsigned,
    split_args,
    split_value,
)

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine

__all__ = ["HANDLERS", "NOTID", "PRIV"]

#: The handler ignores ``tx_id`` (WATCH, UNWATCH).
NOTID = 1
#: Privileged callers only.
PRIV = 2

Handler = Callable[
    ["Engine", "Connection", Packet, "Transaction | None"], "bytes | None"
]


def canonical(
    engine: Engine, conn: Connection, text: str, *, allow_special: bool = False
) -> str:
    """Canonicalise a path and apply the ``path-max`` quota (PROTOCOL.md 4)."""
    path = paths.canonicalize(text, conn.home, allow_special=allow_special)
    if not conn.privileged and path[0] == "/":
        length = paths.measured_length(path)
        if engine.quotas.would_exceed(conn.domid, "path_max", length):
            raise InvalidArgument("path too long")
    return path


# -- nodes -----------------------------------------------------------------


def do_read(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """READ: the node's value.  ENOENT, EACCES, EINVAL, ENOSPC."""
    path = canonical(engine, conn, one_arg(packet.payload))
    return tree.lookup(engine.store if tx is None else tx, conn, path).value


def do_write(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """WRITE: set the value, creating nodes; OK.  EACCES, EINVAL, ENOSPC, ENOMEM."""
    text, value = split_value(packet.payload)
    path = canonical(engine, conn, text)
    tree.write(engine.store if tx is None else tx, conn, path, value, engine.quotas)
    return OK


def do_mkdir(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """MKDIR: create the node if missing; OK.  EACCES, EINVAL, ENOSPC, ENOMEM."""
    path = canonical(engine, conn, one_arg(packet.payload))
    tree.mkdir(engine.store if tx is None else tx, conn, path, engine.quotas)
    return OK


def do_rm(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """RM: remove the node and its subtree; OK.  ENOENT, EACCES, EINVAL, EIO, ENOSPC."""
    path = canonical(engine, conn, one_arg(packet.payload))
    tree.rm(engine.store if tx is None else tx, conn, path)
    return OK


def do_directory(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """DIRECTORY: the children's names.  ENOENT, EACCES, EINVAL, ENOSPC."""
    path = canonical(engine, conn, one_arg(packet.payload))
    node = tree.lookup(engine.store if tx is None else tx, conn, path)
    return _listing(node, cache=tx is None)


def _listing(node: Node, *, cache: bool) -> bytes:
    """``child\0`` for every child, kept while the node is unchanged.

    Only committed nodes are cached: their generation changes with every
    modification, so it tells when the listing is stale.  A transaction's
    private copy keeps the committed generation while it changes, so it is
    never cached.
    """
    if cache and node.listing is not None and node.listing[0] == node.generation:
        return node.listing[1]
    if cache:
        listing = "".join(f"{name}\0" for name in node.children).encode(ENCODING)
        node.listing = (node.generation, listing)
        return listing
    # A transaction's copy may list a name twice, the second time as
    # ``name\0n`` (Transaction.link): listed as it is named.
    return "".join(f"{name.split(chr(0))[0]}\0" for name in node.children).encode(
        ENCODING
    )


def do_directory_part(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """DIRECTORY_PART: a part of the listing.  ENOENT, EACCES, EINVAL, E2BIG, ENOSPC."""
    args = split_args(packet.payload)
    if len(args) != 2:
        raise InvalidArgument("DIRECTORY_PART takes a path and an offset")
    path = canonical(engine, conn, args[0])
    offset = parse_unsigned(args[1], "offset")
    node = tree.lookup(engine.store if tx is None else tx, conn, path)
    listing = _listing(node, cache=tx is None)
    head = f"{node.generation}\0".encode()
    if offset >= len(listing):
        return head + b"\0"
    room = PAYLOAD_MAX - len(head)
    rest = listing[offset:]
    if len(rest) + 1 <= room:
        return head + rest + b"\0"
    # Whole entries only: cut after the last NUL that fits.
    cut = rest.rfind(b"\0", 0, room) + 1
    if cut == 0:
        raise TooBig("child name too long for one part")
    return head + rest[:cut]


def do_get_perms(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """GET_PERMS: the permissions, owner first.  ENOENT, EACCES, EINVAL, ENOSPC."""
    path = canonical(engine, conn, one_arg(packet.payload), allow_special=True)
    if path[0] == "@":
        perms = _special(engine, conn, path, READ_BIT).perms
    else:
        perms = tree.lookup(engine.store if tx is None else tx, conn, path).perms
    return join_args(*format_perms(perms))


def do_set_perms(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """SET_PERMS: set the ACL; OK.  ENOENT, EACCES, EPERM, EINVAL, ENOSPC, ENOMEM."""
    args = split_args(packet.payload)
    if len(args) < 2:
        raise InvalidArgument("SET_PERMS needs a path and at least one permission")
    if not conn.privileged and engine.quotas.would_exceed(
        conn.domid, "node_permissions", len(args) - 1
    ):
        raise NoSpace("too many permissions")
    perms = _mark_stale(engine, parse_perms(args[1:]))
    if perms[0].stale:
        # C refuses an owner that does not exist before it even looks at the
        # path (both 4.17 and 4.22), so this comes before EINVAL for a bad
        # path and before EACCES.
        raise NoEntry("the new owner does not exist")
    path = canonical(engine, conn, args[0], allow_special=True)
    if path[0] == "@":
        node = _special(engine, conn, path, WRITE_BIT | OWNER_BIT)
        engine.store.changing(node)
        node.perms = perms
        return OK
    tree.set_perms(engine.store if tx is None else tx, conn, path, perms, engine.quotas)
    return OK


def _mark_stale(engine: Engine, perms: Perms) -> Perms:
    """Mark entries naming domains that do not exist (XSA-322)."""
    return tuple(
        p if engine.domains.exists(p.domid) else p._replace(stale=True) for p in perms
    )


def _special(engine: Engine, conn: Connection, path: str, want: int) -> Node:
    node = engine.store.special.get(path)
    if node is None:
        # Only the two special nodes have permissions; C 4.17 calls any
        # other '@' name invalid (set_perms_special).
        raise InvalidArgument(f"no special node {path!r}")
    granted = access_for(node.perms, conn.domid, conn.target, conn.privileged)
    if granted & want != want:
        raise PermissionDenied()
    return node


# -- watches ---------------------------------------------------------------


def do_watch(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> None:
    """WATCH: queues OK, then the first event.  EEXIST, EINVAL, E2BIG/ENOSPC, ENOMEM."""
    args = split_args(packet.payload)
    depth: int | None = None
    if len(args) == 3 and features.watch_depth(engine, conn):
        depth = parse_unsigned(args[2], "depth")
    elif len(args) != 2:
        raise InvalidArgument("WATCH takes a path and a token")
    wpath, token = args[0], args[1]
    path = canonical(engine, conn, wpath, allow_special=True)
    if engine.watches.find(conn.id, path, token) is not None:
        raise AlreadyExists()
    if not conn.privileged:
        quotas = engine.quotas
        if quotas.would_exceed(
            conn.domid, "watches", engine.watches.count(conn.id) + 1
        ):
            if quotas.rule is QuotaRule.AT_MOST_N:
                raise TooBig("watch quota reached")
            raise NoSpace("watch quota reached")
        used = engine.store.owned_bytes(conn.domid) + conn.watch_bytes
        if quotas.would_exceed(conn.domid, "memory", used + watch_bytes(wpath, token)):
            raise OutOfMemory("memory quota reached")
    home = conn.home if wpath[0] not in "/@" else None
    engine.watches.add(conn.id, path, token, wpath, home, depth)
    engine.reply(conn, packet, OK)
    engine.queue_event(conn, wpath, token)
    return None


def do_unwatch(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """UNWATCH: remove the watch with this path and token; OK.  ENOENT, EINVAL."""
    args = split_args(packet.payload)
    if len(args) != 2:
        raise InvalidArgument("UNWATCH takes a path and a token")
    try:
        path = canonical(engine, conn, args[0], allow_special=True)
    except InvalidArgument:
        # No watch has an invalid path (WATCH refuses them): C 4.17 looks
        # for one anyway and answers ENOENT.
        raise NoEntry("no such watch") from None
    engine.watches.remove(conn.id, path, args[1])
    return OK


def do_reset_watches(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """RESET_WATCHES: drop the connection's watches and transactions; OK."""
    engine.watches.remove_all(conn.id)
    conn.transactions.clear()
    return OK


# -- transactions ----------------------------------------------------------


def do_transaction_start(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """TRANSACTION_START: the new transaction's id.  EBUSY, ENOSPC."""
    if tx is not None:
        raise Busy("transactions do not nest")
    if not conn.privileged and engine.quotas.would_exceed(
        conn.domid, "transactions", len(conn.transactions) + 1
    ):
        raise NoSpace("transaction quota reached")
    tx_id = conn.next_tx_id
    while tx_id == 0 or tx_id in conn.transactions:
        tx_id = (tx_id + 1) & 0xFFFFFFFF
    conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
    tx = Transaction(tx_id, engine.store, engine.quotas, conn.domid, conn.privileged)
    tx.started = engine.clock()
    conn.transactions[tx_id] = tx
    return f"{tx_id}\0".encode()


def do_transaction_end(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """TRANSACTION_END: commit or abort; OK.  EINVAL, ENOENT, EAGAIN, ENOMEM, ENOSPC."""
    arg = one_arg(packet.payload)
    if arg not in ("T", "F"):
        raise InvalidArgument("TRANSACTION_END takes T or F")
    if tx is None:
        raise NoEntry("no transaction")
    del conn.transactions[tx.id]
    if arg == "T":
        if tx.doomed:
            raise TransactionConflict("transaction opened before migration")
        engine.fire(tx.commit())
    return OK


# -- domains (the parts that need no hypervisor) ---------------------------


def do_get_domain_path(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """GET_DOMAIN_PATH: ``/local/domain/<domid>``.  EINVAL."""
    domid = parse_domid(one_arg(packet.payload))
    return join_args(paths.domain_home(domid))


def do_is_domain_introduced(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    """IS_DOMAIN_INTRODUCED: ``T`` or ``F``.  EINVAL."""
    domid = parse_domid(one_arg(packet.payload))
    if domid == DOMID_SELF:
        return b"T\0"
    return b"T\0" if engine.is_introduced(domid) else b"F\0"


HANDLERS: dict[int, tuple[Handler, int]] = {
    Op.CONTROL: (control.do_control, PRIV),
    Op.DIRECTORY: (do_directory, 0),
    Op.READ: (do_read, 0),
    Op.GET_PERMS: (do_get_perms, 0),
    Op.WATCH: (do_watch, NOTID),
    Op.UNWATCH: (do_unwatch, NOTID),
    Op.TRANSACTION_START: (do_transaction_start, 0),
    Op.TRANSACTION_END: (do_transaction_end, 0),
    Op.INTRODUCE: (domains.do_introduce, PRIV),
    Op.RELEASE: (domains.do_release, PRIV),
    Op.GET_DOMAIN_PATH: (do_get_domain_path, 0),
    Op.WRITE: (do_write, 0),
    Op.MKDIR: (do_mkdir, 0),
    Op.RM: (do_rm, 0),
    Op.SET_PERMS: (do_set_perms, 0),
    Op.IS_DOMAIN_INTRODUCED: (do_is_domain_introduced, PRIV),
    Op.RESUME: (domains.do_resume, PRIV),
    Op.SET_TARGET: (domains.do_set_target, PRIV),
    Op.RESET_WATCHES: (do_reset_watches, 0),
    Op.DIRECTORY_PART: (do_directory_part, 0),
    Op.GET_FEATURE: (features.do_get_feature, 0),
    Op.SET_FEATURE: (features.do_set_feature, PRIV),
    Op.GET_QUOTA: (features.do_get_quota, PRIV),
    Op.SET_QUOTA: (features.do_set_quota, PRIV),
    Op.QUIESCE: (seed.do_quiesce, PRIV),
    Op.ADD_DOMAIN_WATCHES: (seed.do_add_domain_watches, PRIV),
    Op.GET_DOMAIN_WATCHES: (seed.do_get_domain_watches, PRIV),
}
