"""The committed tree as its own index: links stay right through commits.

The store keeps no path -> node table; each node maps its children's
names to the children and lookups walk from the root.  A transaction's
private copies carry only a snapshot of those links, so every commit must
re-link them to the committed nodes.  These cases check the commits whose
order matters (parents and children both replaced, subtrees removed and
re-created, nodes other connections changed meanwhile), each against a
walk of the whole tree and the engine-independent recount.
"""

from __future__ import annotations

import pytest

from pyxenstored.errors import TransactionConflict
from pyxenstored.perms import Access, Perm
from pyxenstored.store import Quotas
from pyxenstored.store.node import NO_CHILDREN
from pyxenstored.store.transaction import Transaction
from pyxenstored.store.tree import Store, lookup, mkdir, rm, write


class Dom0:
    domid = 0
    target = None
    privileged = True
    watch_bytes = 0


DOM0 = Dom0()
QUOTAS = Quotas()


def tx(store: Store) -> Transaction:
    return Transaction(1, store, QUOTAS, 0, True)


def linked_nodes(store: Store) -> int:
    """Nodes reached from the root by following child links (not ``walk``)."""
    count = 0
    todo = [store.root]
    while todo:
        node = todo.pop()
        count += 1
        todo.extend(child for child in node.children.values() if child is not None)
    return count


def shape(store: Store) -> dict[str, bytes]:
    """Every node by path, found by walking the links, checked both ways."""
    found = dict(store.walk())
    assert len(found) == len(store)
    for path, node in found.items():
        assert store.get(path) is node
        for name, child in node.children.items():
            assert child is not None, f"{path} lists {name} without linking it"
    assert not NO_CHILDREN
    # len(store) is the sum of the owners' node counts: check the accounts
    # against a count of the tree itself.
    assert len(store) == linked_nodes(store)
    return {path: node.value for path, node in found.items()}


def populated() -> Store:
    store = Store()
    for path in ("/a/b/c", "/a/b/d", "/a/e", "/f"):
        write(store, DOM0, path, path.encode(), QUOTAS)
    return store


def test_lookups_walk_the_links() -> None:
    store = populated()
    assert lookup(store, DOM0, "/a/b/c").value == b"/a/b/c"
    assert store.get("/a/b/x") is None
    assert store.get("/a/b/c/deeper") is None
    assert store.get("/nowhere/at/all") is None
    assert list(lookup(store, DOM0, "/a/b").children) == ["c", "d"]
    assert list(shape(store)) == [
        "/",
        "/tool",
        "/tool/xenstored",
        "/a",
        "/a/b",
        "/a/b/c",
        "/a/b/d",
        "/a/e",
        "/f",
    ]


def test_rm_unlinks_the_whole_subtree() -> None:
    store = populated()
    before = len(store)
    rm(store, DOM0, "/a/b")
    assert store.get("/a/b") is None
    assert store.get("/a/b/c") is None
    assert len(store) == before - 3
    assert "/a/e" in shape(store)


def test_commit_links_new_children_under_replaced_parents() -> None:
    store = populated()
    t = tx(store)
    write(t, DOM0, "/a/b/new/deep/leaf", b"x", QUOTAS)
    write(t, DOM0, "/a/b/c", b"changed", QUOTAS)
    write(t, DOM0, "/a", b"parent changed too", QUOTAS)
    t.commit()
    nodes = shape(store)
    assert nodes["/a/b/new/deep/leaf"] == b"x"
    assert nodes["/a/b/c"] == b"changed"
    assert nodes["/a"] == b"parent changed too"
    # The untouched sibling is still the same committed node.
    assert nodes["/a/b/d"] == b"/a/b/d"


def test_commit_of_a_removed_and_recreated_subtree() -> None:
    store = populated()
    old_d = store.get("/a/b/d")
    t = tx(store)
    rm(t, DOM0, "/a/b")
    write(t, DOM0, "/a/b/c", b"again", QUOTAS)
    t.commit()
    nodes = shape(store)
    assert nodes["/a/b/c"] == b"again"
    assert "/a/b/d" not in nodes
    assert store.get("/a/b/d") is None
    assert old_d is not None
    assert all(node is not old_d for _, node in store.walk())


def test_commit_keeps_children_others_did_not_touch() -> None:
    store = populated()
    t = tx(store)
    # The transaction reads /a/b (a private copy with its child links)...
    assert list(lookup(t, DOM0, "/a/b").children) == ["c", "d"]
    mkdir(t, DOM0, "/a/b", QUOTAS)
    # ...and modifies a child, then the commit installs both.
    write(t, DOM0, "/a/b/d", b"new d", QUOTAS)
    t.commit()
    nodes = shape(store)
    assert nodes["/a/b/c"] == b"/a/b/c"
    assert nodes["/a/b/d"] == b"new d"


def test_a_conflicting_commit_changes_no_link() -> None:
    store = populated()
    t = tx(store)
    write(t, DOM0, "/a/b/new", b"x", QUOTAS)
    write(store, DOM0, "/a/b/other", b"y", QUOTAS)  # changes /a/b meanwhile
    before = shape(store)
    with pytest.raises(TransactionConflict):
        t.commit()
    assert shape(store) == before
    assert "/a/b/new" not in before


def test_root_replaced_by_a_transaction() -> None:
    store = populated()
    t = tx(store)
    write(t, DOM0, "/", b"root value", QUOTAS)
    write(t, DOM0, "/g", b"g", QUOTAS)
    t.commit()
    nodes = shape(store)
    assert nodes["/"] == b"root value"
    assert nodes["/g"] == b"g"
    assert nodes["/a/b/c"] == b"/a/b/c"
    assert store.root.perms == (Perm(Access.NONE, 0),)
