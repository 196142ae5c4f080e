"""A full recount of the engine's state, for CONTROL ``check`` and tests.

Every incremental account the daemon keeps (node counts per owner, the
child links, the watch indexes) is recomputed from scratch and
compared; any difference is a bug and is reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyxenstored.store.node import NO_CHILDREN, node_bytes
from pyxenstored.watches import watch_bytes

if TYPE_CHECKING:
    from pyxenstored.engine.engine import Engine

__all__ = ["audit"]


def audit(engine: Engine) -> list[str]:
    """Return a description of every inconsistency found (empty if none)."""
    problems: list[str] = []
    if NO_CHILDREN:
        problems.append(f"the shared empty child list was modified: {NO_CHILDREN}")
    store = engine.store
    counts: dict[int, int] = {}
    charged: dict[int, int] = {}
    seen: set[int] = set()
    for path, node in store.walk():
        if id(node) in seen:
            problems.append(f"{path} is linked in two places")
        seen.add(id(node))
        owner = node.perms[0].domid
        counts[owner] = counts.get(owner, 0) + 1
        cost = node_bytes(path, node)
        charged[owner] = charged.get(owner, 0) + cost
        if node.acct != cost:
            problems.append(f"{path} is charged {node.acct} bytes, costs {cost}")
        for name, child in node.children.items():
            if child is None:
                problems.append(f"{path} lists missing child {name}")
    if len(seen) != len(store):
        problems.append(f"the tree holds {len(seen)} nodes, counted {len(store)}")
    if counts != engine.store.owner_counts:
        problems.append(
            f"owner counts {engine.store.owner_counts} differ from recount {counts}"
        )
    if charged != engine.store.owner_bytes:
        problems.append(
            f"memory accounts {engine.store.owner_bytes} differ from recount {charged}"
        )
    for conn_id, mine in engine.watches.by_conn().items():
        cost = sum(watch_bytes(w.wpath, w.token) for w in mine.values())
        if cost != engine.watches.bytes(conn_id):
            problems.append(
                f"watches of connection {conn_id} charged "
                f"{engine.watches.bytes(conn_id)} bytes, cost {cost}"
            )
    for conn_id in list(engine.watches.by_conn()):
        if conn_id not in engine.connections:
            problems.append(f"watches left for closed connection {conn_id}")
    indexed = sum(len(w) for w in engine.watches.by_path().values())
    if indexed != len(engine.watches):
        problems.append(f"watch index holds {indexed}, table {len(engine.watches)}")
    return problems
