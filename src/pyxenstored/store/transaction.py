"""Transactions with C xenstored's isolation model (PROTOCOL.md 7.2).

Theory of operation:

1. A transaction is a :class:`~pyxenstored.store.tree.View`.  The first time
   it touches a path it records the committed node's generation (``None``
   for "absent") and keeps a private copy; later accesses see that copy.
   So it sees each node as of its first access, not as of its start.
2. Modifications change only the private copies; the changes that would
   fire watches are kept and fire at commit.
3. At commit every recorded generation is compared with the committed
   tree.  Any difference (a node modified, created, deleted or
   re-permissioned by someone else, even to an identical value) fails the
   commit with EAGAIN and nothing is applied.  Unrelated writes never do:
   only nodes this transaction read or wrote are compared.
4. Otherwise the private copies of modified nodes replace the committed
   ones, each with a fresh generation, and the kept changes fire once per
   path, in the order the transaction first accessed the paths (as C).
5. Quotas: an unprivileged owner's node count is checked again at commit
   (ENOSPC), so is the caller's memory account (ENOMEM), and touching more
   than ``transaction-nodes`` distinct nodes fails the transaction (ENOSPC
   now, ENOMEM at commit).
6. A domain that goes away while the transaction is open must not come
   back with its commit (XSA-322/417): :meth:`domain_gone` makes every
   private node naming it conflict, so the commit fails with EAGAIN and
   the redone transaction sees the domain gone.
"""

from __future__ import annotations

import operator

from pyxenstored.errors import NoSpace, OutOfMemory, TransactionConflict
from pyxenstored.paths import parent_of
from pyxenstored.perms import Perms
from pyxenstored.store.node import Change, Node, node_bytes
from pyxenstored.store.quota import Quotas
from pyxenstored.store.tree import Store

__all__ = ["Transaction"]

#: Sort key: the slashes of a path (no Python frame per path).
_SLASHES = operator.methodcaller("count", "/")
#: A generation no node ever has: a path recorded with it fails the commit.
_CONFLICT = -1


def _parents_first(paths: dict[str, None]) -> list[str]:
    """The paths with every parent before its children (by depth, stable)."""
    order = sorted(paths, key=_SLASHES)
    if "/" in paths:  # as many slashes as its children: put it first
        order.remove("/")
        order.insert(0, "/")
    return order


class Transaction:
    """One open transaction of one connection."""

    def __init__(
        self,
        tx_id: int,
        store: Store,
        quotas: Quotas,
        domid: int,
        privileged: bool,
    ) -> None:
        self.id = tx_id
        self.store = store
        self.quotas = quotas
        self.domid = domid
        self.privileged = privileged
        #: Generation of each committed node at first access (None: absent;
        #: :data:`_CONFLICT`: forced to conflict at commit).
        self.accessed: dict[str, int | None] = {}
        #: Private copies; None means absent or deleted in this transaction.
        self.nodes: dict[str, Node | None] = {}
        #: Paths modified here, in first-modification order.
        self.modified: dict[str, None] = {}
        self.owner_delta: dict[int, int] = {}
        self.bytes_delta: dict[int, int] = {}
        self.changes: dict[str, Change] = {}
        #: Set when a limit was hit; the commit then fails with ENOMEM.
        self.failed = False
        #: Re-created after a migration: can only end in EAGAIN (c.11).
        self.doomed = False
        #: Engine clock time of TRANSACTION_START (live update waits on it).
        self.started = 0.0

    # -- View -------------------------------------------------------------

    def get(self, path: str) -> Node | None:
        try:
            return self.nodes[path]
        except KeyError:
            pass
        if not self.privileged:
            count = len(self.accessed) + 1
            if self.quotas.would_exceed(self.domid, "transaction_nodes", count):
                self.failed = True
                raise NoSpace("too many nodes in transaction")
        node = self.store.get(path)
        if node is None:
            self.accessed[path] = None
            self.nodes[path] = None
            return None
        self.accessed[path] = node.generation
        copy = node.copy()
        self.nodes[path] = copy
        return copy

    def changing(self, node: Node) -> None:
        """Nothing to keep: the node is this transaction's private copy."""

    def link(self, parent: Node, name: str) -> None:
        if name in parent.children:
            # The copy of the parent is out of date and still lists a child
            # that has gone since.  C appends the name to its child string
            # again, so from now on this transaction sees it twice; the
            # second entry is kept under a key no real name can have
            # (``name\0n``).  The transaction can only end in EAGAIN.
            count = 1
            while f"{name}\0{count}" in parent.children:
                count += 1
            name = f"{name}\0{count}"
        parent.add_child(name)

    def unlink(self, parent: Node, name: str) -> None:
        del parent.children[name]

    def touched(self, path: str, node: Node) -> None:
        self.modified[path] = None
        charge = node_bytes(path, node)
        self._charge(node.perms[0].domid, charge - node.acct)
        node.acct = charge

    def created(self, path: str, node: Node, parent: Node | None) -> None:
        self.nodes[path] = node
        self.modified[path] = None
        owner = node.perms[0].domid
        self._count(owner, 1)
        node.acct = node_bytes(path, node)
        self._charge(owner, node.acct)

    def deleted(self, path: str, node: Node) -> None:
        self.nodes[path] = None
        self.modified[path] = None
        owner = node.perms[0].domid
        self._count(owner, -1)
        self._charge(owner, -node.acct)

    def owner_changed(self, old: int, new: int, node: Node) -> None:
        self._count(old, -1)
        self._count(new, 1)
        self._charge(old, -node.acct)
        self._charge(new, node.acct)

    def _count(self, domid: int, delta: int) -> None:
        self.owner_delta[domid] = self.owner_delta.get(domid, 0) + delta

    def _charge(self, domid: int, delta: int) -> None:
        self.bytes_delta[domid] = self.bytes_delta.get(domid, 0) + delta

    def owned(self, domid: int) -> int:
        return self.store.owned(domid) + self.owner_delta.get(domid, 0)

    def owned_bytes(self, domid: int) -> int:
        return self.store.owned_bytes(domid) + self.bytes_delta.get(domid, 0)

    def record(self, change: Change) -> None:
        # Fire once per path, in the widest mode asked; who may see it is
        # decided at commit (:meth:`_fired`).
        earlier = self.changes.get(change.path)
        if earlier is None or (earlier.exact and not change.exact):
            self.changes[change.path] = change

    def _check_memory_at_commit(self) -> None:
        """ENOMEM if the commit takes the caller's nodes over its memory quota.

        Each write was checked against the committed tree as it was then;
        transactions committed since may have grown it, so without this
        several transactions could together commit more than the quota
        (as with the node quota, XSA-421).  Only the caller's own account,
        as :func:`~pyxenstored.store.tree.write` checks it; its watches are
        not known here, so the bytes of its nodes alone are compared.
        """
        if self.privileged:
            return
        grown = self.bytes_delta.get(self.domid, 0)
        if grown <= 0:
            return
        used = self.store.owned_bytes(self.domid) + grown
        if self.quotas.would_exceed(self.domid, "memory", used):
            raise OutOfMemory("memory quota reached at commit")

    def domain_gone(self, domid: int) -> None:
        """A domain was released or died while this transaction was open.

        Its nodes and permission entries were removed from the committed
        tree, but private copies modified here may still name it (a node it
        owns, an entry granting it access).  Committed, they would hand
        them to the next domain given the same domid, so every such path is
        made to conflict: the commit fails with EAGAIN and nothing is
        applied.
        """
        for path in self.modified:
            node = self.nodes[path]
            if node is not None and any(p.domid == domid for p in node.perms):
                self.accessed[path] = _CONFLICT

    # -- end ----------------------------------------------------------------

    def commit(self) -> list[Change]:
        """Apply the transaction and return the changes to fire.

        Raises:
            OutOfMemory: the transaction was failed earlier, or the commit
                would take the caller over its memory quota.
            TransactionConflict: a node it touched changed meanwhile.
            NoSpace: the commit would take an owner over its node quota.
        """
        if self.failed:
            raise OutOfMemory("transaction failed earlier")
        store = self.store
        #: The committed node of each accessed path (walked once here).
        committed: dict[str, Node | None] = {}
        for path, generation in self.accessed.items():
            node = committed[path] = store.get(path)
            if (None if node is None else node.generation) != generation:
                raise TransactionConflict()
        for domid, delta in self.owner_delta.items():
            if delta <= 0 or domid == self.store.priv_domid:
                continue
            if self.quotas.would_exceed(domid, "nodes", store.owned(domid) + delta):
                raise NoSpace("node quota reached at commit")
        self._check_memory_at_commit()
        fired = self._fired(committed)
        # Removals first, while the committed tree still reaches them; then
        # the copies, parents before children, so each is linked under the
        # committed version of its parent (Store.replace).
        nodes = self.nodes
        for path in self.modified:
            if nodes[path] is None:
                store.remove(path)
        for path in _parents_first(self.modified):
            node = nodes[path]
            if node is not None:
                store.replace(path, node)
        return fired

    def _fired(self, committed: dict[str, Node | None]) -> list[Change]:
        """The changes to fire at commit, before the commit applies them.

        C (``finalize_transaction``) applies the nodes one by one in the
        order the transaction first accessed them, firing each right after
        applying it, so who may see an event is decided on the tree as
        committed *so far*: whoever may read the node as it was at first
        access (the committed node now: the commit checked it is
        unchanged), or, if the node exists once applied, whoever may read
        it or its parent as it stands at that moment.  A node that did not
        exist before and does not exist after (created and removed in the
        transaction) gets no event at all, not even for the privileged.
        """
        store = self.store
        nodes = self.nodes
        modified = self.modified
        changes = self.changes
        applied: set[str] = set()
        fired = []
        for path in self.accessed:
            if path in modified:
                applied.add(path)
            change = changes.get(path)
            if change is None:
                continue
            before = committed[path]
            after = nodes[path]
            perms: tuple[Perms, ...] = () if before is None else (before.perms,)
            if after is not None:
                perms += (after.perms,)
                up = parent_of(path)
                if up in applied:
                    parent = nodes[up]
                elif up in committed:
                    parent = committed[up]
                else:  # (siblings share it: walked once)
                    parent = committed[up] = store.get(up)
                if parent is not None:
                    perms += (parent.perms,)
            if perms:
                fired.append(Change(path, change.exact, perms, parent=False))
        return fired
