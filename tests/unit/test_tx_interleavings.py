"""Transactions whose view of the tree goes out of date, and internal errors.

A transaction sees each node as it was at its first access (PROTOCOL.md
7.2), so another connection can change the tree between two of its steps:
remove a parent it has not read yet, create children its copy of a node
does not list, re-create what it saw absent.  Each sequence below came out
of a differential run against C xenstored 4.17; the answers are C's.  Such
a transaction can only end in EAGAIN, and the daemon must never fail on
one: before these fixes three of them closed the client's connection.

The last tests inject a failure into the store half way through a change
and check that the client gets EIO, the store is as it was, and the engine's
accounts still add up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pyxenstored.engine.audit import audit
from pyxenstored.store import tree
from pyxenstored.store.transaction import Transaction
from pyxenstored.wire import Op
from tests.enginepeer import ERROR, OK, Peer
from tests.unit.test_engine import World


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    assert audit(w.engine) == []


def listing(peer: Peer, path: str, tx: int = 0) -> list[str]:
    payload = peer.ok(Op.DIRECTORY, path, tx=tx)
    return [name for name in payload.decode().split("\0") if name]


def test_rm_whose_parent_vanished_from_the_view_is_einval(world: World) -> None:
    a, b = world.dom0, world.socket()
    tx = a.start()
    assert a.err(Op.READ, "/r/c", tx=tx) == "ENOENT"
    assert b.ok(Op.MKDIR, "/r/c/b/c") == OK
    assert a.err(Op.RM, "/r/c/b", tx=tx) == "EINVAL"
    assert a.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert listing(b, "/r/c/b") == ["c"]


def test_rm_of_a_node_its_parent_no_longer_lists_is_eio(world: World) -> None:
    a, b = world.dom0, world.socket()
    b.write_ok("/x/d", b"v")
    tx = a.start()
    assert a.ok(Op.READ, "/x/d", tx=tx) == b"v"
    assert b.ok(Op.RM, "/x/d") == OK
    assert a.err(Op.RM, "/x/d", tx=tx) == "EIO"
    # C removed the node in the transaction before it found the mismatch.
    assert a.err(Op.READ, "/x/d", tx=tx) == "ENOENT"
    assert a.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_rm_under_a_parent_copy_without_the_child_is_eio(world: World) -> None:
    a, b = world.dom0, world.socket()
    tx = a.start()
    a.write_ok("/x/c", b"v", tx=tx)
    b.write_ok("/x/c/a/c", b"w")
    assert a.err(Op.RM, "/x/c/a", tx=tx) == "EIO"
    assert a.err(Op.READ, "/x/c/a", tx=tx) == "ENOENT"
    assert a.err(Op.READ, "/x/c/a/c", tx=tx) == "ENOENT"
    assert a.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert b.ok(Op.READ, "/x/c/a/c") == b"w"


def test_rm_of_a_subtree_with_a_listed_child_gone_is_eio(world: World) -> None:
    a, b = world.dom0, world.socket()
    assert b.ok(Op.MKDIR, "/x/d/a/b") == OK
    tx = a.start()
    a.write_ok("/x/d/c", b"", tx=tx)
    assert b.ok(Op.RM, "/x/d/a") == OK
    assert a.err(Op.RM, "/x/d", tx=tx) == "EIO"
    # The walk stopped at the first child, before removing anything.
    assert listing(a, "/x/d", tx=tx) == ["a", "c"]
    assert a.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_a_walk_cut_short_keeps_what_it_removed(world: World) -> None:
    a, b = world.dom0, world.socket()
    b.write_ok("/x/d/a/b", b"")
    b.write_ok("/x/d/c", b"")
    tx = a.start()
    assert listing(a, "/x/d", tx=tx) == ["a", "c"]
    assert b.ok(Op.RM, "/x/d/c") == OK
    assert a.err(Op.RM, "/x/d", tx=tx) == "EIO"
    # /x/d/a went before the walk met the missing /x/d/c.
    assert listing(a, "/x/d", tx=tx) == ["c"]
    assert a.err(Op.READ, "/x/d/a/b", tx=tx) == "ENOENT"
    assert a.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert listing(b, "/x/d") == ["a"]


@pytest.mark.parametrize("create", [Op.MKDIR, Op.WRITE])
def test_a_node_created_and_removed_in_a_transaction_fires_nothing(
    world: World, create: Op
) -> None:
    a, w = world.dom0, world.socket()
    w.watch("/x", "t")
    tx = a.start()
    payload = b"/x/b/d\0" + (b"v" if create == Op.WRITE else b"")
    assert a.call(create, payload, tx=tx).payload == OK
    assert a.ok(Op.RM, "/x/b/d", tx=tx) == OK
    assert a.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    # /x/b stays, but ancestors created on the way fire nothing (6.2).
    assert w.events() == []
    assert listing(a, "/x/b") == []


@pytest.mark.parametrize("relative", [False, True])
def test_only_nodes_that_existed_fire_for_a_removed_subtree(
    world: World, relative: bool
) -> None:
    a, w = world.dom0, world.socket()
    assert a.ok(Op.MKDIR, "/local/domain/0/x/d/d") == OK
    base = "x" if relative else "/local/domain/0/x"
    w.watch(base, "t")
    w.watch(f"{base}/d/d/b", "u")
    tx = a.start()
    a.write_ok(f"{base}/d/d/b", b"v", tx=tx)
    assert a.ok(Op.RM, f"{base}/d", tx=tx) == OK
    assert a.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert w.events() == [(f"{base}/d", "t")]


def test_removed_descendants_that_existed_still_fire_exactly(world: World) -> None:
    a, w = world.dom0, world.socket()
    assert a.ok(Op.MKDIR, "/x/d/d") == OK
    w.watch("/x/d/d", "exact")
    tx = a.start()
    assert a.ok(Op.RM, "/x/d", tx=tx) == OK
    assert a.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert w.events() == [("/x/d/d", "exact")]


def test_set_perms_of_an_unknown_special_node_is_einval(world: World) -> None:
    # C 4.17 answers its left-over errno here (ENOENT or EINVAL, depending on
    # the request before): EINVAL is what its set_perms_special returns.
    assert world.dom0.err(Op.SET_PERMS, "@foo", "n0") == "EINVAL"


# -- internal errors -----------------------------------------------------------


def _fail_on(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, after: int
) -> None:
    """Make ``target.name`` raise on its ``after``-th call (1-based)."""
    original: Callable[..., object] = getattr(target, name)
    calls = [0]

    def failing(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == after:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)


def _store_state(world: World) -> tuple[object, ...]:
    store = world.engine.store
    return (
        world.snapshot(),
        dict(store.owner_counts),
        dict(store.owner_bytes),
        {path: node.acct for path, node in store.walk()},
    )


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        (Op.WRITE, b"/a/b/new/deep\0value"),
        (Op.WRITE, b"/a/b\0other"),
        (Op.RM, b"/a\0"),
        (Op.SET_PERMS, b"/a/b\0n5\0r0\0"),
        (Op.MKDIR, b"/a/c/d\0"),
    ],
)
@pytest.mark.parametrize("after", [1, 2, 3])
def test_an_internal_error_half_way_changes_nothing(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    op: Op,
    payload: bytes,
    after: int,
) -> None:
    dom0 = world.dom0
    dom0.write_ok("/a/b", b"v")
    dom0.write_ok("/a/b/c", b"w")
    dom0.write_ok("/a/z", b"")
    dom0.set_perms("/a/b/c", "n5", "r6")
    before = _store_state(world)
    # The Nth change to an account fails: changes before it were made.
    _fail_on(monkeypatch, type(world.engine.store), "_charge", after)
    reply = dom0.call(op, payload)
    monkeypatch.undo()
    if reply.op != ERROR:
        # The request made fewer changes than ``after``: nothing failed.
        assert _store_state(world) != before
        return
    assert Peer.error_of(reply) == "EIO"
    assert _store_state(world) == before
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "internal error" in r.message)
    ) == 1
    # The connection carries on.
    assert dom0.ok(Op.READ, "/a/b") == b"v"


def test_an_internal_error_in_a_commit_changes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    dom0, w = world.dom0, world.socket()
    dom0.write_ok("/a/b", b"v")
    w.watch("/a", "t")
    tx = dom0.start()
    dom0.write_ok("/a/b", b"new", tx=tx)
    dom0.write_ok("/a/c/d", b"", tx=tx)
    assert dom0.ok(Op.RM, "/a/b", tx=tx) == OK
    before = _store_state(world)
    w.events()
    _fail_on(monkeypatch, type(world.engine.store), "replace", 2)
    assert dom0.err(Op.TRANSACTION_END, "T", tx=tx) == "EIO"
    monkeypatch.undo()
    assert _store_state(world) == before
    assert w.events() == []
    assert dom0.ok(Op.READ, "/a/b") == b"v"


def test_an_internal_error_in_a_transaction_fails_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    dom0 = world.dom0
    tx = dom0.start()
    dom0.write_ok("/a", b"1", tx=tx)
    _fail_on(monkeypatch, Transaction, "touched", 1)
    assert Peer.error_of(dom0.write("/a", b"2", tx=tx)) == "EIO"
    monkeypatch.undo()
    # As C's fail_transaction: the commit cannot succeed.
    assert dom0.err(Op.TRANSACTION_END, "T", tx=tx) == "ENOMEM"
    assert dom0.err(Op.READ, "/a") == "ENOENT"


def test_an_error_in_a_handler_before_any_change(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    dom0 = world.dom0
    _fail_on(monkeypatch, tree, "lookup", 1)
    assert dom0.err(Op.READ, "/tool") == "EIO"
    monkeypatch.undo()
    assert dom0.ok(Op.READ, "/tool") == b""


# -- found by the randomized differential run (tests/difffuzz) ---------------------


def test_a_recreated_child_is_listed_twice_and_stops_rm(world: World) -> None:
    a, b = world.dom0, world.socket()
    b.write_ok("/r/a", b"")
    tx = a.start()
    assert a.ok(Op.READ, "/r", tx=tx) == b""
    assert b.ok(Op.RM, "/r/a") == OK
    a.write_ok("/r/a", b"", tx=tx)
    # C appends the name to its copy of /r a second time.
    assert listing(a, "/r", tx=tx) == ["a", "a"]
    part = a.ok(Op.DIRECTORY_PART, "/r", "0", tx=tx)
    assert part.split(b"\0")[1:] == [b"a", b"a", b"", b""]
    # RM meets /r/a again after removing it: EIO, /r keeps the second entry.
    assert a.err(Op.RM, "/r", tx=tx) == "EIO"
    assert listing(a, "/r", tx=tx) == ["a"]
    assert a.err(Op.READ, "/r/a", tx=tx) == "ENOENT"
    assert a.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    assert listing(b, "/r") == []


def test_rm_of_the_child_takes_the_first_entry(world: World) -> None:
    a, b = world.dom0, world.socket()
    b.write_ok("/r/a", b"")
    b.write_ok("/r/z", b"")
    tx = a.start()
    assert listing(a, "/r", tx=tx) == ["a", "z"]
    assert b.ok(Op.RM, "/r/a") == OK
    a.write_ok("/r/a", b"", tx=tx)
    assert a.ok(Op.RM, "/r/a", tx=tx) == OK
    assert listing(a, "/r", tx=tx) == ["z", "a"]


def test_a_missing_node_is_enoent_if_the_parent_grants_any_wanted_right(
    world: World,
) -> None:
    dom5 = world.domain(5)
    assert world.dom0.ok(Op.MKDIR, "/r/b") == OK
    world.dom0.set_perms("/r/b", "w0")
    # SET_PERMS wants write and owner; write on the parent is enough for C.
    assert dom5.err(Op.SET_PERMS, "/r/b/a", "r5") == "ENOENT"


def test_a_refused_request_in_a_transaction_accesses_the_ancestors(
    world: World,
) -> None:
    dom0, dom5 = world.dom0, world.domain(5)
    dom0.write_ok("/x/a", b"")
    tx = dom5.start()
    assert dom5.err(Op.DIRECTORY, "/x/a", tx=tx) == "EACCES"
    dom0.write_ok("/x", b"changed")
    # C read /x to choose the error: the commit now conflicts.
    assert dom5.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_a_refused_request_sees_the_ancestors_as_first_read(world: World) -> None:
    dom0, dom5 = world.dom0, world.domain(5)
    assert dom0.ok(Op.MKDIR, "/x/a") == OK
    dom0.set_perms("/x", "b5")
    tx = dom5.start()
    assert dom5.err(Op.READ, "/x/a", tx=tx) == "EACCES"
    assert dom0.ok(Op.RM, "/x") == OK
    assert listing(dom5, "/x", tx=tx) == ["a"]


@pytest.mark.parametrize("readable_before", [False, True])
def test_commit_events_are_seen_on_the_tree_as_committed_so_far(
    world: World, readable_before: bool
) -> None:
    dom0, other, guest = world.dom0, world.socket(), world.domain(5)
    dom0.write_ok("/x", b"")
    dom0.set_perms("/x", "n0", "r5") if readable_before else dom0.set_perms("/x", "n0")
    guest.watch("/x", "t")
    tx = other.start()
    assert other.ok(Op.MKDIR, "/x/d", tx=tx) == OK
    other.set_perms("/x", "n0" if readable_before else "b5", tx=tx)
    assert other.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    # /x/d fires first (first accessed first), when /x is still as before;
    # /x fires when it is as committed.  C's answers for both cases.
    expected = [("/x/d", "t"), ("/x", "t")] if readable_before else [("/x", "t")]
    assert guest.events() == expected


def test_unwatch_of_an_invalid_path_is_enoent(world: World) -> None:
    assert world.dom0.err(Op.UNWATCH, "/x/", "t") == "ENOENT"
