"""The committed tree and the data operations on any view of it.

The operations (:func:`read`, :func:`write`, :func:`mkdir`, :func:`rm`,
:func:`directory`, :func:`get_perms`, :func:`set_perms`) are written once
against the small :class:`View` interface.  :class:`Store` is the view of
the committed tree; :class:`~pyxenstored.store.transaction.Transaction` is
the view through an open transaction.  Every operation validates
everything (permissions, quotas) before it changes anything, so a refused
request leaves no trace.

Nodes of the committed tree are modified in place; a transaction takes a
private copy of each node on first access, as C does, so it sees every node
as it was at that first access.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Protocol

from pyxenstored.errors import (
    InvalidArgument,
    NoEntry,
    NoSpace,
    NotPermitted,
    OutOfMemory,
    PermissionDenied,
    XsError,
)
from pyxenstored.paths import SPECIAL_NODES, parent_of
from pyxenstored.perms import (
    OWNER_BIT,
    READ_BIT,
    WRITE_BIT,
    Access,
    Perm,
    Perms,
    access_for,
)
from pyxenstored.store.node import NO_CHILDREN, Change, Node, node_bytes, node_size
from pyxenstored.store.quota import Quotas

__all__ = [
    "Caller",
    "Store",
    "View",
    "directory",
    "get_perms",
    "mkdir",
    "read",
    "rm",
    "set_perms",
    "write",
]


class Caller(Protocol):
    """Who is asking: enough of a connection to decide access and quotas."""

    @property
    def domid(self) -> int: ...

    @property
    def target(self) -> int | None: ...

    @property
    def privileged(self) -> bool: ...

    @property
    def watch_bytes(self) -> int:
        """Memory the caller's watches take (counted in its memory quota)."""


class View(Protocol):
    """Read and modify nodes, either committed or through a transaction."""

    def get(self, path: str) -> Node | None: ...

    def touched(self, path: str, node: Node) -> None:
        """``node`` (returned by :meth:`get`) was modified in place."""

    def created(self, path: str, node: Node) -> None: ...

    def deleted(self, path: str, node: Node) -> None: ...

    def owner_changed(self, old: int, new: int, node: Node) -> None: ...

    def owned(self, domid: int) -> int:
        """Nodes owned by ``domid`` as this view sees them."""

    def owned_bytes(self, domid: int) -> int:
        """Bytes of the nodes owned by ``domid`` as this view sees them."""

    def record(self, change: Change) -> None:
        """Remember a change that may fire watches."""


#: How many distinct permission lists :class:`Store` shares at most.
_PERM_LISTS_SHARED = 65536


class Store:
    """The committed tree, the special nodes and per-owner node counts.

    The tree is its own index: each node maps its children's names to the
    children (:data:`~pyxenstored.store.node.Children`), and :meth:`get`
    walks from the root.  A flat table from full path to node was a few
    hundred nanoseconds faster per lookup but took about 130 bytes per node
    for the path strings and the table (``docs/benchmarks.md``).
    """

    def __init__(self, priv_domid: int = 0) -> None:
        self.priv_domid = priv_domid
        none_priv: Perms = (Perm(Access.NONE, priv_domid),)
        #: The initial tree C creates (PROTOCOL.md 8.4) is set up below.
        self.root = Node(b"", none_priv)
        #: Global generation counter; every modification takes a new value.
        self.generation = 0
        self.owner_counts: dict[int, int] = {}
        #: The node part of each owner's memory account (:func:`node_bytes`).
        self.owner_bytes: dict[int, int] = {}
        #: Identical permission lists shared by all the nodes that have them
        #: (most nodes of a domain do): bounded, so a guest setting many
        #: distinct lists only stops the sharing.
        self._perm_lists: dict[Perms, Perms] = {}
        #: Changes made since the engine last collected them.
        self.changes: list[Change] = []
        self.special: dict[str, Node] = {
            name: Node(b"", none_priv) for name in SPECIAL_NODES
        }
        self.created("/", self.root)
        self.created("/tool", Node(b"", none_priv))
        self.created("/tool/xenstored", Node(b"", none_priv))

    def __len__(self) -> int:
        """Nodes in the tree (every node has one owner)."""
        return sum(self.owner_counts.values())

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every node with its path, depth first, children in order."""
        stack: list[tuple[str, Node]] = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.children:
                prefix = path if path != "/" else ""
                stack.extend(
                    (f"{prefix}/{name}", child)
                    for name, child in reversed(node.children.items())
                    if child is not None
                )

    # -- View -------------------------------------------------------------

    def get(self, path: str) -> Node | None:
        node: Node | None = self.root
        if path == "/":
            return node
        try:
            for name in path[1:].split("/"):
                # Only the last name can map to None (a child being linked).
                node = node.children[name]  # type: ignore[union-attr]
        except KeyError:
            return None
        return node

    def _stamp(self, node: Node) -> None:
        self.generation += 1
        node.generation = self.generation

    def _share(self, node: Node) -> None:
        pool = self._perm_lists
        perms = pool.get(node.perms)
        if perms is not None:
            node.perms = perms
        elif len(pool) < _PERM_LISTS_SHARED:
            pool[node.perms] = node.perms

    def touched(self, path: str, node: Node) -> None:
        self._stamp(node)
        self._share(node)
        charge = node_bytes(path, node)
        self._charge(node.perms[0].domid, charge - node.acct)
        node.acct = charge

    def _count(self, domid: int, delta: int) -> None:
        counts = self.owner_counts
        value = counts.get(domid, 0) + delta
        if value:
            counts[domid] = value
        else:
            del counts[domid]

    def _charge(self, domid: int, delta: int) -> None:
        charged = self.owner_bytes
        value = charged.get(domid, 0) + delta
        if value:
            charged[domid] = value
        else:
            charged.pop(domid, None)

    def _parent(self, path: str) -> Node:
        parent = self.get(parent_of(path))
        assert parent is not None, f"{path} has no parent"
        return parent

    def created(self, path: str, node: Node) -> None:
        """Link a new node under its parent, which must be in the tree."""
        self._add(path, node, None if path == "/" else self._parent(path))

    def _add(self, path: str, node: Node, parent: Node | None) -> None:
        self._stamp(node)
        self._share(node)
        if parent is not None:
            # The parent has the name already (tree operations list the
            # child first, with an interned name): this keeps that key.
            parent.add_child(path[path.rfind("/") + 1 :], node)
        owner = node.perms[0].domid
        self._count(owner, 1)
        node.acct = node_bytes(path, node)
        self._charge(owner, node.acct)

    def deleted(self, path: str, node: Node) -> None:
        """Account for a removed node; the caller unlinks it from its parent.

        :func:`rm` unlinks only the root of the removed subtree: the rest
        goes with it.
        """
        owner = node.perms[0].domid
        self._count(owner, -1)
        self._charge(owner, -node.acct)

    def owner_changed(self, old: int, new: int, node: Node) -> None:
        self._count(old, -1)
        self._count(new, 1)
        self._charge(old, -node.acct)
        self._charge(new, node.acct)

    def owned(self, domid: int) -> int:
        return self.owner_counts.get(domid, 0)

    def owned_bytes(self, domid: int) -> int:
        return self.owner_bytes.get(domid, 0)

    def record(self, change: Change) -> None:
        self.changes.append(change)

    # -- committing a transaction ------------------------------------------

    def replace(self, path: str, node: Node) -> None:
        """Install ``node`` (a transaction's private copy) at ``path``.

        Called parents first, so the parent is already the committed one.
        The copy's child links are a snapshot from the transaction's first
        access: each is pointed at the committed child, and a child the
        transaction created is linked when it is installed in turn.
        """
        if path == "/":
            parent = None
            old: Node | None = self.root
        else:
            parent = self._parent(path)
            old = parent.children.get(path[path.rfind("/") + 1 :])
        if node.children:
            kids = old.children if old is not None else NO_CHILDREN
            children = node.children
            for name in children:
                children[name] = kids.get(name)
        if old is None:
            self._add(path, node, parent)
            return
        owner = node.perms[0].domid
        if old.perms[0].domid != owner:
            self._count(old.perms[0].domid, -1)
            self._count(owner, 1)
        self._charge(old.perms[0].domid, -old.acct)
        node.acct = node_bytes(path, node)
        self._charge(owner, node.acct)
        self._stamp(node)
        self._share(node)
        if parent is None:
            self.root = node
        else:
            parent.add_child(path[path.rfind("/") + 1 :], node)

    def remove(self, path: str) -> None:
        """Account for a node a transaction removed.

        Its parent (or an ancestor) is replaced by the transaction's copy,
        which no longer lists it: that unlinks it, so only the accounts
        change here.  Called before any :meth:`replace` of the commit.
        """
        old = self.get(path)
        if old is not None:
            self.deleted(path, old)


# -- helpers ---------------------------------------------------------------


def _access(caller: Caller, perms: Perms) -> int:
    return access_for(perms, caller.domid, caller.target, caller.privileged)


def _missing_error(view: View, caller: Caller, path: str, want: int) -> XsError:
    """ENOENT or EACCES for a missing node, hiding its existence (5.4)."""
    ancestor = parent_of(path)
    node = view.get(ancestor)
    while node is None:
        ancestor = parent_of(ancestor)
        node = view.get(ancestor)
    if _access(caller, node.perms) & want == want:
        return NoEntry()
    return PermissionDenied()


def _lookup(view: View, caller: Caller, path: str, want: int) -> Node:
    """The node at ``path``, which the caller must be allowed to ``want``."""
    node = view.get(path)
    if node is None:
        raise _missing_error(view, caller, path, want)
    if _access(caller, node.perms) & want != want:
        raise PermissionDenied()
    return node


def _check_size(quotas: Quotas, caller: Caller, node: Node) -> None:
    if caller.privileged:
        return
    limit = quotas.for_domain(caller.domid).node_size
    if quotas.exceeded(node_size(node), limit):
        raise NoSpace("node too large")


def _check_memory(
    view: View, quotas: Quotas, caller: Caller, owner: int, delta: int
) -> None:
    """ENOMEM if ``delta`` more bytes take the caller's own account over quota.

    The account is the bytes of the nodes it owns plus its watches
    (PROTOCOL.md 10, ``memory``).  Only growth of the caller's own account
    is refused; nodes of other owners it may write are charged to them.
    """
    if caller.privileged or delta <= 0 or owner != caller.domid:
        return
    limit = quotas.for_domain(caller.domid).memory
    used = view.owned_bytes(caller.domid) + caller.watch_bytes
    if quotas.exceeded(used + delta, limit):
        raise OutOfMemory("memory quota reached")


# -- operations ------------------------------------------------------------


def read(view: View, caller: Caller, path: str) -> bytes:
    return _lookup(view, caller, path, READ_BIT).value


def directory(view: View, caller: Caller, path: str) -> Node:
    """The node whose children are listed (its generation pages the list)."""
    return _lookup(view, caller, path, READ_BIT)


def get_perms(view: View, caller: Caller, path: str) -> Perms:
    return _lookup(view, caller, path, READ_BIT).perms


def write(view: View, caller: Caller, path: str, value: bytes, quotas: Quotas) -> None:
    """WRITE: set a value, creating the node and missing ancestors."""
    node = view.get(path)
    if node is None:
        _create(view, caller, path, value, quotas)
        return
    if _access(caller, node.perms) & WRITE_BIT == 0:
        raise PermissionDenied()
    if not caller.privileged:
        _check_size(quotas, caller, Node(value, node.perms, node.children))
        grow = len(value) - len(node.value)
        _check_memory(view, quotas, caller, node.perms[0].domid, grow)
    node.value = value
    view.touched(path, node)
    view.record(Change(path, False, (node.perms,)))


def mkdir(view: View, caller: Caller, path: str, quotas: Quotas) -> None:
    """MKDIR: create an empty node; an existing writable node is left alone."""
    node = view.get(path)
    if node is None:
        _create(view, caller, path, b"", quotas)
    elif _access(caller, node.perms) & WRITE_BIT == 0:
        raise PermissionDenied()


def _create(
    view: View, caller: Caller, path: str, value: bytes, quotas: Quotas
) -> None:
    """Create ``path`` and its missing ancestors, all checks first."""
    missing = [path]
    ancestor = parent_of(path)
    parent = view.get(ancestor)
    while parent is None:
        missing.append(ancestor)
        ancestor = parent_of(ancestor)
        parent = view.get(ancestor)
    if _access(caller, parent.perms) & WRITE_BIT == 0:
        raise PermissionDenied()
    perms = parent.perms
    if not caller.privileged:
        # New nodes inherit the parent's list but belong to their creator.
        perms = (perms[0]._replace(domid=caller.domid, stale=False), *perms[1:])
        limits = quotas.for_domain(caller.domid)
        if quotas.exceeded(view.owned(caller.domid) + len(missing), limits.nodes):
            raise NoSpace("node quota reached")
        first = missing[-1]
        grown = Node(parent.value, parent.perms, dict(parent.children))
        grown.children[first[first.rfind("/") + 1 :]] = None
        _check_size(quotas, caller, grown)
        _check_size(quotas, caller, Node(value, perms))
        cost = len(value) + sum(node_bytes(p, Node(b"", perms)) for p in missing)
        _check_memory(view, quotas, caller, caller.domid, cost)
    first = missing[-1]
    # Child names repeat across domains ("state", "backend"...): share them.
    parent.add_child(sys.intern(first[first.rfind("/") + 1 :]))
    view.touched(ancestor, parent)
    for i in range(len(missing) - 1, 0, -1):
        child = missing[i - 1]
        name = sys.intern(child[child.rfind("/") + 1 :])
        view.created(missing[i], Node(b"", perms, {name: None}))
    view.created(path, Node(value, perms))
    view.record(Change(path, False, (perms,)))


def rm(view: View, caller: Caller, path: str) -> None:
    """RM: remove a node and its whole subtree.

    A missing node whose parent exists is not an error (C compatibility).
    """
    node = view.get(path)
    if node is None:
        error = _missing_error(view, caller, path, WRITE_BIT)
        if isinstance(error, NoEntry) and view.get(parent_of(path)) is not None:
            return
        raise error
    if _access(caller, node.perms) & WRITE_BIT == 0:
        raise PermissionDenied()
    if path == "/":
        raise InvalidArgument("cannot remove the root")
    parent_path = parent_of(path)
    parent = view.get(parent_path)
    assert parent is not None, f"{path} has no parent"
    # Walk the subtree depth first, as C's walk_node_tree does: a node is
    # read when the walk enters it (so a transaction accesses the nodes, and
    # fires them at commit, in that order) and removed when the walk leaves
    # it.  The events follow the removals: children before their parent,
    # descendants in exact mode, the root last in subtree mode (C 4.17
    # delnode_sub).
    removed: list[tuple[str, Node]] = []
    stack: list[tuple[str, Node | None, bool]] = [(path, node, False)]
    while stack:
        current, cnode, leaving = stack.pop()
        if cnode is None:
            cnode = view.get(current)
            if cnode is None:
                continue
        if leaving:
            removed.append((current, cnode))
            continue
        stack.append((current, cnode, True))
        prefix = current if current != "/" else ""
        stack.extend(
            (f"{prefix}/{name}", None, False) for name in reversed(cnode.children)
        )
    for cpath, cnode in removed:
        view.record(Change(cpath, cpath != path, (cnode.perms,)))
        view.deleted(cpath, cnode)
    del parent.children[path[path.rfind("/") + 1 :]]
    view.touched(parent_path, parent)


def set_perms(
    view: View,
    caller: Caller,
    path: str,
    perms: Perms,
    quotas: Quotas,
) -> None:
    """SET_PERMS on an ordinary node; ``perms`` already validated/parsed."""
    node = _lookup(view, caller, path, WRITE_BIT | OWNER_BIT)
    old = node.perms
    if not caller.privileged and perms[0].domid != old[0].domid:
        raise NotPermitted("only the privileged domain may change the owner")
    if not caller.privileged:
        _check_size(quotas, caller, Node(node.value, perms, node.children))
        grow = 8 * (len(perms) - len(old))
        _check_memory(view, quotas, caller, old[0].domid, grow)
    node.perms = perms
    if old[0].domid != perms[0].domid:
        view.owner_changed(old[0].domid, perms[0].domid, node)
    view.touched(path, node)
    view.record(Change(path, False, (perms, old)))
