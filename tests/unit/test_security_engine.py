"""Engine-level checks of the hardening in store/ and engine/domains.py.

tests/integration/test_security_daemon.py attacks a real daemon; these pin the
pieces it relies on with exact engine state, no sockets: what a released
domain's clean-up does to open transactions and SET_TARGET links, the
memory quota at commit, the clean-up of domains that die before INTRODUCE,
and tree walks that must not recurse with the depth of a path (XSA-418).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from pyxenstored.engine import Connection, Engine, EngineConfig
from pyxenstored.engine.audit import audit
from pyxenstored.engine.domains import reap_unintroduced, release_changes
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.store import Limits
from pyxenstored.wire import Op, Packet

OK = b"OK\0"


class World:
    def __init__(self, **limits: int) -> None:
        self.hv = MemoryHypervisor({0, 1, 2})
        self.engine = Engine(EngineConfig(limits=Limits(**limits)), hypervisor=self.hv)
        self.dom0 = self.engine.connect_socket()

    def call(self, conn: Connection, op: int, payload: bytes, tx: int = 0) -> bytes:
        """One request; its reply payload (ERROR replies as ``b"E...\\0"``)."""
        self.engine.handle(conn, Packet(op, 7, tx, payload))
        replies = [m for m in conn.take_output() if m[:4] != b"\x0f\0\0\0"]
        assert len(replies) == 1, replies
        return replies[0][16:]

    def ok(self, conn: Connection, op: int, payload: bytes, tx: int = 0) -> bytes:
        reply = self.call(conn, op, payload, tx)
        assert not reply.startswith(b"E"), reply
        return reply

    def start(self, conn: Connection) -> int:
        return int(self.ok(conn, Op.TRANSACTION_START, b"\0")[:-1])

    def perms(self, path: str) -> list[str]:
        node = self.engine.store.get(path)
        assert node is not None, f"{path} is missing"
        return [str(p) for p in node.perms]

    def dies(self, domid: int) -> None:
        """What destroy_domain does for the store: the domain's clean-up."""
        self.hv.kill_domain(domid, remove=True)
        self.engine.fire(release_changes(self.engine, domid))


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    assert audit(w.engine) == []


def test_release_makes_transactions_naming_the_domain_conflict(world: World) -> None:
    d0 = world.dom0
    world.ok(d0, Op.WRITE, b"/x\0")
    world.ok(d0, Op.WRITE, b"/unrelated\0")
    naming = world.start(d0)
    world.ok(d0, Op.SET_PERMS, b"/x\0n0\0r1\0", naming)
    world.ok(d0, Op.WRITE, b"/made\0", naming)
    world.ok(d0, Op.SET_PERMS, b"/made\0n1\0", naming)
    other = world.start(d0)
    world.ok(d0, Op.WRITE, b"/unrelated\0v", other)
    world.ok(d0, Op.SET_PERMS, b"/unrelated\0n0\0r2\0", other)
    world.dies(1)
    assert world.call(d0, Op.TRANSACTION_END, b"T\0", naming) == b"EAGAIN\0"
    assert world.engine.store.get("/made") is None
    assert world.perms("/x") == ["n0"]
    assert world.ok(d0, Op.TRANSACTION_END, b"T\0", other) == OK
    assert world.perms("/unrelated") == ["n0", "r2"]
    assert world.engine.store.owned(1) == 0


def test_release_cuts_set_target_links(world: World) -> None:
    stub = world.engine.connect_domain(2)
    stub.target = 1
    world.dies(1)
    assert stub.target is None


def test_memory_quota_is_checked_again_at_commit() -> None:
    w = World(memory=4000, nodes=0)
    d0 = w.dom0
    w.ok(d0, Op.WRITE, b"/local/domain/1/a\0")
    w.ok(d0, Op.WRITE, b"/local/domain/1/b\0")
    w.ok(d0, Op.SET_PERMS, b"/local/domain/1/a\0n1\0")
    w.ok(d0, Op.SET_PERMS, b"/local/domain/1/b\0n1\0")
    g1 = w.engine.connect_domain(1)
    first, second = w.start(g1), w.start(g1)
    for tx, parent in ((first, b"a"), (second, b"b")):
        for i in range(2):
            path = b"/local/domain/1/" + parent + b"/%d\0" % i
            w.ok(g1, Op.WRITE, path + b"v" * 1000, tx)
    assert w.ok(g1, Op.TRANSACTION_END, b"T\0", first) == OK
    used = w.engine.store.owned_bytes(1)
    assert w.call(g1, Op.TRANSACTION_END, b"T\0", second) == b"ENOMEM\0"
    assert w.engine.store.owned_bytes(1) == used <= 4000
    # The privileged domain writing for the guest is not refused.
    tx = w.start(d0)
    w.ok(d0, Op.WRITE, b"/local/domain/1/b/big\0" + b"v" * 3000, tx)
    assert w.ok(d0, Op.TRANSACTION_END, b"T\0", tx) == OK
    assert audit(w.engine) == []


def test_reap_forgets_dead_domains_that_were_never_introduced(world: World) -> None:
    engine = world.engine
    d0 = world.dom0
    world.ok(d0, Op.WRITE, b"/local/domain/5/own\0")
    world.hv.create_domain(5)
    world.ok(d0, Op.SET_PERMS, b"/local/domain/5/own\0n5\0")
    world.ok(d0, Op.WRITE, b"/backend\0")
    world.ok(d0, Op.SET_PERMS, b"/backend\0n0\0r5\0r2\0r9\0")  # r9: stale
    world.ok(d0, Op.SET_QUOTA, b"5\0nodes\0" + b"77\0")
    world.ok(d0, Op.SET_FEATURE, b"5\0" + b"1\0")
    assert reap_unintroduced(engine) == []  # 5 is alive: nothing to do
    world.hv.kill_domain(5, remove=True)
    engine.fire(reap_unintroduced(engine))
    assert engine.store.get("/local/domain/5/own") is None
    assert world.perms("/backend") == ["n0", "r2", "r9"]
    assert engine.quotas.for_domain(5).nodes == 1000
    assert 5 not in engine.domains.featured_domids()
    # Nothing left to do, and the stale r9 is not churned at every VIRQ.
    assert reap_unintroduced(engine) == []


def test_deep_trees_are_walked_without_recursion(world: World) -> None:
    """XSA-418: ~1500 levels, with a recursion limit far below the depth."""
    d0 = world.dom0
    deepest = b"/d" + b"/a" * 1530
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        world.ok(d0, Op.WRITE, deepest + b"\0v")
        tx = world.start(d0)
        world.ok(d0, Op.RM, b"/d\0", tx)
        world.ok(d0, Op.TRANSACTION_END, b"T\0", tx)
        assert world.engine.store.get("/d") is None
        world.ok(d0, Op.WRITE, deepest + b"\0v")
        world.hv.create_domain(1)
        world.ok(d0, Op.SET_PERMS, b"/d\0n1\0")
        assert audit(world.engine) == []
        world.dies(1)
    finally:
        sys.setrecursionlimit(limit)
    assert world.engine.store.get("/d") is None
    assert len(world.engine.store) == 3
