"""Live update's pure core: the engine's whole state as stream records and back.

:func:`capture` and :func:`restore` (engine/livestate.py) are run through the
real codec (``encode_state`` / ``decode_state``) on engines driven with framed
requests; the CONTROL ``live-update`` session (engine/liveupdate.py) is driven
the same way, with a recording operator and a hand-moved clock; a ring
session's saved input and output (``pending_io`` / ``restore_io``) is checked
on a bytearray page against a session that never stopped.  Nothing here opens
a file or a socket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.engine import Connection, Engine, EngineConfig
from pyxenstored.engine.audit import audit
from pyxenstored.engine.domains import DomainInfo
from pyxenstored.engine.livestate import (
    ConnIO,
    Restored,
    RestoreError,
    capture,
    cold_start,
    restore,
)
from pyxenstored.engine.liveupdate import LiveUpdate, Verdict, verdict
from pyxenstored.engine.ringsession import RingSession
from pyxenstored.migration.xsstate import (
    ConnectionData,
    ConnType,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    StateRecord,
    StateStream,
    StateStreamError,
    TransactionData,
    WatchData,
    decode_state,
    encode_state,
)
from pyxenstored.perms import Access, Perm, Perms
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.store import Limits
from pyxenstored.store.node import Node, node_bytes
from pyxenstored.store.tree import Store
from pyxenstored.wire import HEADER, Op, Packet
from pyxenstored.wire.ops import ServerFeature
from pyxenstored.wire.ring import Ring
from tests.enginepeer import EVENT, OK, Msg, Peer, args
from tests.unit.test_ring_session import DOMID, Guest
from tests.wiretools import frame

#: Domains the stand-in hypervisor says exist; 9 and 12 do not.
EXISTING = frozenset({0, 5, 6, 7})
STALE = 9
DEPTH_FEATURES = (
    ServerFeature.RECONNECTION | ServerFeature.ERROR | ServerFeature.WATCHDEPTH
)
SPECIALS = ("@releaseDomain", "@introduceDomain")


def new_engine(**limits: int) -> Engine:
    return Engine(
        EngineConfig(limits=Limits(**limits)), hypervisor=MemoryHypervisor(EXISTING)
    )


def introduce(engine: Engine, domid: int) -> Peer:
    """A domain's ring connection, introduced as ``restore`` introduces one."""
    conn = engine.connect_domain(domid)
    engine.domains.add(conn, DomainInfo(domid, 0, -1))
    return Peer(engine, conn)


def watch(peer: Peer, path: str, token: str, *depth: str) -> None:
    """WATCH (with a depth if given): OK, then the initial event."""
    out = peer.raw(Op.WATCH, args(path, token, *depth))
    assert [m.op for m in out] == [Op.WATCH, EVENT], out
    assert out[1].event == (path, token)


def io_of(conn: Connection) -> ConnIO:
    """What a shell would say: socket descriptor 100+id, ring port 200+domid."""
    if conn.is_socket:
        return ConnIO(conn, socket_fd=100 + conn.id)
    return ConnIO(conn, port=200 + conn.domid)


@dataclass
class Updated:
    """An engine's state after capture, the codec and restore."""

    version: int
    records: list[StateRecord]
    stream: StateStream
    engine: Engine
    restored: Restored


def live_update(engine: Engine, ios: Sequence[ConnIO] | None = None) -> Updated:
    if ios is None:
        ios = [io_of(conn) for conn in engine.connections.values()]
    version, records = capture(engine, ios, socket_fd=3, evtchn_fd=4)
    stream = decode_state(encode_state(records, version))
    fresh = Engine(engine.config, hypervisor=MemoryHypervisor(EXISTING))
    return Updated(version, records, stream, fresh, restore(fresh, stream))


NodeRow = tuple[str, bytes, Perms]


def node_at(store: Store, path: str) -> Node:
    node = store.get(path)
    assert node is not None, path
    return node


def nodes(store: Store) -> list[NodeRow]:
    return [(path, node.value, node.perms) for path, node in store.walk()]


def preorder(peer: Peer, path: str = "/") -> list[str]:
    """Every path from ``path`` down, parents first, as DIRECTORY lists them."""
    found = [path]
    for name in peer.ok(Op.DIRECTORY, path).split(b"\0")[:-1]:
        found += preorder(peer, f"{path.rstrip('/')}/{name.decode('latin-1')}")
    return found


def watch_rows(engine: Engine, conn: Connection) -> list[tuple[object, ...]]:
    return [
        (w.wpath, w.path, w.token, w.depth, w.home) for w in engine.watches.of(conn.id)
    ]


# -- a rich state --------------------------------------------------------------------


@dataclass
class Rich:
    engine: Engine
    #: A socket client with absolute, relative, special and depth watches.
    dom0: Peer
    #: A socket client with two open transactions.
    other: Peer
    #: Domain 5 (feature word with watch depth, own quota, open transaction).
    dom5: Peer
    #: Domain 6, whose target is domain 5.
    dom6: Peer
    #: Transaction ids open on each connection, by connection id.
    open_tx: dict[int, set[int]]


def rich_state() -> Rich:
    engine = new_engine()
    dom0 = Peer(engine, engine.connect_socket())
    dom0.write_ok("/a", b"hello")
    dom0.write_ok("/empty")
    dom0.write_ok("/bin", b"\0\x01\xff\0")
    dom0.write_ok("/d/x/y", b"deep")
    dom0.set_perms("/d", "n0", "r5", f"b{STALE}", "w6")
    for domid in (5, 6):
        assert dom0.ok(Op.MKDIR, f"/local/domain/{domid}") == OK
        dom0.set_perms(f"/local/domain/{domid}", f"n{domid}", "r0")
    dom0.set_perms("@introduceDomain", "n0", "r5", f"r{STALE}")
    assert dom0.ok(Op.SET_QUOTA, "watches", "50") == OK
    assert dom0.ok(Op.SET_QUOTA, "memory", "123456") == OK
    # A feature word is set before INTRODUCE (SET_FEATURE refuses it after).
    assert dom0.ok(Op.SET_FEATURE, "5", str(int(DEPTH_FEATURES))) == OK
    dom5 = introduce(engine, 5)
    dom6 = introduce(engine, 6)
    assert dom0.ok(Op.SET_TARGET, "6", "5") == OK
    assert dom0.ok(Op.SET_QUOTA, "5", "nodes", "77") == OK
    assert dom0.ok(Op.SET_QUOTA, "7", "watches", "3") == OK  # not introduced
    dom5.write_ok("data", b"five")
    dom5.write_ok("/local/domain/5/bin", b"\0")
    watch(dom0, "/a", "abs")
    watch(dom0, "rel", "relative")
    watch(dom0, "@introduceDomain", "intro")
    watch(dom0, "/d", "deep", "1")
    watch(dom5, "data", "t5")
    watch(dom5, "/local/domain/5", "t5-depth", "2")
    watch(dom6, "/local/domain/5/data", "t6")
    other = Peer(engine, engine.connect_socket())
    committed = other.start()
    assert other.ok(Op.TRANSACTION_END, "T", tx=committed) == OK
    first = other.start()
    other.write_ok("/a", b"in a transaction", tx=first)
    second = other.start()
    tx5 = dom5.start()
    assert dom5.ok(Op.READ, "data", tx=tx5) == b"five"
    for peer in (dom0, other, dom5, dom6):
        peer.take()
    engine.take_pending()
    open_tx = {other.conn.id: {first, second}, dom5.conn.id: {tx5}}
    return Rich(engine, dom0, other, dom5, dom6, open_tx)


# -- 1. round trip --------------------------------------------------------------


def test_round_trip_restores_every_node_and_account() -> None:
    rich = rich_state()
    engine = rich.engine
    after = live_update(engine)
    new = after.engine
    assert audit(engine) == []
    assert audit(new) == []
    expected = preorder(rich.dom0)
    assert [path for path, _, _ in nodes(new.store)] == expected
    assert nodes(new.store) == nodes(engine.store)
    assert node_at(new.store, "/bin").value == b"\0\x01\xff\0"
    assert node_at(new.store, "/d").perms == (
        Perm(Access.NONE, 0),
        Perm(Access.READ, 5),
        Perm(Access.BOTH, STALE, stale=True),
        Perm(Access.WRITE, 6),
    )
    for name in SPECIALS:
        assert new.store.special[name].perms == engine.store.special[name].perms
    assert new.store.special["@introduceDomain"].perms[2] == Perm(
        Access.READ, STALE, stale=True
    )
    assert new.store.owner_counts == engine.store.owner_counts
    assert new.store.owner_bytes == engine.store.owner_bytes
    assert new.store.owner_counts[5] == 3
    # What a client reads: the same, through requests.
    reader = Peer(new, new.connect_socket())
    assert reader.ok(Op.READ, "/local/domain/5/data") == b"five"
    assert reader.ok(Op.GET_PERMS, "/d") == args("n0", "r5", f"b{STALE}", "w6")


def test_round_trip_restores_connections_watches_and_descriptors() -> None:
    rich = rich_state()
    engine = rich.engine
    originals = list(engine.connections.values())
    ios = [io_of(conn) for conn in originals]
    ios[0].in_data = b"\x02\0\0\0partial"
    ios[0].out_data = b"rest-of-a-reply" + HEADER.pack(Op.WRITE, 7, 0, 3) + OK
    ios[0].out_resp_len = len(b"rest-of-a-reply")
    after = live_update(engine, ios)
    new, restored = after.engine, after.restored
    assert (restored.socket_fd, restored.evtchn_fd) == (3, 4)
    assert len(restored.connections) == len(originals)
    for old, (conn, record) in zip(originals, restored.connections, strict=True):
        assert (conn.is_socket, conn.domid, conn.target, conn.privileged) == (
            old.is_socket,
            old.domid,
            old.target,
            old.privileged,
        )
        assert watch_rows(new, conn) == watch_rows(engine, old)
        if old.is_socket:
            assert record.conn_type is ConnType.SOCKET
            assert record.socket_fd == 100 + old.id
        else:
            assert record.conn_type is ConnType.RING
            assert record.evtchn == 200 + old.domid
    first = restored.connections[0][1]
    assert (first.in_data, first.out_data, first.out_resp_len) == (
        ios[0].in_data,
        ios[0].out_data,
        ios[0].out_resp_len,
    )
    # Independently of the engine's own tables: what the setup registered.
    dom0, dom5, dom6 = (restored.connections[i][0] for i in (0, 1, 2))
    assert [(w[0], w[2], w[3]) for w in watch_rows(new, dom0)] == [
        ("/a", "abs", None),
        ("rel", "relative", None),
        ("@introduceDomain", "intro", None),
        ("/d", "deep", 1),
    ]
    assert [(w[0], w[2], w[3]) for w in watch_rows(new, dom5)] == [
        ("data", "t5", None),
        ("/local/domain/5", "t5-depth", 2),
    ]
    assert (dom5.domid, dom6.domid, dom6.target) == (5, 6, 5)
    assert new.domains.domids() == [5, 6]
    assert new.domains.connection(5) is dom5
    # No initial event: the watches are not new to their clients.
    assert not new.pending
    assert all(not conn.out for conn in new.connections.values())
    # The restored watches fire, relative ones with relative paths.
    writer = Peer(new, new.connect_socket())
    writer.write_ok("/a", b"changed")
    writer.write_ok("/local/domain/0/rel", b"x")
    writer.write_ok("/local/domain/5/data", b"y")
    assert Peer(new, dom0).events() == [("/a", "abs"), ("rel", "relative")]
    assert Peer(new, dom5).events() == [
        ("data", "t5"),
        ("/local/domain/5/data", "t5-depth"),
    ]
    assert Peer(new, dom6).events() == [("/local/domain/5/data", "t6")]


def test_round_trip_dooms_open_transactions_under_their_ids() -> None:
    rich = rich_state()
    after = live_update(rich.engine)
    by_old_id = {
        old.id: conn
        for old, (conn, _) in zip(
            rich.engine.connections.values(), after.restored.connections, strict=True
        )
    }
    assert after.restored.doomed == 3
    for old in rich.engine.connections.values():
        conn = by_old_id[old.id]
        assert set(conn.transactions) == rich.open_tx.get(old.id, set())
        assert all(tx.doomed for tx in conn.transactions.values())
    other = Peer(after.engine, by_old_id[rich.other.conn.id])
    first, second = sorted(rich.open_tx[rich.other.conn.id])
    # A doomed transaction acts normally, over the restored tree...
    assert other.ok(Op.READ, "/a", tx=first) == b"hello"
    other.write_ok("/a", b"lost", tx=first)
    # ...and can only end in EAGAIN; an abort is fine.
    assert other.err(Op.TRANSACTION_END, "T", tx=first) == "EAGAIN"
    assert other.ok(Op.TRANSACTION_END, "F", tx=second) == OK
    assert node_at(after.engine.store, "/a").value == b"hello"
    # Ids are not reused once the doomed transactions are gone: the next
    # one is the id the old daemon would have given.
    assert other.start() == rich.other.start()
    dom5 = Peer(after.engine, by_old_id[rich.dom5.conn.id])
    (tx5,) = rich.open_tx[rich.dom5.conn.id]
    assert dom5.err(Op.TRANSACTION_END, "T", tx=tx5) == "EAGAIN"
    assert dom5.start() != tx5


def test_round_trip_restores_quotas_and_features() -> None:
    rich = rich_state()
    after = live_update(rich.engine)
    new = after.engine
    assert new.quotas.defaults == rich.engine.quotas.defaults
    assert (new.quotas.defaults.watches, new.quotas.defaults.memory) == (50, 123456)
    assert new.quotas.per_domain == rich.engine.quotas.per_domain
    assert new.quotas.for_domain(5).nodes == 77
    assert new.quotas.for_domain(7).watches == 3
    assert new.quotas.for_domain(6) == new.quotas.defaults
    assert new.domains.featured_domids() == [5]
    assert new.domain_features(5) == DEPTH_FEATURES
    assert new.domain_features(6) == rich.engine.domain_features(6)
    assert after.version == 2


def _plain(engine: Engine) -> Peer:
    dom0 = Peer(engine, engine.connect_socket())
    dom0.write_ok("/a", b"v")
    watch(dom0, "/a", "t")
    return dom0


def _with_depth(engine: Engine) -> None:
    watch(_plain(engine), "/b", "deep", "3")


def _with_feature(engine: Engine) -> None:
    assert _plain(engine).ok(Op.SET_FEATURE, "7", str(int(DEPTH_FEATURES))) == OK


@pytest.mark.parametrize(
    ("build", "version"),
    [(_plain, 1), (_with_depth, 2), (_with_feature, 2)],
    ids=["plain", "watch-depth", "feature-word"],
)
def test_version_two_only_for_a_depth_or_a_feature_word(
    build: Callable[[Engine], object], version: int
) -> None:
    engine = new_engine()
    build(engine)
    after = live_update(engine)
    assert after.version == after.stream.version == version
    (conn, _) = after.restored.connections[0]
    assert watch_rows(after.engine, conn) == watch_rows(
        engine, next(iter(engine.connections.values()))
    )
    assert after.engine.domains.featured_domids() == engine.domains.featured_domids()


def test_a_zero_feature_word_survives() -> None:
    """SET_FEATURE 7 0 takes every feature away; a live update keeps that.

    C's read_state_domain assigns the word from a version 2 stream whatever
    its value, so a domain set to 0 stays at 0.
    """
    engine = new_engine()
    dom0 = Peer(engine, engine.connect_socket())
    assert dom0.ok(Op.SET_FEATURE, "7", "0") == OK
    assert engine.domain_features(7) == ServerFeature.NONE
    after = live_update(engine)
    assert after.version == 2
    assert after.engine.domain_features(7) == ServerFeature.NONE


def test_a_domain_quota_equal_to_the_default_stays_the_domains() -> None:
    """An override that happens to equal the default is still an override:
    a later change of the default does not move it."""
    engine = new_engine()
    dom0 = Peer(engine, engine.connect_socket())
    default = engine.quotas.defaults.nodes
    assert dom0.ok(Op.SET_QUOTA, "5", "nodes", str(default)) == OK
    after = live_update(engine)
    restored = after.engine
    assert 5 in restored.quotas.per_domain
    restored.quotas.set_default("nodes", default * 2)
    assert restored.quotas.for_domain(5).nodes == default


# -- node trees with hypothesis ----------------------------------------------------


@dataclass(frozen=True)
class Step:
    kind: str
    path: str
    value: bytes = b""
    perms: tuple[str, ...] = ()


_NAMES = st.sampled_from(["a", "b", "c"])
_PATHS = st.lists(_NAMES, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
_ENTRY = st.builds(
    "{}{}".format, st.sampled_from("nrwb"), st.sampled_from([0, 5, 6, 7, STALE, 12])
)
_PERMS = st.builds(
    lambda owner, rest: (owner, *rest),
    st.builds("{}{}".format, st.sampled_from("nrwb"), st.sampled_from([0, 5, 6, 7])),
    st.lists(_ENTRY, max_size=3),
)
_STEPS = st.lists(
    st.one_of(
        st.builds(Step, st.just("write"), _PATHS, st.binary(max_size=6)),
        st.builds(
            Step,
            st.just("perms"),
            st.one_of(_PATHS, st.sampled_from(["/", *SPECIALS])),
            perms=_PERMS,
        ),
        st.builds(Step, st.just("rm"), _PATHS),
    ),
    max_size=12,
)


def _apply(peer: Peer, steps: Iterable[Step]) -> None:
    for step in steps:
        if step.kind == "write":
            peer.write_ok(step.path, step.value)
        elif step.kind == "perms":
            reply = peer.call(Op.SET_PERMS, args(step.path, *step.perms))
            assert reply.payload == OK or Peer.error_of(reply) == "ENOENT", reply
        else:
            reply = peer.call(Op.RM, args(step.path))
            assert reply.payload == OK or Peer.error_of(reply) == "ENOENT", reply


@settings(max_examples=60)
@given(_STEPS)
def test_random_trees_round_trip(steps: list[Step]) -> None:
    engine = new_engine()
    peer = Peer(engine, engine.connect_socket())
    _apply(peer, steps)
    after = live_update(engine)
    new = after.engine
    assert nodes(new.store) == nodes(engine.store)
    assert [p for p, _, _ in nodes(new.store)] == preorder(peer)
    for name in SPECIALS:
        assert new.store.special[name].perms == engine.store.special[name].perms
    assert new.store.owner_counts == engine.store.owner_counts
    assert new.store.owner_bytes == engine.store.owner_bytes
    assert audit(new) == []
    assert after.version == 1


# -- 2. record order ------------------------------------------------------------------


def test_records_come_in_c_order() -> None:
    rich = rich_state()
    _, records = capture(
        rich.engine,
        [io_of(c) for c in rich.engine.connections.values()],
        socket_fd=3,
        evtchn_fd=4,
    )
    assert records[0] == GlobalData(3, 4)
    assert isinstance(records[1], GlobalQuotaData)
    rest = list(records[2:])
    blocks: dict[int, list[StateRecord]] = {}
    while isinstance(head := rest[0], ConnectionData):
        del rest[0]
        block = blocks[head.conn_id] = []
        while isinstance(item := rest[0], (WatchData, TransactionData)):
            assert item.conn_id == head.conn_id
            block.append(rest.pop(0))
    assert list(blocks) == [1, 2, 3, 4]
    assert blocks[1] == [
        WatchData(1, "/a", "abs"),
        WatchData(1, "rel", "relative"),
        WatchData(1, "@introduceDomain", "intro"),
        WatchData(1, "/d", "deep", 1),
    ]
    (tx5,) = rich.open_tx[rich.dom5.conn.id]
    assert blocks[2] == [
        WatchData(2, "data", "t5"),
        WatchData(2, "/local/domain/5", "t5-depth", 2),
        TransactionData(2, tx5),
    ]
    assert blocks[3] == [WatchData(3, "/local/domain/5/data", "t6")]
    assert blocks[4] == [
        TransactionData(4, tx) for tx in sorted(rich.open_tx[rich.other.conn.id])
    ]
    node_paths = [r.path for r in rest if isinstance(r, NodeData)]
    assert node_paths == [*preorder(rich.dom0), *SPECIALS]
    assert all(isinstance(r, NodeData) for r in rest[: len(node_paths)])
    domains = [r.domid for r in rest[len(node_paths) :] if isinstance(r, DomainData)]
    assert len(rest) == len(node_paths) + len(domains)
    assert domains == [5, 6, 7]


# -- 3. restore errors ------------------------------------------------------------


_ROOT = NodeData("/", b"", (Perm(Access.NONE, 0),))
_OWNED = (Perm(Access.NONE, 0),)


def _stream(*records: StateRecord) -> StateStream:
    return decode_state(encode_state([GlobalData(-1, -1), *records]))


def _restore_fails(stream: StateStream, index: int) -> RestoreError:
    """Restore fails at record ``index`` (0 is the global record)."""
    with pytest.raises(RestoreError) as info:
        restore(new_engine(), stream)
    assert info.value.offset == stream.offsets[index]
    return info.value


def test_restore_refuses_a_node_without_its_parent() -> None:
    stream = _stream(_ROOT, NodeData("/a", b"", _OWNED), NodeData("/b/c", b"", _OWNED))
    assert "parent missing" in _restore_fails(stream, 3).reason


def test_restore_refuses_a_node_twice() -> None:
    stream = _stream(_ROOT, NodeData("/a", b"1", _OWNED), NodeData("/a", b"2", _OWNED))
    assert "repeated" in _restore_fails(stream, 3).reason


@pytest.mark.parametrize("path", ["a", "/a/", "/a//b", "/a b", "@other", "//a"])
def test_restore_refuses_a_bad_node_path(path: str) -> None:
    stream = _stream(_ROOT, NodeData("/a", b"", _OWNED), NodeData(path, b"", _OWNED))
    assert "bad node path" in _restore_fails(stream, 3).reason


def test_restore_refuses_two_rings_of_one_domain() -> None:
    stream = _stream(
        ConnectionData(1, ConnType.RING, domid=5),
        ConnectionData(2, ConnType.SOCKET, socket_fd=7),
        ConnectionData(3, ConnType.RING, domid=5),
    )
    assert "two ring connections" in _restore_fails(stream, 3).reason


def _swap(stream: StateStream, index: int, record: StateRecord) -> StateStream:
    """``stream`` with one record replaced, keeping the offsets."""
    records = list(stream.records)
    records[index] = record
    return dataclasses.replace(stream, records=tuple(records))


@pytest.mark.parametrize(
    "bad",
    [
        WatchData(2, "/a", "t"),
        TransactionData(2, 1),
        ConnectionData(1, ConnType.SOCKET),
    ],
    ids=["watch", "transaction", "connection-twice"],
)
def test_restore_refuses_references_the_decoder_would_refuse(
    bad: StateRecord,
) -> None:
    """A stream the codec checked cannot hold these; restore still refuses."""
    good = _stream(ConnectionData(1, ConnType.SOCKET), WatchData(1, "/a", "t"), _ROOT)
    stream = _swap(good, 2, bad)
    with pytest.raises(StateStreamError):
        decode_state(encode_state(stream.records))
    _restore_fails(stream, 2)


def test_restore_refuses_a_node_without_owner() -> None:
    good = _stream(_ROOT, NodeData("/a", b"", _OWNED))
    _restore_fails(_swap(good, 2, NodeData("/a", b"", ())), 2)


# -- 4. cold start --------------------------------------------------------------


def _with_pending_node(rich: Rich) -> StateStream:
    """The rich state's stream plus a node of the open transaction of conn 4."""
    _, records = capture(
        rich.engine,
        [io_of(c) for c in rich.engine.connections.values()],
        socket_fd=3,
        evtchn_fd=4,
    )
    tx = min(rich.open_tx[rich.other.conn.id])
    at = next(i for i, r in enumerate(records) if isinstance(r, DomainData))
    pending = NodeData("/pending", b"p", _OWNED, conn_id=4, tx_id=tx, access=2)
    records.insert(at, pending)
    return decode_state(encode_state(records, 2))


def test_restore_ignores_nodes_of_open_transactions() -> None:
    rich = rich_state()
    engine = new_engine()
    restore(engine, _with_pending_node(rich))
    assert engine.store.get("/pending") is None
    assert nodes(engine.store) == nodes(rich.engine.store)


def test_cold_start_keeps_committed_nodes_quotas_and_domains() -> None:
    rich = rich_state()
    stream = _with_pending_node(rich)
    cold = cold_start(stream)
    kept = [
        (r, o)
        for r, o in zip(stream.records, stream.offsets, strict=True)
        if isinstance(r, (GlobalQuotaData, DomainData))
        or (isinstance(r, NodeData) and r.conn_id == 0)
    ]
    assert list(zip(cold.records, cold.offsets, strict=True)) == kept
    assert cold.version == stream.version
    assert any(isinstance(r, NodeData) and r.conn_id for r in stream.records)
    engine = new_engine()
    restored = restore(engine, cold)
    assert restored.connections == []
    assert (restored.socket_fd, restored.evtchn_fd, restored.doomed) == (-1, -1, 0)
    assert engine.connections == {}
    assert len(engine.domains) == 0
    assert len(engine.watches) == 0
    assert nodes(engine.store) == nodes(rich.engine.store)
    for name in SPECIALS:
        assert engine.store.special[name].perms == rich.engine.store.special[name].perms
    assert engine.quotas.defaults == rich.engine.quotas.defaults
    assert engine.quotas.per_domain == rich.engine.quotas.per_domain
    assert engine.domain_features(5) == DEPTH_FEATURES
    assert audit(engine) == []


# -- 5. the CONTROL live-update session ---------------------------------------------


class RecordingOperator:
    """An operator that records what CONTROL asks of it."""

    def __init__(self, problem: str | None = None) -> None:
        #: What ``check_update_binary`` answers.
        self.problem = problem
        self.calls: list[tuple[str, ...]] = []

    def note(self, text: str) -> None:
        self.calls.append(("note", text))

    def set_tracing(self, on: bool) -> None:
        self.calls.append(("tracing", str(on)))

    def set_trace_file(self, path: str) -> None:
        self.calls.append(("trace-file", path))

    def append_report(self, path: str | None, text: str) -> None:
        self.calls.append(("report", str(path)))

    def check_update_binary(self, path: str) -> str | None:
        self.calls.append(("check", path))
        return self.problem

    def live_update_started(self) -> None:
        self.calls.append(("started",))


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Session:
    engine: Engine
    operator: RecordingOperator
    clock: Clock
    #: The socket client that runs ``xenstore-control live-update``.
    owner: Peer
    #: Another privileged socket client.
    other: Peer


@pytest.fixture
def session() -> Session:
    engine = new_engine()
    operator = RecordingOperator()
    clock = Clock()
    engine.operator = operator
    engine.clock = clock
    owner = Peer(engine, engine.connect_socket())
    other = Peer(engine, engine.connect_socket())
    return Session(engine, operator, clock, owner, other)


def answer(peer: Peer, *words: str) -> str:
    """The text a live-update sub-command answers (a CONTROL reply)."""
    reply = peer.call(Op.CONTROL, args("live-update", *words))
    assert reply.op == Op.CONTROL, reply
    assert reply.payload.endswith(b"\0")
    return reply.payload[:-1].decode()


def start(peer: Peer, *options: str) -> int:
    """``-s``: no reply (yet); the request id to expect it under."""
    assert peer.raw(Op.CONTROL, args("live-update", "-s", *options)) == []
    return peer.req


def current(engine: Engine) -> LiveUpdate:
    assert engine.live_update is not None
    return engine.live_update


NOT_IN = "Not in live-update session."


def test_session_sub_commands_answer_as_c(session: Session) -> None:
    owner, other, operator = session.owner, session.other, session.operator
    assert answer(owner, "-a") == "No live-update session active."
    assert answer(owner, "-c", "x") == NOT_IN
    assert answer(owner, "-f", "/bin/true") == "OK"
    lu = current(session.engine)
    assert (lu.conn, lu.binary, lu.started_at) == (owner.conn, "/bin/true", None)
    assert answer(owner, "-f", "/bin/true") == "live-update session already active."
    assert answer(other, "-f", "/bin/false") == "live-update session already active."
    assert current(session.engine) is lu
    assert answer(other, "-c", "--other") == NOT_IN
    assert answer(owner, "-c", "--no-fork -T /tmp/t") == "OK"
    assert lu.cmdline == "--no-fork -T /tmp/t"
    assert answer(other, "-s") == NOT_IN
    assert answer(other, "-s", "-t", "5") == NOT_IN
    assert ("started",) not in operator.calls
    session.clock.now = 1234.5
    req = start(owner, "-t", "30", "-F", "-v", "2")
    assert (lu.timeout, lu.force, lu.version, lu.started_at) == (30.0, True, 2, 1234.5)
    payload = args("live-update", "-s", "-t", "30", "-F", "-v", "2")
    assert lu.request == Packet(Op.CONTROL, req, 0, payload)
    assert operator.calls.count(("started",)) == 1
    assert answer(owner, "-s") == "live-update session already active."
    assert operator.calls.count(("started",)) == 1
    assert [c for c in operator.calls if c[0] == "check"] == [
        ("check", "/bin/true"),
        ("check", "/bin/true"),
        ("check", "/bin/false"),
    ]
    # -a from anyone: the -s request gets its answer, then -a its own.
    assert answer(other, "-a") == "OK"
    assert owner.take() == [Msg(Op.CONTROL, req, 0, b"Cancellation was requested\0")]
    assert session.engine.live_update is None


def test_start_defaults(session: Session) -> None:
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    start(session.owner)
    lu = current(session.engine)
    assert (lu.timeout, lu.force, lu.version) == (0.0, False, None)


def test_abort_of_a_session_not_started(session: Session) -> None:
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    assert answer(session.other, "-a") == "OK"
    assert session.engine.live_update is None
    assert session.owner.take() == []


def test_a_binary_the_operator_refuses_opens_no_session(session: Session) -> None:
    session.operator.problem = "/nope: not executable."
    assert answer(session.owner, "-f", "/nope") == "/nope: not executable."
    assert session.engine.live_update is None


def test_an_engine_on_its_own_cannot_update() -> None:
    engine = new_engine()
    peer = Peer(engine, engine.connect_socket())
    assert answer(peer, "-f", "/bin/true") == "Live update is not possible here."
    assert engine.live_update is None


@pytest.mark.parametrize(
    "words",
    [
        (),
        ("-z",),
        ("-f",),
        ("-f", "a", "b"),
        ("-c",),
        ("-a", "x"),
        ("-s", "-t"),
        ("-s", "-t", "x"),
        ("-s", "-t", "-5"),
        ("-s", "-v", "3"),
        ("-s", "-v"),
        ("-s", "-q"),
        ("-s", "30"),
    ],
)
def test_malformed_sub_commands_are_einval(
    session: Session, words: tuple[str, ...]
) -> None:
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    reply = session.owner.call(Op.CONTROL, args("live-update", *words))
    assert Peer.error_of(reply) == "EINVAL"
    assert current(session.engine).started_at is None
    assert ("started",) not in session.operator.calls


def test_verdict_goes_at_once_without_transactions(session: Session) -> None:
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    start(session.owner, "-t", "60")
    lu = current(session.engine)
    assert verdict(session.engine, lu, session.clock.now) == (Verdict.GO, "")


def _old_transactions(session: Session) -> None:
    """dom0 opens a transaction at 100, domain 5 at 103; -s at 103."""
    session.clock.now = 100.0
    session.other.start()
    dom5 = introduce(session.engine, 5)
    session.clock.now = 103.0
    dom5.start()


def test_verdict_waits_for_transactions_then_rejects(session: Session) -> None:
    _old_transactions(session)
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    start(session.owner, "-t", "10")
    lu = current(session.engine)
    for now in (103.0, 108.0, 112.9):
        assert verdict(session.engine, lu, now) == (Verdict.WAIT, "")
    assert verdict(session.engine, lu, 113.0) == (
        Verdict.REJECT,
        "Domains with long running transactions:\nDomain 0: 13 s\nDomain 5: 10 s",
    )
    assert verdict(session.engine, lu, 115.7)[1].endswith("Domain 5: 12 s")


def test_verdict_forced_goes_after_the_timeout(session: Session) -> None:
    _old_transactions(session)
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    start(session.owner, "-t", "10", "-F")
    lu = current(session.engine)
    assert verdict(session.engine, lu, 108.0) == (Verdict.WAIT, "")
    assert verdict(session.engine, lu, 113.0) == (Verdict.GO, "")


def test_verdict_goes_once_the_transactions_end(session: Session) -> None:
    session.clock.now = 100.0
    tx = session.other.start()
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    start(session.owner, "-t", "10")
    lu = current(session.engine)
    assert verdict(session.engine, lu, 101.0) == (Verdict.WAIT, "")
    assert session.other.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert verdict(session.engine, lu, 101.0) == (Verdict.GO, "")


def test_new_transactions_are_parked_until_the_session_ends(session: Session) -> None:
    engine = session.engine
    busy = Peer(engine, engine.connect_socket())
    tx = busy.start()
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    req_s = start(session.owner)
    idle = session.other
    assert idle.raw(Op.TRANSACTION_START, b"\0") == []
    first = idle.req
    assert idle.raw(Op.WRITE, b"/parked\0v") == []
    assert idle.raw(Op.READ, b"/parked\0") == []
    assert engine.store.get("/parked") is None
    # A connection with a transaction open may open another one.
    second = int(busy.ok(Op.TRANSACTION_START, "")[:-1])
    assert second != tx
    # Other requests of connections without a parked one are not held.
    bystander = Peer(engine, engine.connect_socket())
    bystander.write_ok("/free", b"1")
    assert answer(bystander, "-a") == "OK"
    assert session.owner.take() == [
        Msg(Op.CONTROL, req_s, 0, b"Cancellation was requested\0")
    ]
    out = idle.take()
    assert [(m.op, m.req) for m in out] == [
        (Op.TRANSACTION_START, first),
        (Op.WRITE, first + 1),
        (Op.READ, first + 2),
    ]
    assert out[1].payload == OK
    assert out[2].payload == b"v"
    assert idle.conn.parked is None
    assert len(idle.conn.transactions) == 1


def test_closing_the_session_connection_ends_it(session: Session) -> None:
    engine = session.engine
    assert answer(session.owner, "-f", "/bin/true") == "OK"
    start(session.owner, "-t", "30")
    assert session.other.raw(Op.TRANSACTION_START, b"\0") == []
    engine.disconnect(session.owner.conn)
    assert engine.live_update is None
    out = session.other.take()
    assert [(m.op, m.req) for m in out] == [(Op.TRANSACTION_START, session.other.req)]
    # New transactions are no longer parked.
    Peer(engine, engine.connect_socket()).start()


# -- 6. a ring's saved input and output -------------------------------------------


VALUE = b"x" * 600


def _guest_reads(g: Guest) -> bytes:
    """Every byte the guest can read, letting the session write between reads."""
    stream = b""
    while True:
        g.session.process()
        data = g.ring.read_replies()
        if not data:
            return stream
        stream += data


@dataclass
class Cut:
    """The guest's ring, stopped where a live update saves it."""

    g: Guest
    #: The request the guest has written only the first 20 bytes of.
    partial: bytes
    #: Parked requests (already taken off the ring).
    parked: list[bytes]


def _stop_mid_stream(parked: bool) -> Cut:
    g = Guest()
    g.engine.operator = RecordingOperator()
    dom0 = Peer(g.engine, g.engine.connect_socket())
    g.send(Op.WATCH, b"data2\0w\0")
    g.send(Op.WRITE, b"data\0" + VALUE)
    _guest_reads(g)
    if parked:
        assert answer(dom0, "-f", "/bin/true") == "OK"
    # Two 616-byte replies into the emptied 1024-byte ring: the first fits,
    # 408 bytes of the second go in and its last 208 wait.
    first, second = g.send(Op.READ, b"data\0"), g.send(Op.READ, b"data\0")
    g.session.process()
    dom0.write_ok("/local/domain/5/data2/x", b"event")
    g._flush()
    queued: list[bytes] = []
    if parked:
        queued = [
            frame(Op.TRANSACTION_START, b"\0", 20),
            frame(Op.WRITE, b"data2\0parked", 21),
        ]
        for request in queued:
            assert g.ring.write_requests(request) == len(request)
        g.session.process()
        assert g.conn.parked is not None
        assert [
            frame(p.op, p.payload, p.req_id, p.tx_id) for p in g.conn.parked
        ] == queued
    partial = frame(Op.WRITE, b"data2/y\0hello world", 22)
    g.ring.write_requests(partial[:20])
    g.session.process()
    assert (first, second) == (3, 4)
    return Cut(g, partial, queued)


def _expected_stream(parked: bool) -> bytes:
    """What the guest reads, written out from the protocol, not the code."""
    reply = frame(Op.READ, VALUE, 3) + frame(Op.READ, VALUE, 4)
    event_x = frame(EVENT, b"data2/x\0w\0", 0)
    tail = b""
    if parked:
        tail += frame(Op.TRANSACTION_START, b"1\0", 20)
        tail += frame(EVENT, b"data2\0w\0", 0) + frame(Op.WRITE, OK, 21)
    tail += frame(EVENT, b"data2/y\0w\0", 0) + frame(Op.WRITE, OK, 22)
    return reply + event_x + tail


@pytest.mark.parametrize("parked", [False, True], ids=["plain", "parked"])
def test_ring_io_survives_the_update(parked: bool) -> None:
    # The session that never stops.
    cut = _stop_mid_stream(parked)
    g = cut.g
    if parked:
        g.engine.end_live_update()  # -a: the parked requests are handled now
        g._flush()
    g.ring.write_requests(cut.partial[20:])
    without_update = _guest_reads(g)
    assert without_update == _expected_stream(parked)

    # The same, with the state saved and restored in between.
    cut = _stop_mid_stream(parked)
    g = cut.g
    in_data, out_data, resp_len = g.session.pending_io()
    assert in_data == cut.partial[:20]
    written = 1024 - len(frame(Op.READ, VALUE, 3))
    assert resp_len == len(frame(Op.READ, VALUE, 4)) - written
    assert out_data == (
        frame(Op.READ, VALUE, 4)[written:] + frame(EVENT, b"data2/x\0w\0", 0)
    )
    ios = []
    for conn in g.engine.connections.values():
        io = io_of(conn)
        if conn is g.conn:
            io.in_data = b"".join(cut.parked) + in_data
            io.out_data, io.out_resp_len = out_data, resp_len
        ios.append(io)
    version, records = capture(g.engine, ios, socket_fd=3, evtchn_fd=-1)
    engine = Engine(EngineConfig(), hypervisor=MemoryHypervisor({0, DOMID}))
    restored = restore(engine, decode_state(encode_state(records, version)))
    ((conn, saved),) = [
        (c, r) for c, r in restored.connections if r.conn_type is ConnType.RING
    ]
    g.engine, g.conn = engine, conn
    g.session = RingSession(
        engine,
        conn,
        Ring(memoryview(g.page)),
        g._kick,
        g._unmap,
        clock=g.clock,
        after_request=g._flush,
    )
    g.session.restore_io(saved.in_data, saved.out_data, saved.out_resp_len)
    g.ring.write_requests(cut.partial[20:])
    assert _guest_reads(g) == without_update
    assert node_at(engine.store, "/local/domain/5/data2/y").value == b"hello world"


# -- 7. Store.restore_node ------------------------------------------------------------


def _recount(store: Store) -> tuple[dict[int, int], dict[int, int]]:
    counts: dict[int, int] = {}
    charged: dict[int, int] = {}
    for path, node in store.walk():
        owner = node.perms[0].domid
        counts[owner] = counts.get(owner, 0) + 1
        charged[owner] = charged.get(owner, 0) + node_bytes(path, node)
    return counts, charged


def test_restore_node_replaces_the_root_and_keeps_its_children() -> None:
    store = Store(0)
    assert list(store.root.children) == ["tool"]
    perms = (Perm(Access.BOTH, 5), Perm(Access.READ, 0))
    assert store.restore_node("/", b"root", perms)
    assert (store.root.value, store.root.perms) == (b"root", perms)
    assert list(store.root.children) == ["tool"]
    assert store.get("/tool/xenstored") is not None
    assert store.owner_counts == {0: 2, 5: 1}
    assert (store.owner_counts, store.owner_bytes) == _recount(store)


def test_restore_node_links_children_and_counts_them() -> None:
    store = Store(0, skeleton=False)
    assert store.restore_node("/a", b"1", (Perm(Access.NONE, 5),))
    assert store.restore_node("/a/b", b"\0two", (Perm(Access.READ, 6),))
    assert store.restore_node("/c", b"", (Perm(Access.NONE, 5),))
    assert [p for p, _ in store.walk()] == ["/", "/a", "/a/b", "/c"]
    assert node_at(store, "/a/b").value == b"\0two"
    assert store.owner_counts == {0: 1, 5: 2, 6: 1}
    assert len(store) == 4
    assert (store.owner_counts, store.owner_bytes) == _recount(store)


def test_restore_node_refuses_a_missing_parent_and_a_repeat() -> None:
    store = Store(0, skeleton=False)
    assert store.restore_node("/a", b"1", (Perm(Access.NONE, 5),))
    before = (dict(store.owner_counts), dict(store.owner_bytes))
    assert not store.restore_node("/x/y", b"", (Perm(Access.NONE, 5),))
    assert not store.restore_node("/a", b"2", (Perm(Access.NONE, 6),))
    assert node_at(store, "/a").value == b"1"
    assert store.get("/x") is None
    assert (store.owner_counts, store.owner_bytes) == before
