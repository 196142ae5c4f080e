"""A node of the tree and the record of one change to it."""

from __future__ import annotations

from typing import NamedTuple

from pyxenstored.perms import Perms

__all__ = ["NO_CHILDREN", "Change", "Children", "Node", "node_bytes", "node_size"]


#: A node's children by name, in creation order.  In the committed tree
#: each value is the child itself: the tree is its own index, so no node
#: stores its full path (a flat path -> node table cost about 130 bytes per
#: node in path strings and table slots).  In a transaction's private copy
#: the values are only a snapshot, and a child created there is ``None``
#: until the commit links it (:meth:`~pyxenstored.store.tree.Store.replace`).
Children = dict[str, "Node | None"]

#: The children of every leaf: one shared empty dict, never modified
#: (:meth:`Node.add_child` replaces it first).  Most nodes are leaves, and
#: an empty dict per node costs 64 bytes.
NO_CHILDREN: Children = {}


class Node:
    """One node: a value, a permission list and an ordered set of children.

    Children are kept in an insertion-ordered ``dict`` (:data:`Children`):
    C lists children in creation order, and a dict gives O(1) lookup and
    removal at any width (``/local/domain`` on a big host).
    """

    __slots__ = ("acct", "children", "generation", "listing", "perms", "value")

    def __init__(
        self,
        value: bytes,
        perms: Perms,
        children: Children | None = None,
        generation: int = 0,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children: Children = NO_CHILDREN if children is None else children
        #: Stamped from the store's global counter on every modification.
        self.generation = generation
        #: Bytes charged to the owner's memory account for this node.
        self.acct = 0
        #: ``(generation, encoded child list)`` kept by DIRECTORY.
        self.listing: tuple[int, bytes] | None = None

    def copy(self) -> Node:
        """A private copy for a transaction (children copied, the rest shared)."""
        children = dict(self.children) if self.children else None
        copy = Node(self.value, self.perms, children, self.generation)
        copy.acct = self.acct
        return copy

    def add_child(self, name: str, child: Node | None = None) -> None:
        if self.children is NO_CHILDREN:
            self.children = {}
        self.children[name] = child

    def __repr__(self) -> str:
        return (
            f"Node(value={self.value!r}, perms={[str(p) for p in self.perms]}, "
            f"children={list(self.children)}, generation={self.generation})"
        )


def node_size(value: bytes, perms: Perms, children: Children) -> int:
    """Size charged by the ``node-size`` quota (PROTOCOL.md section 10) for
    a node of this value, permissions and children."""
    # Each child name with its NUL; no generator (a frame per write).
    childlen = sum(map(len, children)) + len(children)
    return 16 + 8 * len(perms) + len(value) + childlen


def node_bytes(path: str, node: Node) -> int:
    """What a node costs its owner's ``memory`` account.

    Path, value and permissions plus a fixed overhead, as C charges them;
    the child list is left out so that adding a child never changes what
    the parent's owner is charged (a guest must not be able to run another
    domain's account up by creating nodes under it).
    """
    return 16 + len(path) + len(node.value) + 8 * len(node.perms)


class Change(NamedTuple):
    """A modification that may fire watches.

    Attributes:
        path: the canonical path that changed.
        exact: only watches on exactly this path fire (descendants removed
            by RM); otherwise watches on the path and its ancestors fire.
        perms: permission lists under which a watcher that can read any of
            them is told (new, old and parent's permissions, XSA-115);
            none at all: nobody is told, not even the privileged domain.
        parent: whoever may read the current parent of ``path`` is told
            too (C reads the parent when the node's own lists deny).
    """

    path: str
    exact: bool
    perms: tuple[Perms, ...]
    parent: bool = True
