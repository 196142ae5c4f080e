"""The committed tree and the data operations on any view of it.

The operations (:func:`lookup`, :func:`write`, :func:`mkdir`, :func:`rm`,
:func:`set_perms`) are written once against the small :class:`View`
interface.  :class:`Store` is the view of the committed tree;
:class:`~pyxenstored.store.transaction.Transaction` is the view through an
open transaction.  Every operation validates
everything (permissions, quotas) before it changes anything, so a refused
request leaves no trace.

Nodes of the committed tree are modified in place; a transaction takes a
private copy of each node on first access, as C does, so it sees every node
as it was at that first access.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterator
from typing import Any, Protocol

from pyxenstored.errors import (
    InternalError,
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
from pyxenstored.store.node import (
    NO_CHILDREN,
    Change,
    Children,
    Node,
    node_bytes,
    node_size,
)
from pyxenstored.store.quota import Quotas

__all__ = [
    "Caller",
    "Store",
    "View",
    "lookup",
    "mkdir",
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

    def changing(self, node: Node) -> None:
        """``node`` (returned by :meth:`get`) is about to be modified in place."""

    def touched(self, path: str, node: Node) -> None:
        """``node`` (returned by :meth:`get`) was modified in place."""

    def created(self, path: str, node: Node, parent: Node | None) -> None:
        """``node`` is new at ``path``, under ``parent`` (None for the root)."""

    def deleted(self, path: str, node: Node) -> None: ...

    def link(self, parent: Node, name: str) -> None:
        """Add ``name`` to the children of ``parent`` (a node being created)."""

    def unlink(self, parent: Node, name: str) -> None:
        """Remove ``name`` from the children of ``parent``."""

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

    def __init__(self, priv_domid: int = 0, *, skeleton: bool = True) -> None:
        """A store with C's initial tree, or (``skeleton=False``) the root only."""
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
        #: Undo steps of the request being handled, newest last (None: not
        #: recording): ``(function, *arguments)``, a plain tuple because it
        #: costs a third of a ``functools.partial`` and every change of
        #: every request records one.  See :meth:`begin` and :meth:`rollback`.
        self.journal: list[_Undo] | None = None
        self.special: dict[str, Node] = {
            name: Node(b"", none_priv) for name in SPECIAL_NODES
        }
        self._add("/", self.root, None)
        if skeleton:
            tool = Node(b"", none_priv)
            self._add("/tool", tool, self.root)
            self._add("/tool/xenstored", Node(b"", none_priv), tool)

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

    # -- undoing a failed request ----------------------------------------------

    def begin(self) -> None:
        """Start recording how to undo each change (one request's worth).

        Every change to the committed tree goes through the methods below,
        and each records its undo step first, so :meth:`rollback` can put the
        tree, the accounts and the child order back exactly as they were if
        the request fails half way (an internal error, or an error found
        after a change).  Generations are not put back: they only need to
        be unique, and a node that is put back gets its old one again.
        """
        self.journal = []

    def end(self) -> None:
        """Stop recording; the changes since :meth:`begin` stand."""
        self.journal = None

    def rollback(self) -> None:
        """Undo every change since :meth:`begin`, newest first, and stop."""
        journal = self.journal
        self.journal = None
        if journal:
            for undo, *args in reversed(journal):
                undo(*args)

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

    def changing(self, node: Node) -> None:
        journal = self.journal
        if journal is not None:
            journal.append((_restore_node, node, _snapshot(node)))

    def touched(self, path: str, node: Node) -> None:
        # Every write passes here: _stamp and _share written out.
        self.generation += 1
        node.generation = self.generation
        pool = self._perm_lists
        perms = pool.get(node.perms)
        if perms is not None:
            node.perms = perms
        elif len(pool) < _PERM_LISTS_SHARED:
            pool[node.perms] = node.perms
        charge = node_bytes(path, node)
        if charge != node.acct:  # (a value of the same length: no change)
            self._charge(node.perms[0].domid, charge - node.acct)
            node.acct = charge

    def _count(self, domid: int, delta: int) -> None:
        counts = self.owner_counts
        journal = self.journal
        if journal is not None:
            journal.append((_put_back, counts, domid, counts.get(domid)))
        value = counts.get(domid, 0) + delta
        if value:
            counts[domid] = value
        else:
            del counts[domid]

    def _charge(self, domid: int, delta: int) -> None:
        charged = self.owner_bytes
        journal = self.journal
        if journal is not None:
            journal.append((_put_back, charged, domid, charged.get(domid)))
        value = charged.get(domid, 0) + delta
        if value:
            charged[domid] = value
        else:
            charged.pop(domid, None)

    def _link(self, parent: Node, name: str, child: Node | None) -> None:
        journal = self.journal
        if journal is not None:
            old = parent.children.get(name, _ABSENT)
            journal.append((_relink, parent, name, old, parent.children))
        parent.add_child(name, child)

    def link(self, parent: Node, name: str) -> None:
        self._link(parent, name, None)

    def unlink(self, parent: Node, name: str) -> None:
        children = parent.children
        journal = self.journal
        if journal is not None:
            # Where it stood, so the child order comes back too (O(children),
            # as C's memmove of the child list).
            index = list(children).index(name)
            journal.append((_reinsert, children, index, name, children[name]))
        del children[name]

    def _parent(self, path: str) -> Node:
        parent = self.get(parent_of(path))
        assert parent is not None, f"{path} has no parent"
        return parent

    def created(self, path: str, node: Node, parent: Node | None) -> None:
        """Link a new node under its parent, which must be in the tree."""
        self._add(path, node, parent)

    def _add(self, path: str, node: Node, parent: Node | None) -> None:
        self._stamp(node)
        self._share(node)
        if parent is not None:
            # The parent has the name already (tree operations list the
            # child first, with an interned name): this keeps that key.
            self._link(parent, path[path.rfind("/") + 1 :], node)
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

    def restore_node(self, path: str, value: bytes, perms: Perms) -> bool:
        """Put a node of a saved state in place (live update, ``--restore``).

        Nodes come parents first: the root replaces the initial one (its
        children stay), any other node is linked under its parent.  No
        quota applies; the node is counted for its owner.  False if the
        parent is missing or the node is already there.
        """
        if path == "/":
            root = self.root
            self.deleted(path, root)
            root.value, root.perms = value, perms
            self._add(path, root, None)
            return True
        parent = self.get(parent_of(path))
        name = path[path.rfind("/") + 1 :]
        if parent is None or name in parent.children:
            return False
        self._add(path, Node(value, perms), parent)
        return True

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
        old_owner = old.perms[0].domid
        acct = node_bytes(path, node)
        if old_owner != owner:
            self._count(old_owner, -1)
            self._count(owner, 1)
            self._charge(old_owner, -old.acct)
            self._charge(owner, acct)
        elif acct != old.acct:
            self._charge(owner, acct - old.acct)
        node.acct = acct
        self._stamp(node)
        self._share(node)
        if parent is None:
            if self.journal is not None:
                self.journal.append((setattr, self, "root", self.root))
            self.root = node
        else:
            self._link(parent, path[path.rfind("/") + 1 :], node)

    def remove(self, path: str) -> None:
        """Account for a node a transaction removed.

        Its parent (or an ancestor) is replaced by the transaction's copy,
        which no longer lists it: that unlinks it, so only the accounts
        change here.  Called before any :meth:`replace` of the commit.
        """
        old = self.get(path)
        if old is not None:
            self.deleted(path, old)


#: One undo step: a function and its arguments.
_Undo = tuple[Any, ...]

#: In a journal: the child name was not there before.
_ABSENT = Node(b"", ())

#: The fields of a node an undo step puts back.
_NODE_FIELDS = ("value", "perms", "children", "generation", "acct", "listing")
#: Their values, as a tuple (a C-level call: every write takes one).
_snapshot = operator.attrgetter(*_NODE_FIELDS)


def _restore_node(node: Node, saved: tuple[Any, ...]) -> None:
    for name, value in zip(_NODE_FIELDS, saved, strict=True):
        setattr(node, name, value)


def _put_back(table: dict[int, int], key: int, old: int | None) -> None:
    if old is None:
        table.pop(key, None)
    else:
        table[key] = old


def _relink(parent: Node, name: str, old: Node | None, children: Children) -> None:
    if parent.children is not children:
        # The first child of a leaf replaced the shared empty dict.
        parent.children = children
    elif old is _ABSENT:
        del children[name]
    else:
        children[name] = old


def _reinsert(children: Children, index: int, name: str, child: Node | None) -> None:
    items = list(children.items())
    items.insert(index, (name, child))
    children.clear()
    children.update(items)


# -- helpers ---------------------------------------------------------------


def _access(caller: Caller, perms: Perms) -> int:
    return access_for(perms, caller.domid, caller.target, caller.privileged)


def _missing_error(view: View, caller: Caller, path: str, want: int) -> XsError:
    """ENOENT or EACCES for a missing node, hiding its existence (5.4).

    As C's ``errno_from_parents``: ENOENT when the nearest existing
    ancestor grants any of the wanted rights.
    """
    ancestor = parent_of(path)
    node = view.get(ancestor)
    while node is None:
        ancestor = parent_of(ancestor)
        node = view.get(ancestor)
    if _access(caller, node.perms) & want:
        return NoEntry()
    return PermissionDenied()


def _denied(view: View, caller: Caller, path: str, want: int) -> XsError:
    """EACCES for a node the caller may not use.

    C reads the ancestors up to the nearest existing one first (to choose
    between errors it ends up not choosing), so a transaction accesses
    them: their changes make its commit fail, and it sees them as they
    were from then on.
    """
    _missing_error(view, caller, path, want)
    return PermissionDenied()


def lookup(view: View, caller: Caller, path: str, want: int = READ_BIT) -> Node:
    """The node at ``path``, which the caller must be allowed to ``want``.

    READ, DIRECTORY and GET_PERMS: the node, its value, children (whose
    generation pages the list) or permissions are the answer.
    """
    node = view.get(path)
    if node is None:
        raise _missing_error(view, caller, path, want)
    if not caller.privileged and _access(caller, node.perms) & want != want:
        raise _denied(view, caller, path, want)
    return node


def _check_size(
    quotas: Quotas,
    caller: Caller,
    value: bytes,
    perms: Perms,
    children: Children = NO_CHILDREN,
) -> None:
    """ENOSPC if a node of this value, permissions and children is over
    the caller's ``node-size`` quota."""
    if caller.privileged:
        return
    size = node_size(value, perms, children)
    if quotas.would_exceed(caller.domid, "node_size", size):
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
    used = view.owned_bytes(caller.domid) + caller.watch_bytes
    if quotas.would_exceed(caller.domid, "memory", used + delta):
        raise OutOfMemory("memory quota reached")


# -- operations ------------------------------------------------------------


def write(view: View, caller: Caller, path: str, value: bytes, quotas: Quotas) -> None:
    """WRITE: set a value, creating the node and missing ancestors."""
    node = view.get(path)
    if node is None:
        _create(view, caller, path, value, quotas)
        return
    if not caller.privileged:
        if _access(caller, node.perms) & WRITE_BIT == 0:
            raise _denied(view, caller, path, WRITE_BIT)
        _check_size(quotas, caller, value, node.perms, node.children)
        grow = len(value) - len(node.value)
        _check_memory(view, quotas, caller, node.perms[0].domid, grow)
    view.changing(node)
    node.value = value
    view.touched(path, node)
    view.record(Change(path, False, (node.perms,)))


def mkdir(view: View, caller: Caller, path: str, quotas: Quotas) -> None:
    """MKDIR: create an empty node; an existing writable node is left alone."""
    node = view.get(path)
    if node is None:
        _create(view, caller, path, b"", quotas)
    elif _access(caller, node.perms) & WRITE_BIT == 0:
        raise _denied(view, caller, path, WRITE_BIT)


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
        owned = view.owned(caller.domid) + len(missing)
        if quotas.would_exceed(caller.domid, "nodes", owned):
            raise NoSpace("node quota reached")
        first = missing[-1]
        grown = dict(parent.children)  # the parent with its new child
        grown[first[first.rfind("/") + 1 :]] = None
        _check_size(quotas, caller, parent.value, parent.perms, grown)
        _check_size(quotas, caller, value, perms)
        cost = len(value) + sum(node_bytes(p, Node(b"", perms)) for p in missing)
        _check_memory(view, quotas, caller, caller.domid, cost)
    first = missing[-1]
    view.changing(parent)
    # Child names repeat across domains ("state", "backend"...): share them.
    view.link(parent, sys.intern(first[first.rfind("/") + 1 :]))
    view.touched(ancestor, parent)
    for i in range(len(missing) - 1, 0, -1):
        child = missing[i - 1]
        name = sys.intern(child[child.rfind("/") + 1 :])
        node = Node(b"", perms, {name: None})
        view.created(missing[i], node, parent)
        parent = node
    view.created(path, Node(value, perms), parent)
    view.record(Change(path, False, (perms,)))


def rm(view: View, caller: Caller, path: str) -> None:
    """RM: remove a node and its whole subtree.

    A missing node whose parent exists is not an error (C compatibility).

    In a transaction the view can be out of date: each node is seen as it
    was at its first access, so a parent may be gone, a child listed that
    no longer exists, or a child not listed.  Such a transaction can only
    end in EAGAIN (the nodes it saw have changed), but until then it gets
    C's answers: EINVAL when the parent is missing, EIO when the subtree or
    the parent's child list does not match, with what was removed before
    the mismatch staying removed in the transaction, as in C.
    """
    node = view.get(path)
    if node is None:
        error = _missing_error(view, caller, path, WRITE_BIT)
        if isinstance(error, NoEntry) and view.get(parent_of(path)) is not None:
            return
        raise error
    if _access(caller, node.perms) & WRITE_BIT == 0:
        raise _denied(view, caller, path, WRITE_BIT)
    if path == "/":
        raise InvalidArgument("cannot remove the root")
    parent_path = parent_of(path)
    parent = view.get(parent_path)
    if parent is None:
        raise InvalidArgument(f"{path}: the parent is gone in this transaction")
    if node.children:
        removed, complete = _subtree(view, path, node)
    else:  # a leaf, the common case: no walk
        removed, complete = [(path, node, None)], True
    for cpath, cnode, wparent in removed:
        # The events follow the removals: children before their parent,
        # descendants in exact mode, the root last in subtree mode (C 4.17
        # delnode_sub); each may be seen by whoever may read the node or the
        # parent it was removed from.
        ppath, pnode = (parent_path, parent) if wparent is None else wparent
        view.record(Change(cpath, cpath != path, (cnode.perms, pnode.perms)))
        view.deleted(cpath, cnode)
        if not complete and wparent is not None:
            # C takes each child out of its parent as it goes, so a walk cut
            # short leaves the parents it did not reach without them.
            _unlink(view, ppath, pnode, cpath[cpath.rfind("/") + 1 :])
    if not complete:
        raise InternalError(f"{path}: a child is missing in this transaction")
    name = path[path.rfind("/") + 1 :]
    if not _unlink(view, parent_path, parent, name):
        raise InternalError(f"{parent_path} does not list {name} in this transaction")


def _unlink(view: View, path: str, node: Node, name: str) -> bool:
    """Take the first entry for ``name`` out of ``node``'s children."""
    key = name
    if name not in node.children:
        # Only a transaction's view lists a name twice (Transaction.link).
        twice = [k for k in node.children if k.split("\0")[0] == name]
        if not twice:
            return False
        key = twice[0]
    view.changing(node)
    view.touched(path, node)
    view.unlink(node, key)
    return True


_Removed = tuple[str, Node, "tuple[str, Node] | None"]


def _subtree(view: View, path: str, node: Node) -> tuple[list[_Removed], bool]:
    """The nodes RM removes, in the order it removes them.

    The walk is C's walk_node_tree: depth first, children in order, a node
    read (so accessed by a transaction) when the walk enters it and removed
    when it leaves it.  Each comes with the path and node of the parent it
    is removed from (None for the root of the removal).  The flag is False
    when a listed child could not be read (a transaction's out-of-date
    view, or its node quota): the walk stops there, as C's does.
    """
    removed: list[_Removed] = []
    gone: set[str] = set()
    frames: list[tuple[str, Node, tuple[str, Node] | None, Iterator[str]]] = [
        (path, node, None, iter(node.children))
    ]
    while frames:
        cpath, cnode, wparent, names = frames[-1]
        name = next(names, None)
        if name is None:
            frames.pop()
            removed.append((cpath, cnode, wparent))
            gone.add(cpath)
            continue
        if "\0" in name:
            name = name.split("\0")[0]  # listed twice (Transaction.link)
        child_path = f"{cpath}/{name}" if cpath != "/" else f"/{name}"
        try:
            # A name met again was removed when the walk left it (in C).
            child = None if child_path in gone else view.get(child_path)
        except XsError:
            child = None
        if child is None:
            return removed, False
        frames.append((child_path, child, (cpath, cnode), iter(child.children)))
    return removed, True


def set_perms(
    view: View,
    caller: Caller,
    path: str,
    perms: Perms,
    quotas: Quotas,
) -> None:
    """SET_PERMS on an ordinary node; ``perms`` already validated/parsed."""
    node = lookup(view, caller, path, WRITE_BIT | OWNER_BIT)
    old = node.perms
    if not caller.privileged and perms[0].domid != old[0].domid:
        raise NotPermitted("only the privileged domain may change the owner")
    if not caller.privileged:
        _check_size(quotas, caller, node.value, perms, node.children)
        grow = 8 * (len(perms) - len(old))
        _check_memory(view, quotas, caller, old[0].domid, grow)
    view.changing(node)
    node.perms = perms
    if old[0].domid != perms[0].domid:
        view.owner_changed(old[0].domid, perms[0].domid, node)
    view.touched(path, node)
    view.record(Change(path, False, (perms, old)))
