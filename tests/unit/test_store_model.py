"""The store, transactions and permissions against an independent model.

A hypothesis ``RuleBasedStateMachine`` sends requests through a real
:class:`Engine` as three actors (the privileged socket, domain 5 and
domain 6) and checks every reply against a small model written from
PROTOCOL.md alone:

* nodes are a ``dict`` of absolute paths to (value, permission list,
  ordered children, version); the initial tree is section 8.4's;
* the access decision is section 5.2, existence hiding section 5.4, the
  requirements of each operation section 5.3, creation section 5.3's last
  paragraph, RM and missing nodes section 9;
* transactions follow section 7.2 (C's isolation): a node is copied into
  the transaction on first access and its version remembered; the commit
  fails with EAGAIN iff one of those versions changed, else the private
  copies of the modified nodes are installed;
* the node quota (section 10, unprivileged creators, re-checked at commit).

Between any two requests of a transaction another actor may change the
tree, and often does where it bites: it removes a node the transaction has
read, its parent or its child, or creates nodes there, so the
transaction's view goes out of date (RM then answers as C: EINVAL or
EIO).  After every step the committed tree must equal the model, every
node's parent must exist and list it, the engine's own recount
(``audit``) and the model's owner counts must agree, and a request that
failed must have left every node, generation included, untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pyxenstored.engine import Connection, Engine, EngineConfig
from pyxenstored.engine.audit import audit
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.store import Limits, QuotaRule
from pyxenstored.wire import HEADER, Op, Packet

ERROR = 16
#: Domains the hypervisor stand-in says exist; 7 names a missing domain.
EXISTING = frozenset({0, 5, 6})
NODE_QUOTA = 6
PERM_QUOTA = 5

# -- the model -----------------------------------------------------------------

Perm = tuple[str, int]  # (letter, domid)
READ, WRITE, OWNER = "r", "w", "o"
LETTERS = {
    "n": frozenset(),
    "r": frozenset("r"),
    "w": frozenset("w"),
    "b": frozenset("rw"),
}
ALL = frozenset("rwo")


class ModelError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class MNode:
    value: bytes
    perms: tuple[Perm, ...]
    children: list[str]
    version: int = 0


@dataclass(frozen=True)
class Actor:
    name: str
    domid: int
    privileged: bool


ACTORS = (Actor("dom0", 0, True), Actor("dom5", 5, False), Actor("dom6", 6, False))


def parent(path: str) -> str:
    return path[: path.rfind("/")] or "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def child_path(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def access(who: Actor, perms: tuple[Perm, ...]) -> frozenset[str]:
    """PROTOCOL.md 5.2; entries naming missing domains are stale."""
    if who.privileged or perms[0][1] == who.domid:
        return ALL
    for letter, domid in perms[1:]:
        if domid == who.domid and domid in EXISTING:
            return LETTERS[letter]
    return LETTERS[perms[0][0]]


def exceeded(rule: QuotaRule, count: int, limit: int) -> bool:
    return count > limit if rule is QuotaRule.AT_MOST_N else count >= limit


class Committed:
    """The committed tree: modifications take a fresh version at once."""

    def __init__(self) -> None:
        none0: tuple[Perm, ...] = (("n", 0),)
        self.nodes: dict[str, MNode] = {
            "/": MNode(b"", none0, ["tool"], 1),
            "/tool": MNode(b"", none0, ["xenstored"], 2),
            "/tool/xenstored": MNode(b"", none0, [], 3),
        }
        self.clock = 3

    def stamp(self, node: MNode) -> None:
        self.clock += 1
        node.version = self.clock

    # the view interface of the operations below
    def get(self, path: str) -> MNode | None:
        return self.nodes.get(path)

    def mark(self, path: str) -> None:
        self.stamp(self.nodes[path])

    def create(self, path: str, node: MNode) -> None:
        self.nodes[path] = node
        self.stamp(node)

    def delete(self, path: str) -> None:
        del self.nodes[path]

    def owned(self, domid: int) -> int:
        return sum(1 for n in self.nodes.values() if n.perms[0][1] == domid)


@dataclass
class MTx:
    """A transaction: private copies made at first access (PROTOCOL.md 7.2)."""

    committed: Committed
    tx_id: int
    #: Version of each committed node at first access, None if absent.
    first: dict[str, int | None] = field(default_factory=dict)
    original: dict[str, MNode | None] = field(default_factory=dict)
    copies: dict[str, MNode | None] = field(default_factory=dict)
    modified: set[str] = field(default_factory=set)

    def get(self, path: str) -> MNode | None:
        if path not in self.copies:
            node = self.committed.nodes.get(path)
            self.first[path] = None if node is None else node.version
            self.original[path] = node
            self.copies[path] = copy.deepcopy(node)
        return self.copies[path]

    def mark(self, path: str) -> None:
        self.modified.add(path)

    def create(self, path: str, node: MNode) -> None:
        self.copies[path] = node
        self.modified.add(path)

    def delete(self, path: str) -> None:
        self.copies[path] = None
        self.modified.add(path)

    def delta(self, domid: int) -> int:
        now = sum(
            1
            for p in self.modified
            if (n := self.copies[p]) is not None and n.perms[0][1] == domid
        )
        before = sum(
            1
            for p in self.modified
            if (n := self.original[p]) is not None and n.perms[0][1] == domid
        )
        return now - before

    def owned(self, domid: int) -> int:
        return self.committed.owned(domid) + self.delta(domid)

    def commit(self, rule: QuotaRule) -> None:
        nodes = self.committed.nodes
        for path, version in self.first.items():
            node = nodes.get(path)
            if (None if node is None else node.version) != version:
                raise ModelError("EAGAIN")
        for domid in (5, 6):
            delta = self.delta(domid)
            if delta > 0 and exceeded(
                rule, self.committed.owned(domid) + delta, NODE_QUOTA
            ):
                raise ModelError("ENOSPC")
        for path in self.modified:
            node = self.copies[path]
            if node is None:
                nodes.pop(path, None)
            else:
                nodes[path] = node
                self.committed.stamp(node)


View = Committed | MTx


def nearest(view: View, path: str) -> MNode:
    """The nearest existing ancestor of a missing node."""
    up = parent(path)
    node = view.get(up)
    while node is None:
        up = parent(up)
        node = view.get(up)
    return node


def denied(view: View, path: str) -> ModelError:
    """EACCES; C reads the ancestors first, so a transaction accesses them."""
    nearest(view, path)
    return ModelError("EACCES")


def lookup(view: View, who: Actor, path: str, want: frozenset[str]) -> MNode:
    """A node the caller may use, or the error 5.4 prescribes.

    A missing node is ENOENT if its nearest ancestor grants any of the
    wanted rights (C's ``errno_from_parents``).
    """
    node = view.get(path)
    if node is None:
        raise ModelError(
            "ENOENT" if want & access(who, nearest(view, path).perms) else "EACCES"
        )
    if not want <= access(who, node.perms):
        raise denied(view, path)
    return node


def m_create(view: View, who: Actor, path: str, value: bytes, rule: QuotaRule) -> None:
    missing = [path]
    up = parent(path)
    top = view.get(up)
    while top is None:
        missing.append(up)
        up = parent(up)
        top = view.get(up)
    if WRITE not in access(who, top.perms):
        raise ModelError("EACCES")
    perms = top.perms
    if not who.privileged:
        perms = ((perms[0][0], who.domid), *perms[1:])
        if exceeded(rule, view.owned(who.domid) + len(missing), NODE_QUOTA):
            raise ModelError("ENOSPC")
    # A transaction's copy of ``top`` may list the name already (it was
    # removed since): it is then listed twice, as in C.
    top.children.append(basename(missing[-1]))
    view.mark(up)
    for i in range(len(missing) - 1, -1, -1):
        kids = [basename(missing[i - 1])] if i else []
        view.create(missing[i], MNode(value if i == 0 else b"", perms, kids))


def m_write(view: View, who: Actor, path: str, value: bytes, rule: QuotaRule) -> None:
    node = view.get(path)
    if node is None:
        m_create(view, who, path, value, rule)
        return
    if WRITE not in access(who, node.perms):
        raise denied(view, path)
    node.value = value
    view.mark(path)


def m_mkdir(view: View, who: Actor, path: str, rule: QuotaRule) -> None:
    node = view.get(path)
    if node is None:
        m_create(view, who, path, b"", rule)
    elif WRITE not in access(who, node.perms):
        raise denied(view, path)


def m_rm(view: View, who: Actor, path: str) -> None:
    node = view.get(path)
    if node is None:
        if WRITE not in access(who, nearest(view, path).perms):
            raise ModelError("EACCES")
        if view.get(parent(path)) is None:
            raise ModelError("ENOENT")
        return  # a missing node with an existing parent: fine
    if WRITE not in access(who, node.perms):
        raise denied(view, path)
    if path == "/":
        raise ModelError("EINVAL")
    up = view.get(parent(path))
    if up is None:
        # Only a transaction's out-of-date view lacks the parent (C: EINVAL).
        raise ModelError("EINVAL")
    # C's walk: depth first, a node read on entry and removed on exit; a
    # listed child that cannot be read stops it with EIO, and what it had
    # removed stays removed, each taken out of its parent as it went.
    exited: list[str] = []

    def walk(current: str, cnode: MNode) -> bool:
        for name in list(cnode.children):
            cpath = child_path(current, name)
            # A name listed twice: removed when the walk left it the first time.
            child = None if cpath in exited else view.get(cpath)
            if child is None or not walk(cpath, child):
                return False
        exited.append(current)
        return True

    complete = walk(path, node)
    for p in exited:
        view.delete(p)
        if not complete:
            holder = view.get(parent(p))
            if holder is not None:
                holder.children.remove(basename(p))
            view.mark(parent(p))
    if not complete or basename(path) not in up.children:
        raise ModelError("EIO")
    up.children.remove(basename(path))
    view.mark(parent(path))


def m_set_perms(view: View, who: Actor, path: str, perms: tuple[Perm, ...]) -> None:
    if perms[0][1] not in EXISTING:
        raise ModelError("ENOENT")
    node = lookup(view, who, path, frozenset("wo"))
    if not who.privileged and perms[0][1] != node.perms[0][1]:
        raise ModelError("EPERM")
    node.perms = perms
    view.mark(path)


# -- talking to the engine -------------------------------------------------------


def request(
    engine: Engine, conn: Connection, op: int, payload: bytes, tx: int
) -> tuple[int, bytes]:
    engine.handle(conn, Packet(op, 1, tx, payload))
    out = conn.take_output()
    engine.take_pending()
    assert len(out) == 1, out  # no watches: exactly one reply
    rop, req, rtx, length = HEADER.unpack_from(out[0])
    assert (req, rtx, len(out[0])) == (1, tx, 16 + length)
    return rop, out[0][16:]


def error_name(reply: tuple[int, bytes]) -> str | None:
    op, payload = reply
    if op != ERROR:
        return None
    assert payload.endswith(b"\0")
    return payload[:-1].decode()


# -- strategies ------------------------------------------------------------------

NAMES = ("a", "b")
PATHS = sorted(
    {"/", "/tool", "/tool/xenstored"}
    | {f"/{x}" for x in NAMES}
    | {f"/{x}/{y}" for x in NAMES for y in NAMES}
    | {f"/{x}/{y}/{z}" for x in NAMES for y in NAMES for z in NAMES}
)
INVALID = ("/a/", "/a//b", "/a.b", "@a")
paths = st.sampled_from(PATHS)
#: Mostly valid paths, sometimes an invalid one.
any_paths = st.sampled_from(PATHS * 6 + list(INVALID))
values = st.binary(max_size=6)
actors = st.sampled_from(ACTORS)
#: Index into the actor's open transactions (2: outside any transaction).
tx_picks = st.sampled_from((0, 0, 1, 2))
perm_entry = st.tuples(st.sampled_from("nrwb"), st.sampled_from((0, 5, 6, 7)))
short_lists = st.lists(perm_entry, min_size=1, max_size=3)
long_lists = st.lists(perm_entry, min_size=PERM_QUOTA - 1, max_size=PERM_QUOTA + 1)
perm_lists = st.one_of(short_lists, short_lists, short_lists, long_lists).map(tuple)
#: The root's default letter and entries for the two domains.
root_perms = st.tuples(
    st.sampled_from("nrwb"), st.sampled_from("rwb"), st.sampled_from("nrwb")
)
BAD_PERMS = ("x5", "r", "r-1", "r65536")


class StoreMachine(RuleBasedStateMachine):
    rule_: QuotaRule = QuotaRule.AT_MOST_N

    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(
            EngineConfig(limits=Limits(nodes=NODE_QUOTA), quota_rule=self.rule_),
            hypervisor=MemoryHypervisor(EXISTING),
        )
        self.conns = {
            a.name: (
                self.engine.connect_socket()
                if a.privileged
                else self.engine.connect_domain(a.domid)
            )
            for a in ACTORS
        }
        self.model = Committed()
        self.txs: dict[str, list[MTx]] = {a.name: [] for a in ACTORS}

    # -- helpers -----------------------------------------------------------------

    def pick(self, who: Actor, index: int) -> MTx | None:
        open_txs = self.txs[who.name]
        return open_txs[index] if index < len(open_txs) else None

    def engine_state(self) -> dict[str, tuple[bytes, list[str], list[str], int]]:
        return {
            path: (n.value, [str(p) for p in n.perms], list(n.children), n.generation)
            for path, n in self.engine.store.walk()
        }

    def send(
        self, who: Actor, tx: MTx | None, op: int, payload: bytes
    ) -> tuple[int, bytes]:
        """Send a request, checking that a failed one changed nothing."""
        before = self.engine_state()
        reply = request(
            self.engine, self.conns[who.name], op, payload, tx.tx_id if tx else 0
        )
        if error_name(reply) is not None:
            assert self.engine_state() == before, "failed request left a trace"
        return reply

    def expect(
        self, reply: tuple[int, bytes], op: int, outcome: ModelError | bytes
    ) -> None:
        if isinstance(outcome, ModelError):
            assert error_name(reply) == outcome.code, (reply, outcome.code)
        else:
            assert reply == (op, outcome), (reply, outcome)

    def run(
        self, who: Actor, tx: MTx | None, action: Callable[[View], None]
    ) -> ModelError | None:
        """Apply a model action to the committed tree or the transaction.

        The model's operations check everything before they change
        anything, so a failed one leaves only the first accesses it made
        (which a transaction keeps, as in C), except an RM that finds a
        transaction's view out of date: that one keeps what it removed
        before, in the transaction, as C's does.
        """
        try:
            action(tx if tx is not None else self.model)
        except ModelError as error:
            return error
        return None

    # -- rules -------------------------------------------------------------------

    @initialize(letters=root_perms)
    def open_the_root(self, letters: tuple[str, str, str]) -> None:
        default, dom5, dom6 = letters
        self.set_perms(ACTORS[0], 9, "/", ((default, 0), (dom5, 5), (dom6, 6)))

    @rule(who=actors, pick=tx_picks, path=any_paths, value=values)
    def write(self, who: Actor, pick: int, path: str, value: bytes) -> None:
        tx = self.pick(who, pick)
        reply = self.send(who, tx, Op.WRITE, path.encode() + b"\0" + value)
        if path in INVALID:
            outcome: ModelError | bytes = ModelError("EINVAL")
        else:
            outcome = (
                self.run(who, tx, lambda v: m_write(v, who, path, value, self.rule_))
                or b"OK\0"
            )
        self.expect(reply, Op.WRITE, outcome)

    @rule(who=actors, pick=tx_picks, path=any_paths)
    def mkdir(self, who: Actor, pick: int, path: str) -> None:
        tx = self.pick(who, pick)
        reply = self.send(who, tx, Op.MKDIR, path.encode() + b"\0")
        if path in INVALID:
            outcome: ModelError | bytes = ModelError("EINVAL")
        else:
            outcome = (
                self.run(who, tx, lambda v: m_mkdir(v, who, path, self.rule_))
                or b"OK\0"
            )
        self.expect(reply, Op.MKDIR, outcome)

    @rule(who=actors, pick=tx_picks, path=any_paths)
    def rm(self, who: Actor, pick: int, path: str) -> None:
        tx = self.pick(who, pick)
        reply = self.send(who, tx, Op.RM, path.encode() + b"\0")
        if path in INVALID:
            outcome: ModelError | bytes = ModelError("EINVAL")
        else:
            outcome = self.run(who, tx, lambda v: m_rm(v, who, path)) or b"OK\0"
        self.expect(reply, Op.RM, outcome)

    def _read_like(self, who: Actor, pick: int, path: str, op: int) -> None:
        tx = self.pick(who, pick)
        reply = self.send(who, tx, op, path.encode() + b"\0")
        if path in INVALID and not (op == Op.GET_PERMS and path.startswith("@")):
            self.expect(reply, op, ModelError("EINVAL"))
            return
        if path.startswith("@"):
            return  # special paths: covered by test_engine
        result: list[bytes] = []

        def action(view: View) -> None:
            node = lookup(view, who, path, frozenset(READ))
            if op == Op.READ:
                result.append(node.value)
            elif op == Op.DIRECTORY:
                result.append(b"".join(c.encode() + b"\0" for c in node.children))
            else:
                result.append(
                    b"".join(
                        f"{letter}{d}".encode() + b"\0" for letter, d in node.perms
                    )
                )

        error = self.run(who, tx, action)
        self.expect(reply, op, error or result[0])

    @rule(who=actors, pick=tx_picks, path=any_paths)
    def read(self, who: Actor, pick: int, path: str) -> None:
        self._read_like(who, pick, path, Op.READ)

    @rule(who=actors, pick=tx_picks, path=any_paths)
    def directory(self, who: Actor, pick: int, path: str) -> None:
        self._read_like(who, pick, path, Op.DIRECTORY)

    @rule(who=actors, pick=tx_picks, path=any_paths)
    def get_perms(self, who: Actor, pick: int, path: str) -> None:
        self._read_like(who, pick, path, Op.GET_PERMS)

    @rule(
        who=actors,
        pick=tx_picks,
        path=paths,
        perms=perm_lists,
        bad=st.sampled_from(("",) * 12 + BAD_PERMS),
    )
    def set_perms(
        self, who: Actor, pick: int, path: str, perms: tuple[Perm, ...], bad: str = ""
    ) -> None:
        tx = self.pick(who, pick)
        texts = [f"{letter}{d}" for letter, d in perms] + ([bad] if bad else [])
        payload = b"".join(t.encode() + b"\0" for t in [path, *texts])
        reply = self.send(who, tx, Op.SET_PERMS, payload)
        if not who.privileged and exceeded(self.rule_, len(texts), PERM_QUOTA):
            outcome: ModelError | bytes = ModelError("ENOSPC")
        elif bad:
            outcome = ModelError("EINVAL")
        else:
            outcome = (
                self.run(who, tx, lambda v: m_set_perms(v, who, path, perms)) or b"OK\0"
            )
        self.expect(reply, Op.SET_PERMS, outcome)

    @rule(who=st.sampled_from(ACTORS[1:]), pick=tx_picks, path=paths, perms=perm_lists)
    def set_perms_keeping_owner(
        self, who: Actor, pick: int, path: str, perms: tuple[Perm, ...]
    ) -> None:
        """An unprivileged caller that names itself as the owner."""
        self.set_perms(who, pick, path, ((perms[0][0], who.domid), *perms[1:3]))

    @precondition(lambda self: self._owned_by_domains())
    @rule(data=st.data())
    def owner_sets_perms(self, data: st.DataObject) -> None:
        """A domain edits the permissions of a node it owns (EPERM if the
        list names another owner)."""
        path = data.draw(st.sampled_from(self._owned_by_domains()))
        who = ACTORS[1] if self.model.nodes[path].perms[0][1] == 5 else ACTORS[2]
        self.set_perms(who, data.draw(tx_picks), path, data.draw(perm_lists))

    def _owned_by_domains(self) -> list[str]:
        return sorted(p for p, n in self.model.nodes.items() if n.perms[0][1] in (5, 6))

    @precondition(lambda self: self._touched())
    @rule(data=st.data(), value=values)
    def interfere(self, data: st.DataObject, value: bytes) -> None:
        """The privileged actor writes a node an open transaction touched."""
        path = data.draw(st.sampled_from(self._touched()))
        self.write(ACTORS[0], 2, path, value)

    def _touched(self) -> list[str]:
        return sorted({p for ts in self.txs.values() for t in ts for p in t.first})

    def _near_touched(self) -> list[str]:
        """Touched paths, their parents and children: where a change bites."""
        near = set()
        for path in self._touched():
            if path != "/":
                near.add(path)
                near.add(parent(path))
            near.update(child_path(path, name) for name in NAMES)
        return sorted(p for p in near if p in PATHS and p != "/")

    @precondition(lambda self: self._touched())
    @rule(data=st.data())
    def interfere_rm(self, data: st.DataObject) -> None:
        """The privileged actor removes a touched node, its parent or child."""
        path = data.draw(st.sampled_from(self._near_touched()))
        self.rm(ACTORS[0], 2, path)

    @precondition(lambda self: self._touched())
    @rule(data=st.data(), value=values)
    def interfere_create(self, data: st.DataObject, value: bytes) -> None:
        """The privileged actor creates under or re-creates a touched node."""
        path = data.draw(st.sampled_from(self._near_touched()))
        self.write(ACTORS[0], 2, path, value)

    def _with_tx(self) -> list[tuple[Actor, int]]:
        return [(a, i) for a in ACTORS for i in range(len(self.txs[a.name]))]

    @precondition(lambda self: self._touched() and self._with_tx())
    @rule(data=st.data(), value=values)
    def tx_near(self, data: st.DataObject, value: bytes) -> None:
        """A transaction acts where its view may have gone out of date."""
        who, pick = data.draw(st.sampled_from(self._with_tx()))
        path = data.draw(st.sampled_from(self._near_touched()))
        action = data.draw(st.sampled_from(("rm", "rm", "write", "directory")))
        if action == "rm":
            self.rm(who, pick, path)
        elif action == "write":
            self.write(who, pick, path, value)
        else:
            self.directory(who, pick, path)

    @precondition(lambda self: any(len(t) < 2 for t in self.txs.values()))
    @rule(who=actors)
    def start(self, who: Actor) -> None:
        if len(self.txs[who.name]) >= 2:
            return
        op, payload = self.send(who, None, Op.TRANSACTION_START, b"\0")
        assert op == Op.TRANSACTION_START, payload
        tx_id = int(payload[:-1])
        assert tx_id != 0
        assert all(t.tx_id != tx_id for t in self.txs[who.name])
        self.txs[who.name].append(MTx(self.model, tx_id))

    @precondition(lambda self: any(self.txs.values()))
    @rule(data=st.data(), commit=st.sampled_from((True, True, True, False)))
    def end(self, data: st.DataObject, commit: bool) -> None:
        candidates = [(a, t) for a in ACTORS for t in self.txs[a.name]]
        who, tx = data.draw(st.sampled_from(candidates))
        self.txs[who.name].remove(tx)
        reply = self.send(who, tx, Op.TRANSACTION_END, b"T\0" if commit else b"F\0")
        outcome: ModelError | bytes = b"OK\0"
        if commit:
            try:
                tx.commit(self.rule_)
            except ModelError as error:
                outcome = error
        self.expect(reply, Op.TRANSACTION_END, outcome)
        # The id is dead whatever happened.
        assert error_name(self.send(who, tx, Op.READ, b"/\0")) == "ENOENT"

    # -- invariants -------------------------------------------------------------

    @invariant()
    def tree_matches_the_model(self) -> None:
        got = {
            path: (n.value, [str(p) for p in n.perms], list(n.children))
            for path, n in self.engine.store.walk()
        }
        want = {
            path: (n.value, [f"{letter}{d}" for letter, d in n.perms], n.children)
            for path, n in self.model.nodes.items()
        }
        assert got == want

    @invariant()
    def every_node_hangs_from_its_parent(self) -> None:
        store = self.engine.store
        nodes = dict(store.walk())
        assert len(nodes) == len(store)
        for path, node in nodes.items():
            assert store.get(path) is node, f"{path} is not found by its path"
            if path != "/":
                up = nodes.get(parent(path))
                assert up is not None, f"{path} has no parent"
                assert up.children.get(basename(path)) is node, f"{path} not linked"
            for name, child in node.children.items():
                assert child is not None, f"{path} lists missing {name}"

    @invariant()
    def owner_counts_match_a_recount(self) -> None:
        assert audit(self.engine) == []
        recount: dict[int, int] = {}
        for node in self.model.nodes.values():
            owner = node.perms[0][1]
            recount[owner] = recount.get(owner, 0) + 1
        for domid in (0, 5, 6):
            assert self.engine.store.owned(domid) == recount.get(domid, 0)


class AtMostNMachine(StoreMachine):
    rule_ = QuotaRule.AT_MOST_N


class BelowNMachine(StoreMachine):
    rule_ = QuotaRule.BELOW_N


TestStoreAtMostN = AtMostNMachine.TestCase
TestStoreAtMostN.settings = settings(max_examples=200, stateful_step_count=50)
TestStoreBelowN = BelowNMachine.TestCase
TestStoreBelowN.settings = settings(max_examples=100, stateful_step_count=50)
