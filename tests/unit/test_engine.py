"""Packets in, replies and watch events out: the engine against PROTOCOL.md.

Every test drives a real :class:`Engine` with framed requests and looks at
the exact messages it queues on each connection.  Domain connections are
made with ``engine.connect_domain``; the only stand-in is the hypervisor's
answer to "does domain N exist" (domains 0, 5 and 6 do).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyxenstored.engine import Engine, EngineConfig
from pyxenstored.engine.audit import audit
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.store import Limits, QuotaRule
from pyxenstored.wire import HEADER, Op, Packet
from tests.enginepeer import ERROR, EVENT, OK, Msg, Peer, args

EXISTING = frozenset({0, 5, 6})
RULES = [QuotaRule.AT_MOST_N, QuotaRule.BELOW_N]


class World:
    """An engine, its privileged socket client, and domain connections."""

    def __init__(self, rule: QuotaRule = QuotaRule.AT_MOST_N, **limits: int) -> None:
        self.engine = Engine(
            EngineConfig(limits=Limits(**limits), quota_rule=rule),
            hypervisor=MemoryHypervisor(EXISTING),
        )
        self.dom0 = Peer(self.engine, self.engine.connect_socket())

    def socket(self) -> Peer:
        return Peer(self.engine, self.engine.connect_socket())

    def domain(self, domid: int, *, home: bool = True) -> Peer:
        """A ring connection of ``domid``, owning its home if ``home``."""
        if home:
            path = f"/local/domain/{domid}"
            if self.engine.store.get(path) is None:
                assert self.dom0.ok(Op.MKDIR, path) == OK
                self.dom0.set_perms(path, f"n{domid}")
        return Peer(self.engine, self.engine.connect_domain(domid))

    def snapshot(self) -> dict[str, tuple[bytes, list[str], list[str], int]]:
        return {
            path: (n.value, [str(p) for p in n.perms], list(n.children), n.generation)
            for path, n in self.engine.store.walk()
        }


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    assert audit(w.engine) == []


def events(out: list[Msg]) -> list[tuple[str, str]]:
    return [m.event for m in out if m.op == EVENT]


# -- exact bytes ---------------------------------------------------------------


def test_reply_bytes_copy_req_and_tx_id(world: World) -> None:
    world.dom0.write_ok("/a", b"hello")
    conn = world.dom0.conn
    world.engine.handle(conn, Packet(Op.READ, 0xDEADBEEF, 0, b"/a\0"))
    assert conn.take_output() == [HEADER.pack(2, 0xDEADBEEF, 0, 5) + b"hello"]
    world.engine.handle(conn, Packet(Op.READ, 9, 0, b"/nope\0"))
    assert conn.take_output() == [HEADER.pack(16, 9, 0, 7) + b"ENOENT\0"]
    world.engine.handle(conn, Packet(Op.READ, 10, 77, b"/a\0"))
    assert conn.take_output() == [HEADER.pack(16, 10, 77, 7) + b"ENOENT\0"]
    tx = world.dom0.start()
    world.engine.handle(conn, Packet(Op.WRITE, 11, tx, b"/a\0x"))
    assert conn.take_output() == [HEADER.pack(11, 11, tx, 3) + b"OK\0"]


def test_watch_event_bytes(world: World) -> None:
    conn = world.dom0.conn
    world.engine.handle(conn, Packet(Op.WATCH, 5, 0, b"/w\0tok\0"))
    assert conn.take_output() == [
        HEADER.pack(4, 5, 0, 3) + b"OK\0",
        HEADER.pack(15, 0, 0, 7) + b"/w\0tok\0",
    ]


# -- success payloads ------------------------------------------------------------


def _populate(world: World) -> None:
    d = world.dom0
    d.write_ok("/a", b"hello")
    d.write_ok("/e")
    d.write_ok("/d/x", b"1")
    d.write_ok("/d/y", b"2")
    d.write_ok("/bin", b"\0\x01\xff\0")


SUCCESS: list[tuple[str, int, bytes, bytes]] = [
    ("read", Op.READ, b"/a\0", b"hello"),
    ("read-empty", Op.READ, b"/e\0", b""),
    ("read-binary", Op.READ, b"/bin\0", b"\0\x01\xff\0"),
    ("read-relative", Op.READ, b"a\0", b""),  # /local/domain/0/a, see below
    ("write", Op.WRITE, b"/n\0v", OK),
    ("write-empty", Op.WRITE, b"/n\0", OK),
    ("write-nuls", Op.WRITE, b"/n\0a\0b\0", OK),
    ("write-deep", Op.WRITE, b"/n/o/p\0v", OK),
    ("mkdir", Op.MKDIR, b"/m\0", OK),
    ("mkdir-existing", Op.MKDIR, b"/a\0", OK),
    ("rm", Op.RM, b"/d\0", OK),
    ("rm-missing-parent-exists", Op.RM, b"/zz\0", OK),
    ("directory", Op.DIRECTORY, b"/d\0", b"x\0y\0"),
    ("directory-root", Op.DIRECTORY, b"/\0", b"tool\0a\0e\0d\0bin\0local\0"),
    ("directory-empty", Op.DIRECTORY, b"/e\0", b""),
    ("get-perms", Op.GET_PERMS, b"/a\0", b"n0\0"),
    ("get-perms-special", Op.GET_PERMS, b"@releaseDomain\0", b"n0\0"),
    ("get-perms-special-2", Op.GET_PERMS, b"@introduceDomain\0", b"n0\0"),
    ("set-perms", Op.SET_PERMS, b"/a\0n0\0r5\0", OK),
    ("set-perms-special", Op.SET_PERMS, b"@releaseDomain\0n0\0r5\0", OK),
    ("transaction-start", Op.TRANSACTION_START, b"\0", b"1\0"),
    ("transaction-start-no-payload", Op.TRANSACTION_START, b"", b"1\0"),
    ("get-domain-path", Op.GET_DOMAIN_PATH, b"5\0", b"/local/domain/5\0"),
    ("get-domain-path-normalised", Op.GET_DOMAIN_PATH, b"007\0", b"/local/domain/7\0"),
    ("get-domain-path-max", Op.GET_DOMAIN_PATH, b"65535\0", b"/local/domain/65535\0"),
    ("is-domain-introduced", Op.IS_DOMAIN_INTRODUCED, b"5\0", b"F\0"),
    ("is-domain-introduced-self", Op.IS_DOMAIN_INTRODUCED, b"32752\0", b"T\0"),
    ("reset-watches", Op.RESET_WATCHES, b"\0", OK),
    (
        "get-quota-names",
        Op.GET_QUOTA,
        b"",
        b"nodes watches outstanding memory "
        b"soft-memory transactions transaction-nodes node-permissions path-max "
        b"node-size\0",
    ),
    ("get-quota-default", Op.GET_QUOTA, b"nodes\0", b"1000\0"),
    ("get-quota-alias", Op.GET_QUOTA, b"permissions\0", b"5\0"),
    ("get-quota-domain", Op.GET_QUOTA, b"5\0watches\0", b"128\0"),
    ("set-quota", Op.SET_QUOTA, args("nodes", "500"), OK),
    ("set-quota-domain", Op.SET_QUOTA, args("5", "nodes", "500"), OK),
    ("control-check", Op.CONTROL, b"check\0", OK),
]


@pytest.mark.parametrize(
    ("op", "payload", "expected"),
    [s[1:] for s in SUCCESS],
    ids=[s[0] for s in SUCCESS],
)
def test_success_payload(
    world: World, op: int, payload: bytes, expected: bytes
) -> None:
    _populate(world)
    world.dom0.write_ok("/local/domain/0/a")
    reply = world.dom0.call(op, payload)
    assert (reply.op, reply.payload) == (op, expected)


def test_write_then_read_round_trips_arbitrary_values(world: World) -> None:
    for value in (b"", b"\0", b"a\0b", bytes(range(256)), b"x" * 4000):
        world.dom0.write_ok("/v", value)
        assert world.dom0.ok(Op.READ, "/v") == value


def test_largest_write_fits_the_payload(world: World) -> None:
    value = b"v" * (4096 - len(b"/v\0"))
    world.dom0.write_ok("/v", value)
    assert world.dom0.ok(Op.READ, "/v") == value


def test_transaction_ids_are_per_connection_and_nonzero(world: World) -> None:
    other = world.socket()
    assert world.dom0.start() == 1
    assert world.dom0.start() == 2
    assert other.start() == 1


def test_unwatch_and_reset_watches(world: World) -> None:
    d = world.dom0
    d.watch("/w", "t")
    assert d.ok(Op.UNWATCH, "/w", "t") == OK
    assert d.err(Op.UNWATCH, "/w", "t") == "ENOENT"
    d.watch("/w", "t")
    d.watch("/v", "u")
    assert d.ok(Op.RESET_WATCHES, "") == OK
    assert events(world.dom0.raw(Op.WRITE, b"/w\0x")) == []


def test_reset_watches_aborts_transactions(world: World) -> None:
    tx = world.dom0.start()
    world.dom0.write_ok("/t", b"1", tx=tx)
    assert world.dom0.ok(Op.RESET_WATCHES, "") == OK
    assert world.dom0.err(Op.TRANSACTION_END, "T", tx=tx) == "ENOENT"
    assert world.dom0.err(Op.READ, "/t") == "ENOENT"


# -- errors ------------------------------------------------------------------------

ERRORS: list[tuple[str, int, bytes, str]] = [
    ("read-missing", Op.READ, b"/nope\0", "ENOENT"),
    ("read-missing-deep", Op.READ, b"/nope/a/b\0", "ENOENT"),
    ("read-special", Op.READ, b"@releaseDomain\0", "EINVAL"),
    ("read-bad-char", Op.READ, b"/a b\0", "EINVAL"),
    ("read-dot", Op.READ, b"/a/.\0", "EINVAL"),
    ("read-high-byte", Op.READ, b"/\xe9\0", "EINVAL"),
    ("read-double-slash", Op.READ, b"/a//b\0", "EINVAL"),
    ("read-trailing-slash", Op.READ, b"/a/\0", "EINVAL"),
    ("read-empty-path", Op.READ, b"\0", "EINVAL"),
    ("read-no-nul", Op.READ, b"/a", "EINVAL"),
    ("read-empty-payload", Op.READ, b"", "EINVAL"),
    ("read-two-strings", Op.READ, b"/a\0/b\0", "EINVAL"),
    ("read-too-long", Op.READ, b"/" + b"a" * 3072 + b"\0", "EINVAL"),
    ("write-no-nul", Op.WRITE, b"/a", "EINVAL"),
    ("write-special", Op.WRITE, b"@x\0v", "EINVAL"),
    ("write-bad-path", Op.WRITE, b"/a/\0v", "EINVAL"),
    ("mkdir-trailing-slash", Op.MKDIR, b"/m/\0", "EINVAL"),
    ("mkdir-extra-string", Op.MKDIR, b"/m\0x\0", "EINVAL"),
    ("mkdir-special", Op.MKDIR, b"@introduceDomain\0", "EINVAL"),
    ("rm-root", Op.RM, b"/\0", "EINVAL"),
    ("rm-parent-missing", Op.RM, b"/nope/x\0", "ENOENT"),
    ("rm-special", Op.RM, b"@releaseDomain\0", "EINVAL"),
    ("directory-missing", Op.DIRECTORY, b"/nope\0", "ENOENT"),
    ("directory-no-nul", Op.DIRECTORY, b"/", "EINVAL"),
    ("directory-part-one-arg", Op.DIRECTORY_PART, b"/\0", "EINVAL"),
    ("directory-part-three-args", Op.DIRECTORY_PART, args("/", "0", "x"), "EINVAL"),
    ("directory-part-bad-offset", Op.DIRECTORY_PART, b"/\0x\0", "EINVAL"),
    ("directory-part-missing", Op.DIRECTORY_PART, args("/nope", "0"), "ENOENT"),
    ("get-perms-missing", Op.GET_PERMS, b"/nope\0", "ENOENT"),
    ("set-perms-no-perm", Op.SET_PERMS, b"/a\0", "EINVAL"),
    ("set-perms-bad-letter", Op.SET_PERMS, b"/a\0x0\0", "EINVAL"),
    ("set-perms-negative", Op.SET_PERMS, b"/a\0r-1\0", "EINVAL"),
    ("set-perms-too-big", Op.SET_PERMS, b"/a\0r65536\0", "EINVAL"),
    ("set-perms-empty-domid", Op.SET_PERMS, b"/a\0n0\0r\0", "EINVAL"),
    ("set-perms-no-nul", Op.SET_PERMS, b"/a\0n0", "EINVAL"),
    ("set-perms-missing-node", Op.SET_PERMS, b"/nope\0n0\0", "ENOENT"),
    ("set-perms-owner-missing", Op.SET_PERMS, b"/a\0n9\0", "ENOENT"),
    (
        "set-perms-special-owner-missing",
        Op.SET_PERMS,
        b"@releaseDomain\0n9\0",
        "ENOENT",
    ),
    ("watch-one-arg", Op.WATCH, b"/a\0", "EINVAL"),
    ("watch-four-args", Op.WATCH, args("/a", "t", "1", "x"), "EINVAL"),
    ("watch-bad-path", Op.WATCH, b"/a/\0t\0", "EINVAL"),
    ("watch-bad-depth", Op.WATCH, b"/a\0t\0x\0", "EINVAL"),
    ("watch-no-nul", Op.WATCH, b"/a\0t", "EINVAL"),
    ("unwatch-missing", Op.UNWATCH, b"/a\0t\0", "ENOENT"),
    ("unwatch-one-arg", Op.UNWATCH, b"/a\0", "EINVAL"),
    ("transaction-end-bad-arg", Op.TRANSACTION_END, b"X\0", "EINVAL"),
    ("transaction-end-no-tx", Op.TRANSACTION_END, b"T\0", "ENOENT"),
    ("get-domain-path-bad", Op.GET_DOMAIN_PATH, b"x\0", "EINVAL"),
    ("get-domain-path-negative", Op.GET_DOMAIN_PATH, b"-1\0", "EINVAL"),
    ("get-domain-path-too-big", Op.GET_DOMAIN_PATH, b"65536\0", "EINVAL"),
    ("get-domain-path-trailing", Op.GET_DOMAIN_PATH, b"5x\0", "EINVAL"),
    ("is-domain-introduced-bad", Op.IS_DOMAIN_INTRODUCED, b"x\0", "EINVAL"),
    ("get-quota-unknown", Op.GET_QUOTA, b"bogus\0", "EINVAL"),
    ("get-quota-unknown-domain", Op.GET_QUOTA, b"9\0nodes\0", "ENOENT"),
    ("set-quota-unknown", Op.SET_QUOTA, args("bogus", "5"), "EINVAL"),
    ("set-quota-uint-max", Op.SET_QUOTA, args("nodes", "4294967295"), "EINVAL"),
    ("set-quota-not-a-number", Op.SET_QUOTA, b"nodes\0x\0", "EINVAL"),
    ("set-quota-one-arg", Op.SET_QUOTA, b"nodes\0", "EINVAL"),
    ("set-quota-unknown-domain", Op.SET_QUOTA, args("9", "nodes", "5"), "ENOENT"),
    ("get-feature-two-args", Op.GET_FEATURE, args("5", "6"), "EINVAL"),
    ("get-feature-unknown-domain", Op.GET_FEATURE, b"9\0", "ENOENT"),
    ("set-feature-one-arg", Op.SET_FEATURE, b"5\0", "EINVAL"),
    ("set-feature-unsupported-bit", Op.SET_FEATURE, args("5", "16"), "EINVAL"),
    ("set-feature-unknown-domain", Op.SET_FEATURE, args("9", "1"), "ENOENT"),
    ("control-unknown", Op.CONTROL, b"bogus\0", "EINVAL"),
    ("control-empty", Op.CONTROL, b"", "EINVAL"),
    ("type-watch-event", EVENT, b"/a\0t\0", "ENOSYS"),
    ("type-error", ERROR, b"EINVAL\0", "ENOSYS"),
    ("type-restrict", 20, b"5\0", "ENOSYS"),
    ("type-30", 30, b"", "ENOSYS"),
    ("type-invalid", 0xFFFF, b"", "ENOSYS"),
    ("type-u32-max", 0xFFFFFFFF, b"", "ENOSYS"),
]


@pytest.mark.parametrize(
    ("op", "payload", "code"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_error_reply(world: World, op: int, payload: bytes, code: str) -> None:
    _populate(world)
    before = world.snapshot()
    reply = world.dom0.call(op, payload)
    assert Peer.error_of(reply) == code
    assert world.snapshot() == before, "a failed request changed the store"


def test_duplicate_watch_is_eexist(world: World) -> None:
    world.dom0.watch("/a", "t")
    assert world.dom0.err(Op.WATCH, "/a", "t") == "EEXIST"
    # Same path with another token, or same token on another path: distinct.
    world.dom0.watch("/a", "u")
    world.dom0.watch("/b", "t")
    # Identity is the canonical path: a relative spelling of the same path.
    world.dom0.watch("/local/domain/0/r", "t")
    assert world.dom0.err(Op.WATCH, "r", "t") == "EEXIST"


def test_nested_transaction_start_is_ebusy(world: World) -> None:
    tx = world.dom0.start()
    assert world.dom0.err(Op.TRANSACTION_START, "", tx=tx) == "EBUSY"
    assert world.dom0.err(Op.TRANSACTION_START, "", tx=tx + 1) == "ENOENT"


def test_transaction_id_is_dead_after_end(world: World) -> None:
    for arg in ("T", "F"):
        tx = world.dom0.start()
        assert world.dom0.ok(Op.TRANSACTION_END, arg, tx=tx) == OK
        assert world.dom0.err(Op.READ, "/", tx=tx) == "ENOENT"
        assert world.dom0.err(Op.TRANSACTION_END, arg, tx=tx) == "ENOENT"


def test_another_connections_transaction_id_is_unknown(world: World) -> None:
    other = world.socket()
    other.start()
    other.start()
    assert world.dom0.err(Op.READ, "/", tx=2) == "ENOENT"


# -- dispatch order (PROTOCOL.md 1.2) ------------------------------------------------

PRIVILEGED_OPS: list[tuple[int, bytes]] = [
    (Op.CONTROL, b"help\0"),
    (Op.INTRODUCE, args("7", "1", "2")),
    (Op.RELEASE, b"7\0"),
    (Op.IS_DOMAIN_INTRODUCED, b"5\0"),
    (Op.RESUME, b"7\0"),
    (Op.SET_TARGET, args("5", "6")),
    (Op.SET_FEATURE, args("5", "1")),
    (Op.GET_QUOTA, b"nodes\0"),
    (Op.SET_QUOTA, args("nodes", "1")),
]


@pytest.mark.parametrize(
    ("op", "payload"), PRIVILEGED_OPS, ids=[Op(o).name for o, _ in PRIVILEGED_OPS]
)
@pytest.mark.parametrize("tx", [0, 99])
def test_privileged_op_from_domain_is_eacces_before_tx_check(
    world: World, op: int, payload: bytes, tx: int
) -> None:
    dom5 = world.domain(5)
    before = world.snapshot()
    assert Peer.error_of(dom5.call(op, payload, tx)) == "EACCES"
    assert world.snapshot() == before
    assert world.engine.quotas.defaults == Limits()


@pytest.mark.parametrize("op", [EVENT, ERROR, 20, 30, 0xFFFF])
def test_unknown_type_is_enosys_before_everything(world: World, op: int) -> None:
    dom5 = world.domain(5)
    assert Peer.error_of(dom5.call(op, b"x\0", 99)) == "ENOSYS"
    assert Peer.error_of(world.dom0.call(op, b"x\0", 99)) == "ENOSYS"


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        (Op.READ, b"/\0"),
        (Op.WRITE, b"/x\0v"),
        (Op.MKDIR, b"/x\0"),
        (Op.RM, b"/tool\0"),
        (Op.DIRECTORY, b"/\0"),
        (Op.DIRECTORY_PART, args("/", "0")),
        (Op.GET_PERMS, b"/\0"),
        (Op.SET_PERMS, b"/\0n0\0"),
        (Op.GET_DOMAIN_PATH, b"5\0"),
        (Op.RESET_WATCHES, b"\0"),
        (Op.GET_FEATURE, b""),
        (Op.TRANSACTION_START, b"\0"),
        (Op.TRANSACTION_END, b"T\0"),
        (Op.CONTROL, b"help\0"),
        (Op.GET_QUOTA, b""),
    ],
    ids=lambda v: Op(v).name if isinstance(v, int) else "",
)
def test_unknown_transaction_is_enoent_and_changes_nothing(
    world: World, op: int, payload: bytes
) -> None:
    before = world.snapshot()
    assert Peer.error_of(world.dom0.call(op, payload, 99)) == "ENOENT"
    assert world.snapshot() == before


def test_watch_and_unwatch_ignore_tx_id(world: World) -> None:
    out = world.dom0.raw(Op.WATCH, b"/w\0t\0", tx=99)
    assert [(m.op, m.tx) for m in out] == [(Op.WATCH, 99), (EVENT, 0)]
    assert world.dom0.call(Op.UNWATCH, b"/w\0t\0", 99).op == Op.UNWATCH


def test_unprivileged_may_use_unprivileged_ops(world: World) -> None:
    dom5 = world.domain(5)
    assert dom5.ok(Op.GET_DOMAIN_PATH, "5") == b"/local/domain/5\0"
    assert dom5.ok(Op.READ, "/local/domain/5") == b""
    assert dom5.ok(Op.TRANSACTION_START, "") == b"1\0"
    assert dom5.err(Op.GET_FEATURE, "5") == "EACCES"


# -- events before OK, OK before the initial event ----------------------------------


def test_write_mkdir_rm_set_perms_queue_the_event_before_ok(world: World) -> None:
    d = world.dom0
    d.watch("/w", "t")
    for op, payload in [
        (Op.WRITE, b"/w\0v"),
        (Op.WRITE, b"/w/x\0"),
        (Op.MKDIR, b"/w/y\0"),
        (Op.SET_PERMS, b"/w/y\0n0\0r5\0"),
        (Op.RM, b"/w/x\0"),
    ]:
        out = d.raw(op, payload)
        assert [m.op for m in out] == [EVENT, op], (Op(op).name, out)


def test_transaction_end_queues_events_before_ok(world: World) -> None:
    d = world.dom0
    d.watch("/w", "t")
    tx = d.start()
    assert events(d.raw(Op.WRITE, b"/w/a\0" + b"1", tx)) == []
    assert events(d.raw(Op.MKDIR, b"/w/b\0", tx)) == []
    out = d.raw(Op.TRANSACTION_END, b"T\0", tx)
    assert [m.op for m in out] == [EVENT, EVENT, Op.TRANSACTION_END]
    assert sorted(events(out)) == [("/w/a", "t"), ("/w/b", "t")]


def test_commit_fires_once_per_path(world: World) -> None:
    d, w = world.dom0, world.socket()
    w.watch("/c", "t")
    tx = d.start()
    d.write_ok("/c/x", b"1", tx=tx)
    d.write_ok("/c/x", b"2", tx=tx)
    d.set_perms("/c/x", "n0", "r5", tx=tx)
    d.write_ok("/c/y/z", b"", tx=tx)  # creates /c/y on the way: no event of its own
    assert events(w.take()) == []
    assert d.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert sorted(events(w.take())) == [("/c/x", "t"), ("/c/y/z", "t")]


def test_event_too_big_for_a_payload_is_dropped(world: World) -> None:
    d, w = world.dom0, world.socket()
    base = "/" + "a" * 3000
    token = "t" * 1090
    w.watch(base, token)  # initial event: 3001 + 1 + 1090 + 1 = 4093 bytes
    d.write_ok(base + "/bc")  # 4096 bytes: still fits
    assert events(w.take()) == [(base + "/bc", token)]
    d.write_ok(base + "/bcd")  # 4097 bytes: dropped, the write still succeeds
    assert events(w.take()) == []
    assert d.ok(Op.READ, base + "/bcd") == b""


def test_aborted_or_conflicting_transaction_fires_nothing(world: World) -> None:
    d, other = world.dom0, world.socket()
    d.watch("/w", "t")
    tx = d.start()
    d.write_ok("/w", b"1", tx=tx)
    out = d.raw(Op.TRANSACTION_END, b"F\0", tx)
    assert [m.op for m in out] == [Op.TRANSACTION_END]
    tx = d.start()
    assert d.err(Op.READ, "/w", tx=tx) == "ENOENT"
    d.write_ok("/w/x", b"1", tx=tx)
    other.write_ok("/w", b"")  # creates /w: the transaction saw it absent
    d.take()
    out = d.raw(Op.TRANSACTION_END, b"T\0", tx)
    assert [(m.op, m.payload) for m in out] == [(ERROR, b"EAGAIN\0")]
    assert d.err(Op.READ, "/w/x") == "ENOENT"


def test_failed_request_fires_nothing(world: World) -> None:
    d = world.dom0
    d.watch("/", "t")
    for op, payload in [
        (Op.RM, b"/\0"),
        (Op.WRITE, b"/a/\0x"),
        (Op.SET_PERMS, b"/\0n9\0"),
    ]:
        out = d.raw(op, payload)
        assert [m.op for m in out] == [ERROR]


def test_mkdir_of_existing_node_fires_nothing(world: World) -> None:
    d = world.dom0
    d.write_ok("/m")
    d.watch("/m", "t")
    assert [m.op for m in d.raw(Op.MKDIR, b"/m\0")] == [Op.MKDIR]


def test_rm_of_missing_node_fires_nothing(world: World) -> None:
    d = world.dom0
    d.watch("/", "t")
    assert [m.op for m in d.raw(Op.RM, b"/missing\0")] == [Op.RM]


def test_event_reaches_other_connections_too(world: World) -> None:
    a, b = world.dom0, world.socket()
    b.watch("/w", "tb")
    out = a.raw(Op.WRITE, b"/w/deep/er\0v")
    assert [m.op for m in out] == [Op.WRITE]
    # Only the written path: the ancestors created on the way fire nothing.
    assert events(b.take()) == [("/w/deep/er", "tb")]


def test_watch_fires_for_its_subtree_only(world: World) -> None:
    d = world.dom0
    d.watch("/a/b", "t")
    for path in ("/a", "/a/bc", "/a/c/b", "/x"):
        assert events(d.raw(Op.WRITE, path.encode() + b"\0")) == [], path
    for path in ("/a/b", "/a/b/c", "/a/b/c/d"):
        assert events(d.raw(Op.WRITE, path.encode() + b"\0")) == [(path, "t")]


def test_watch_on_root_sees_everything(world: World) -> None:
    d = world.dom0
    d.watch("/", "t")
    assert events(d.raw(Op.WRITE, b"/q\0")) == [("/q", "t")]


def test_depth_limited_watch(world: World) -> None:
    d = world.dom0
    out = d.raw(Op.WATCH, args("/p", "t", "1"))
    assert [m.op for m in out] == [Op.WATCH, EVENT]
    assert events(d.raw(Op.WRITE, b"/p\0")) == [("/p", "t")]
    assert events(d.raw(Op.WRITE, b"/p/q\0")) == [("/p/q", "t")]
    assert events(d.raw(Op.WRITE, b"/p/q/r\0")) == []


def test_depth_one_on_root(world: World) -> None:
    d = world.dom0
    assert [m.op for m in d.raw(Op.WATCH, args("/", "t", "1"))] == [Op.WATCH, EVENT]
    assert events(d.raw(Op.WRITE, b"/x\0")) == [("/x", "t")]
    assert events(d.raw(Op.WRITE, b"/x/y\0")) == []


def test_watch_depth_needs_the_feature_on_a_domain(world: World) -> None:
    dom5 = world.domain(5)
    assert dom5.err(Op.WATCH, "/p", "t", "1") == "EINVAL"
    assert world.dom0.ok(Op.SET_FEATURE, "5", "4") == OK
    out = dom5.raw(Op.WATCH, args("/p", "t", "1"))
    assert [m.op for m in out] == [Op.WATCH, EVENT]


def test_socket_features_and_watch_depth_agree(world: World) -> None:
    value = int(world.dom0.ok(Op.GET_FEATURE)[:-1])
    accepted = world.dom0.call(Op.WATCH, args("/p", "t", "0")).op == Op.WATCH
    assert bool(value & 4) == accepted


def test_relative_watch_is_reported_relative(world: World) -> None:
    dom5 = world.domain(5)
    dom5.watch("foo", "rel")
    dom5.watch("/local/domain/5/foo", "abs")
    out = world.dom0.raw(Op.WRITE, b"/local/domain/5/foo/bar\0v")
    assert [m.op for m in out] == [Op.WRITE]
    assert sorted(events(dom5.take())) == [
        ("/local/domain/5/foo/bar", "abs"),
        ("foo/bar", "rel"),
    ]
    # The domain's own relative write: the event before the OK.
    out = dom5.raw(Op.WRITE, b"foo\0x")
    assert [m.op for m in out] == [EVENT, EVENT, Op.WRITE]
    assert sorted(events(out)) == [("/local/domain/5/foo", "abs"), ("foo", "rel")]


def test_relative_watch_on_a_socket_uses_domain_0_home(world: World) -> None:
    world.dom0.watch("rel", "t")
    assert events(world.dom0.raw(Op.WRITE, b"/local/domain/0/rel/x\0")) == [
        ("rel/x", "t")
    ]


# -- RM of a subtree (PROTOCOL.md 6.2, 6.3; checklist 4) -------------------------------


def test_rm_subtree_events(world: World) -> None:
    d, w = world.dom0, world.socket()
    for path in ("/r/a/x", "/r/a/y/z", "/r/b"):
        d.write_ok(path)
    for path, token in [
        ("/", "root"),
        ("/r", "r"),
        ("/r/a", "a"),
        ("/r/a/y/z", "z"),
        ("/r/a/x", "x"),
        ("/r/a/nothere", "ghost"),
        ("/r/a/x/deeper", "ghost2"),
        ("/r/b", "b"),
        ("/other", "other"),
    ]:
        w.watch(path, token)
    out = d.raw(Op.RM, b"/r/a\0")
    assert [m.op for m in out] == [Op.RM]
    got = events(w.take())
    # Each watcher is told once, with its own path for removed descendants.
    assert sorted(got) == sorted(
        [
            ("/r/a", "root"),
            ("/r/a", "r"),
            ("/r/a", "a"),
            ("/r/a/y/z", "z"),
            ("/r/a/x", "x"),
        ]
    )
    assert len(got) == len(set(got))


def test_rm_events_come_before_ok_for_the_remover(world: World) -> None:
    d = world.dom0
    d.write_ok("/r/a/b")
    d.watch("/r/a/b", "t")
    out = d.raw(Op.RM, b"/r\0")
    assert [m.op for m in out] == [EVENT, Op.RM]
    assert events(out) == [("/r/a/b", "t")]


def test_rm_in_transaction_fires_descendants_at_commit(world: World) -> None:
    d, w = world.dom0, world.socket()
    d.write_ok("/r/a/b")
    w.watch("/r/a/b", "deep")
    w.watch("/r/zz", "ghost")
    tx = d.start()
    assert d.ok(Op.RM, "/r", tx=tx) == OK
    assert events(w.take()) == []
    assert d.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert events(w.take()) == [("/r/a/b", "deep")]


# -- permission filtering of events (XSA-115, PROTOCOL.md 6.6) -------------------------


def test_unprivileged_watcher_only_hears_about_readable_nodes(world: World) -> None:
    dom6 = world.domain(6)
    dom6.watch("/", "t")
    d = world.dom0
    d.write_ok("/secret", b"x")  # n0 under n0: dom6 may read neither
    assert events(dom6.take()) == []
    d.write_ok("/pub")
    d.set_perms("/pub", "n0", "r6")
    assert events(dom6.take()) == [("/pub", "t")]  # readable under the new perms
    d.write_ok("/pub/hidden")  # inherits n0,r6: readable
    assert events(dom6.take()) == [("/pub/hidden", "t")]
    d.set_perms("/pub/hidden", "n0")
    # Unreadable now, readable before the change, and the parent is readable.
    assert events(dom6.take()) == [("/pub/hidden", "t")]
    d.write_ok("/pub/hidden", b"y")  # node n0 but the parent is readable
    assert events(dom6.take()) == [("/pub/hidden", "t")]
    d.set_perms("/pub", "n0")
    assert events(dom6.take()) == [("/pub", "t")]  # readable before
    d.write_ok("/pub", b"z")
    assert events(dom6.take()) == []
    d.write_ok("/pub/hidden", b"w")  # neither it nor its parent is readable
    assert events(dom6.take()) == []
    # The privileged watcher hears about everything.
    world.dom0.take()


def test_removed_node_uses_its_permissions_before_removal(world: World) -> None:
    d = world.dom0
    dom6 = world.domain(6)
    d.write_ok("/s/readable")
    d.set_perms("/s/readable", "n0", "r6")
    d.write_ok("/s/secret")
    dom6.watch("/s/readable", "r")
    dom6.watch("/s/secret", "s")
    dom6.watch("/s", "top")
    assert d.ok(Op.RM, "/s") == OK
    # /s (n0, parent / n0) is not readable; /s/readable is; /s/secret is not.
    assert events(dom6.take()) == [("/s/readable", "r")]


def test_special_watch_is_filtered_by_the_special_node(world: World) -> None:
    dom6 = world.domain(6)
    dom6.watch("@releaseDomain", "rel")  # registration is never checked
    world.engine.fire_special("@releaseDomain")
    assert events(dom6.take()) == []
    world.dom0.set_perms("@releaseDomain", "n0", "r6")
    world.engine.fire_special("@releaseDomain")
    assert events(dom6.take()) == [("@releaseDomain", "rel")]


# -- duplicate suppression (PROTOCOL.md 6.4) -------------------------------------------


def test_identical_unsent_event_is_dropped(world: World) -> None:
    a, b = world.dom0, world.socket()
    b.watch("/d", "t")
    b.watch("/d", "u")
    a.write_ok("/d", b"1")
    a.write_ok("/d", b"2")
    a.write_ok("/d/x")
    a.write_ok("/d", b"3")
    assert events(b.take()) == [("/d", "t"), ("/d", "u"), ("/d/x", "t"), ("/d/x", "u")]
    # Once sent, the same event is queued again.
    a.write_ok("/d", b"4")
    assert events(b.take()) == [("/d", "t"), ("/d", "u")]


def test_special_events_are_never_deduplicated(world: World) -> None:
    world.dom0.watch("@introduceDomain", "t")
    world.engine.fire_special("@introduceDomain")
    world.engine.fire_special("@introduceDomain")
    assert events(world.dom0.take()) == [("@introduceDomain", "t")] * 2


# -- DIRECTORY E2BIG and DIRECTORY_PART (PROTOCOL.md 1.1, 9; checklist 9) -------------


def _children(world: World, parent: str, names: list[str]) -> bytes:
    for name in names:
        world.dom0.write_ok(f"{parent}/{name}")
    return b"".join(n.encode() + b"\0" for n in names)


def test_directory_at_the_payload_limit_and_one_over(world: World) -> None:
    listing = _children(world, "/big", [f"{i:02d}" + "x" * 61 for i in range(64)])
    assert len(listing) == 4096
    assert world.dom0.ok(Op.DIRECTORY, "/big") == listing
    world.dom0.write_ok("/big/z")
    assert world.dom0.err(Op.DIRECTORY, "/big") == "E2BIG"


def page(peer: Peer, path: str, listing: bytes) -> list[bytes]:
    """Read a child list with DIRECTORY_PART as libxenstore does."""
    boundaries = {0} | {i + 1 for i, b in enumerate(listing) if b == 0}
    offset, parts, gens = 0, [], set()
    for _ in range(100):
        payload = peer.ok(Op.DIRECTORY_PART, path, str(offset))
        assert len(payload) <= 4096
        gen, sep, body = payload.partition(b"\0")
        assert sep, payload[:40]
        assert gen.isdigit(), payload[:40]
        gens.add(gen)
        last = body == b"\0" or body.endswith(b"\0\0")
        entries = body[:-1] if last else body
        assert offset in boundaries
        assert offset + len(entries) in boundaries
        assert entries == listing[offset : offset + len(entries)]
        parts.append(entries)
        offset += len(entries)
        if last:
            assert offset == len(listing)
            assert len(gens) == 1, "generation changed while paging"
            return parts
        assert entries, "a part that is neither last nor progressing"
    raise AssertionError("DIRECTORY_PART never ended")


@pytest.mark.parametrize("count", [0, 1, 64, 150, 400])
def test_directory_part_pages_whole_entries(world: World, count: int) -> None:
    world.dom0.write_ok("/big")
    names = [f"c{i:03d}" + "x" * (i % 37) for i in range(count)]
    listing = _children(world, "/big", names)
    parts = page(world.dom0, "/big", listing)
    assert b"".join(parts) == listing
    if len(listing) > 4096:
        assert len(parts) >= 2


def test_directory_part_offset_past_the_end(world: World) -> None:
    listing = _children(world, "/p", ["a", "b"])
    for offset in (len(listing), len(listing) + 1, 10**6):
        payload = world.dom0.ok(Op.DIRECTORY_PART, "/p", str(offset))
        gen, _, body = payload.partition(b"\0")
        assert gen.isdigit()
        assert body == b"\0"


def test_directory_part_generation_changes_with_the_node(world: World) -> None:
    _children(world, "/p", ["a", "b"])
    gen1 = world.dom0.ok(Op.DIRECTORY_PART, "/p", "0").partition(b"\0")[0]
    assert world.dom0.ok(Op.DIRECTORY_PART, "/p", "0").partition(b"\0")[0] == gen1
    world.dom0.write_ok("/p/c")
    gen2 = world.dom0.ok(Op.DIRECTORY_PART, "/p", "0").partition(b"\0")[0]
    assert gen2 != gen1
    world.dom0.write_ok("/p/c/deeper")  # a grandchild does not change /p
    assert world.dom0.ok(Op.DIRECTORY_PART, "/p", "0").partition(b"\0")[0] == gen2


# -- permissions and existence hiding (PROTOCOL.md 5.3, 5.4; checklist 5, 6) -----------


def test_missing_node_error_depends_on_the_nearest_ancestor(world: World) -> None:
    dom5 = world.domain(5)
    world.dom0.write_ok("/open")
    world.dom0.set_perms("/open", "n0", "r5")
    assert dom5.err(Op.READ, "/open/missing") == "ENOENT"
    assert dom5.err(Op.READ, "/open/missing/deeper") == "ENOENT"
    assert dom5.err(Op.READ, "/closed/missing") == "EACCES"  # nearest is / (n0)
    assert dom5.err(Op.READ, "/tool") == "EACCES"
    assert dom5.err(Op.WRITE, "/open/new") == "EACCES"  # needs write there
    assert dom5.err(Op.RM, "/open/missing") == "EACCES"


def test_special_nodes_belong_to_the_privileged_domain(world: World) -> None:
    dom5 = world.domain(5)
    assert dom5.err(Op.GET_PERMS, "@introduceDomain") == "EACCES"
    assert dom5.err(Op.SET_PERMS, "@introduceDomain", "n5") == "EACCES"
    assert dom5.err(Op.SET_PERMS, "@releaseDomain", "n0", "r5") == "EACCES"
    world.dom0.set_perms("@releaseDomain", "n0", "r5")
    assert dom5.ok(Op.GET_PERMS, "@releaseDomain") == b"n0\0r5\0"


def test_root_cannot_be_removed_even_when_writable(world: World) -> None:
    dom5 = world.domain(5)
    world.dom0.set_perms("/", "n0", "b5")
    assert dom5.err(Op.RM, "/") == "EINVAL"
    world.dom0.set_perms("/", "n0")
    assert dom5.err(Op.RM, "/") == "EACCES"


def test_unprivileged_owner_may_not_change_the_owner(world: World) -> None:
    dom5 = world.domain(5)
    assert dom5.err(Op.SET_PERMS, "/local/domain/5", "n6") == "EPERM"
    assert dom5.err(Op.SET_PERMS, "/local/domain/5", "n0") == "EPERM"
    dom5.set_perms("/local/domain/5", "r5", "b6")
    assert world.dom0.ok(Op.GET_PERMS, "/local/domain/5") == b"r5\0b6\0"


def test_set_perms_needs_owner_rights(world: World) -> None:
    dom5 = world.domain(5)
    world.dom0.write_ok("/shared")
    world.dom0.set_perms("/shared", "n0", "b5")  # read and write, not owner
    assert dom5.err(Op.SET_PERMS, "/shared", "n0", "b5") == "EACCES"
    # Missing: ENOENT as soon as the parent grants any wanted right (C's
    # errno_from_parents), here write; with none of them, EACCES.
    assert dom5.err(Op.SET_PERMS, "/shared/missing", "n0") == "ENOENT"
    world.dom0.set_perms("/shared", "n0", "r5")
    assert dom5.err(Op.SET_PERMS, "/shared/missing", "n0") == "EACCES"


def test_set_perms_naming_a_missing_owner_is_enoent(world: World) -> None:
    """C checks the new owner right after parsing the list (do_set_perms)."""
    dom5 = world.domain(5)
    world.dom0.write_ok("/hidden")
    assert dom5.err(Op.SET_PERMS, "/local/domain/5", "n9") == "ENOENT"
    assert dom5.err(Op.SET_PERMS, "/hidden", "n9") == "ENOENT"
    assert world.dom0.err(Op.SET_PERMS, "@introduceDomain", "n9") == "ENOENT"
    assert world.dom0.ok(Op.GET_PERMS, "@introduceDomain") == b"n0\0"


def test_created_nodes_inherit_the_parent_list_with_the_creator_as_owner(
    world: World,
) -> None:
    dom5 = world.domain(5)
    world.dom0.write_ok("/share")
    world.dom0.set_perms("/share", "r0", "b5", "r6")
    dom5.write_ok("/share/a/b")
    for path in ("/share/a", "/share/a/b"):
        assert world.dom0.ok(Op.GET_PERMS, path) == b"r5\0b5\0r6\0"
    world.dom0.write_ok("/share/c")  # a privileged creator keeps the owner
    assert world.dom0.ok(Op.GET_PERMS, "/share/c") == b"r0\0b5\0r6\0"


def test_rm_removes_descendants_owned_by_others(world: World) -> None:
    dom5 = world.domain(5)
    world.dom0.write_ok("/local/domain/5/tools/x")  # owned by 5, inherited
    world.dom0.set_perms("/local/domain/5/tools/x", "n0")
    assert dom5.ok(Op.RM, "/local/domain/5/tools") == OK
    assert world.dom0.err(Op.READ, "/local/domain/5/tools/x") == "ENOENT"


def test_stale_entries_grant_nothing(world: World) -> None:
    dom5 = world.domain(5)
    world.dom0.write_ok("/s")
    world.dom0.set_perms("/s", "n0", "b9", "r5")
    # 9 does not exist: the entry is kept for GET_PERMS but ignored.
    assert world.dom0.ok(Op.GET_PERMS, "/s") == b"n0\0b9\0r5\0"
    assert dom5.ok(Op.READ, "/s") == b""


def test_set_perms_accepts_c_number_prefixes(world: World) -> None:
    world.dom0.write_ok("/s")
    world.dom0.set_perms("/s", "n0", "r0x5", "w06")
    assert world.dom0.ok(Op.GET_PERMS, "/s") == b"n0\0r5\0w6\0"


@pytest.mark.parametrize("bad", ["r0x-5", "r0-5", "r-5", "r65536", "q5", "r"])
def test_set_perms_refuses_malformed_entries(world: World, bad: str) -> None:
    world.dom0.write_ok("/s")
    assert world.dom0.err(Op.SET_PERMS, "/s", "n0", bad) == "EINVAL"
    assert world.dom0.ok(Op.GET_PERMS, "/s") == b"n0\0"


# -- transactions (PROTOCOL.md 7) ------------------------------------------------------


def test_rewrite_with_same_value_conflicts(world: World) -> None:
    """Checklist 7: a generation change, not a value change, conflicts."""
    d, other = world.dom0, world.socket()
    d.write_ok("/a", b"v")
    tx = d.start()
    assert d.ok(Op.READ, "/a", tx=tx) == b"v"
    other.write_ok("/a", b"v")
    assert d.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_unrelated_writes_never_conflict(world: World) -> None:
    d, other = world.dom0, world.socket()
    d.write_ok("/a/x", b"1")
    d.write_ok("/b/y", b"1")
    tx = d.start()
    assert d.ok(Op.READ, "/a/x", tx=tx) == b"1"
    d.write_ok("/a/x", b"2", tx=tx)
    other.write_ok("/b/y", b"2")
    other.write_ok("/b/z", b"new")
    other.set_perms("/b", "n0", "r5")
    assert d.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert d.ok(Op.READ, "/a/x") == b"2"


def test_transaction_sees_nodes_as_of_first_access(world: World) -> None:
    d, other = world.dom0, world.socket()
    d.write_ok("/a", b"1")
    d.write_ok("/b", b"1")
    tx = d.start()
    assert d.ok(Op.READ, "/a", tx=tx) == b"1"
    other.write_ok("/a", b"2")
    other.write_ok("/b", b"2")
    assert d.ok(Op.READ, "/a", tx=tx) == b"1"  # its private copy
    assert d.ok(Op.READ, "/b", tx=tx) == b"2"  # first access now
    assert d.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


def test_transaction_writes_are_private_until_commit(world: World) -> None:
    d, other = world.dom0, world.socket()
    tx = d.start()
    d.write_ok("/t/a", b"1", tx=tx)
    assert other.err(Op.READ, "/t/a") == "ENOENT"
    assert d.err(Op.READ, "/t/a") == "ENOENT"  # outside the transaction too
    assert d.ok(Op.READ, "/t/a", tx=tx) == b"1"
    assert d.ok(Op.DIRECTORY, "/t", tx=tx) == b"a\0"
    assert d.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert other.ok(Op.READ, "/t/a") == b"1"


def test_deleted_then_recreated_elsewhere_conflicts(world: World) -> None:
    d, other = world.dom0, world.socket()
    d.write_ok("/a", b"1")
    tx = d.start()
    assert d.ok(Op.READ, "/a", tx=tx) == b"1"
    other.write_ok("/a", b"1")
    assert d.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"
    tx = d.start()
    assert d.ok(Op.READ, "/a", tx=tx) == b"1"
    assert other.ok(Op.RM, "/a") == OK
    other.write_ok("/a", b"1")
    assert d.err(Op.TRANSACTION_END, "T", tx=tx) == "EAGAIN"


# -- quotas (PROTOCOL.md 10): exact boundaries under both rules ------------------------


def allowed(rule: QuotaRule, limit: int) -> int:
    """The largest count a quota of ``limit`` allows."""
    return limit if rule is QuotaRule.AT_MOST_N else limit - 1


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_nodes_quota(rule: QuotaRule) -> None:
    w = World(rule, nodes=6)
    dom5 = w.domain(5)  # owns its home: 1 node
    top = allowed(rule, 6)
    for i in range(top - 1):
        dom5.write_ok(f"n{i}")
    before = w.snapshot()
    assert Peer.error_of(dom5.write("overflow")) == "ENOSPC"
    assert dom5.err(Op.MKDIR, "overflow") == "ENOSPC"
    assert w.snapshot() == before
    assert w.engine.store.owned(5) == top
    assert dom5.ok(Op.RM, "n0") == OK
    # One slot free: a write needing two new nodes is refused whole.
    assert Peer.error_of(dom5.write("p/q")) == "ENOSPC"
    assert dom5.err(Op.READ, "p") == "ENOENT"
    dom5.write_ok("p")
    # Rewriting an existing node creates nothing.
    dom5.write_ok("p", b"again")
    assert audit(w.engine) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_nodes_quota_is_checked_again_at_commit(rule: QuotaRule) -> None:
    w = World(rule, nodes=8)
    dom5 = w.domain(5)
    dom5.write_ok("one")
    dom5.write_ok("two")  # owns 3
    top = allowed(rule, 8)
    spare = top - 3
    tx1, tx2 = dom5.start(), dom5.start()
    for i in range(spare):
        dom5.write_ok(f"one/{i}", tx=tx1)
        dom5.write_ok(f"two/{i}", tx=tx2)
    assert dom5.ok(Op.TRANSACTION_END, "T", tx=tx1) == OK
    before = w.snapshot()
    assert dom5.err(Op.TRANSACTION_END, "T", tx=tx2) == "ENOSPC"
    assert w.snapshot() == before
    assert w.engine.store.owned(5) == top


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_node_size_quota(rule: QuotaRule) -> None:
    w = World(rule)
    dom5 = w.domain(5)
    # 16 + 8 x 1 entry + value: the largest value the 2048 limit allows.
    biggest = allowed(rule, 2048) - 24
    dom5.write_ok("v", b"x" * biggest)
    assert Peer.error_of(dom5.write("v", b"x" * (biggest + 1))) == "ENOSPC"
    assert dom5.ok(Op.READ, "v") == b"x" * biggest
    assert Peer.error_of(dom5.write("new", b"x" * (biggest + 1))) == "ENOSPC"
    assert dom5.err(Op.READ, "new") == "ENOENT"
    dom5.write_ok("new", b"x" * biggest)
    # Privileged writers are exempt.
    w.dom0.write_ok("/local/domain/5/v", b"x" * 4000)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_watch_quota(rule: QuotaRule) -> None:
    w = World(rule, watches=3)
    dom5 = w.domain(5)
    top = allowed(rule, 3)
    for i in range(top):
        dom5.watch(f"/w{i}", "t")
    code = "E2BIG" if rule is QuotaRule.AT_MOST_N else "ENOSPC"
    assert dom5.err(Op.WATCH, "/over", "t") == code
    assert dom5.ok(Op.UNWATCH, "/w0", "t") == OK
    dom5.watch("/over", "t")
    # Another domain has its own count; the socket has no quota.
    dom6 = w.domain(6)
    dom6.watch("/x", "t")
    for i in range(10):
        w.dom0.watch(f"/w{i}", "t")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_transaction_quota(rule: QuotaRule) -> None:
    w = World(rule, transactions=3)
    dom5 = w.domain(5)
    top = allowed(rule, 3)
    ids = [dom5.start() for _ in range(top)]
    assert dom5.err(Op.TRANSACTION_START, "") == "ENOSPC"
    assert dom5.ok(Op.TRANSACTION_END, "F", tx=ids[0]) == OK
    dom5.start()
    for _ in range(5):
        w.dom0.start()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_transaction_nodes_quota(rule: QuotaRule) -> None:
    w = World(rule, transaction_nodes=4)
    dom5 = w.domain(5)
    for i in range(6):
        dom5.write_ok(f"n{i}", b"v")
    top = allowed(rule, 4)
    tx = dom5.start()
    dom5.write_ok("n0", b"changed", tx=tx)  # touches n0 only
    for i in range(1, top):
        assert dom5.ok(Op.READ, f"/local/domain/5/n{i}", tx=tx) == b"v"
    assert dom5.ok(Op.READ, "/local/domain/5/n1", tx=tx) == b"v"  # not new
    assert dom5.err(Op.READ, f"/local/domain/5/n{top}", tx=tx) == "ENOSPC"
    # The transaction has failed: its commit reports ENOMEM, applies nothing.
    assert dom5.err(Op.TRANSACTION_END, "T", tx=tx) == "ENOMEM"
    assert dom5.ok(Op.READ, "n0") == b"v"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_node_permissions_quota(rule: QuotaRule) -> None:
    w = World(rule)  # default 5 entries
    dom5 = w.domain(5)
    top = allowed(rule, 5)
    dom5.set_perms("/local/domain/5", "n5", *["r0"] * (top - 1))
    too_many = ["n5", *["r6"] * top]
    assert dom5.err(Op.SET_PERMS, "/local/domain/5", *too_many) == "ENOSPC"
    assert w.dom0.ok(Op.GET_PERMS, "/local/domain/5") == args("n5", *["r0"] * (top - 1))
    w.dom0.set_perms("/local/domain/5", "n5", *["r6"] * 10)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_path_max_quota(rule: QuotaRule) -> None:
    w = World(rule)  # default 2048
    dom5 = w.domain(5)
    top = allowed(rule, 2048)
    home = "/local/domain/5/"
    # Measured without the /local/domain/<n>/ prefix, for any n.
    assert dom5.err(Op.READ, home + "a" * top) == "ENOENT"
    assert dom5.err(Op.READ, home + "a" * (top + 1)) == "EINVAL"
    assert dom5.err(Op.READ, "a" * top) == "ENOENT"
    assert dom5.err(Op.READ, "a" * (top + 1)) == "EINVAL"
    assert dom5.err(Op.READ, "/local/domain/99/" + "a" * top) == "EACCES"
    assert dom5.err(Op.READ, "/local/domain/99/" + "a" * (top + 1)) == "EINVAL"
    # Elsewhere the whole path counts.
    assert dom5.err(Op.READ, "/" + "a" * (top - 1)) == "EACCES"
    assert dom5.err(Op.READ, "/" + "a" * top) == "EINVAL"
    # The privileged socket is limited only by the 3072 absolute maximum.
    assert w.dom0.err(Op.READ, "/" + "a" * 3071) == "ENOENT"
    assert w.dom0.err(Op.READ, "/" + "a" * 3072) == "EINVAL"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.value)
def test_zero_means_unlimited(rule: QuotaRule) -> None:
    w = World(rule, watches=0, transactions=0, nodes=0)
    dom5 = w.domain(5)
    for i in range(140):
        dom5.watch(f"/w{i}", "t")
    for _ in range(12):
        dom5.start()
    for i in range(20):
        dom5.write_ok(f"n{i}")


def test_privileged_connections_have_no_quota() -> None:
    w = World(nodes=1, watches=1, transactions=1, node_size=30, node_permissions=1)
    d = w.dom0
    for i in range(5):
        d.write_ok(f"/n{i}", b"x" * 100)
        d.watch(f"/n{i}", "t")
        d.start()
    d.set_perms("/n0", "n0", "r5", "r6")


def test_set_quota_changes_one_domain_or_the_default(world: World) -> None:
    d = world.dom0
    dom5, dom6 = world.domain(5), world.domain(6)
    assert d.ok(Op.SET_QUOTA, "5", "watches", "1") == OK
    assert d.ok(Op.GET_QUOTA, "5", "watches") == b"1\0"
    assert d.ok(Op.GET_QUOTA, "watches") == b"128\0"
    assert d.ok(Op.GET_QUOTA, "6", "watches") == b"128\0"
    dom5.watch("/a", "t")
    assert dom5.err(Op.WATCH, "/b", "t") == "E2BIG"
    dom6.watch("/a", "t")
    dom6.watch("/b", "t")
    assert d.ok(Op.SET_QUOTA, "transactions", "1") == OK
    assert d.ok(Op.GET_QUOTA, "transactions") == b"1\0"
    dom6.start()
    assert dom6.err(Op.TRANSACTION_START, "") == "ENOSPC"
    assert d.ok(Op.SET_QUOTA, "permissions", "7") == OK  # xenstore.txt's name
    assert d.ok(Op.GET_QUOTA, "node-permissions") == b"7\0"


# -- features and CONTROL (PROTOCOL.md 8.3) --------------------------------------------


def test_get_and_set_feature(world: World) -> None:
    d = world.dom0
    dom5 = world.domain(5, home=False)
    own = dom5.ok(Op.GET_FEATURE)
    assert own == d.ok(Op.GET_FEATURE, "5")
    assert d.ok(Op.SET_FEATURE, "5", "1") == OK
    assert d.ok(Op.GET_FEATURE, "5") == b"1\0"
    assert dom5.ok(Op.GET_FEATURE) == b"1\0"
    assert dom5.err(Op.SET_FEATURE, "5", "3") == "EACCES"
    assert d.ok(Op.GET_FEATURE, "6") == own


def test_control_help_announces_the_seed_operations(world: World) -> None:
    text = world.dom0.ok(Op.CONTROL, "help")
    assert text.endswith(b"\0")
    lines = text[:-1].decode().splitlines()
    seed = [line for line in lines if line.startswith("seed-migration")]
    assert len(seed) == 1
    assert "QUIESCE=27" in seed[0]
    for command in ("check", "quota", "help"):
        assert any(line.split()[0] == command for line in lines), command


def test_control_check_finds_a_bad_account(world: World) -> None:
    _populate(world)
    assert world.dom0.ok(Op.CONTROL, "check") == OK
    world.engine.store.owner_counts[0] += 1
    assert world.dom0.err(Op.CONTROL, "check") == "EIO"
    world.engine.store.owner_counts[0] -= 1


def test_control_quota(world: World) -> None:
    d = world.dom0
    text = d.ok(Op.CONTROL, "quota")[:-1].decode()
    values = dict(line.split() for line in text.splitlines())
    assert values["nodes"] == "1000"
    assert values["path-max"] == "2048"
    assert d.ok(Op.CONTROL, "quota", "set", "nodes", "77") == OK
    assert d.ok(Op.GET_QUOTA, "nodes") == b"77\0"
    assert d.err(Op.CONTROL, "quota", "set", "bogus", "1") == "EINVAL"
    assert d.err(Op.CONTROL, "quota", "set", "nodes", "x") == "EINVAL"
