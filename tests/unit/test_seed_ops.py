"""QUIESCE, ADD_DOMAIN_WATCHES, GET_DOMAIN_WATCHES and doomed transactions.

MIGRATION.md a.3 to a.6 with c.7, c.11, c.12, c.13 and c.17, at the level
of the engine: a real :class:`Engine` gets framed requests and the exact
messages it queues on each connection are checked.  The hypervisor is
:class:`~pyxenstored.sim.hypervisor.MemoryHypervisor`, the in-memory
stand-in implementing the engine's ``Hypervisor`` interface (which domains
exist, which rings are attached, and QUIESCE draining on the test's
command); the ring side of QUIESCE is tested against the real
daemon in ``tests/integration/test_migration.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyxenstored.engine import Engine, EngineConfig
from pyxenstored.engine.audit import audit
from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.store import Limits
from pyxenstored.wire import Op
from tests.enginepeer import ERROR, OK, Msg, Peer, args

DOMID = 5
HOME = f"/local/domain/{DOMID}"
SEED_OPS = [Op.QUIESCE, Op.ADD_DOMAIN_WATCHES, Op.GET_DOMAIN_WATCHES]


# -- peers ---------------------------------------------------------------------


class Host:
    """An engine with the stand-in hypervisor and dom0's socket client."""

    def __init__(self, **limits: int) -> None:
        self.hv = MemoryHypervisor()
        self.engine = Engine(EngineConfig(limits=Limits(**limits)), hypervisor=self.hv)
        self.dom0 = Peer(self.engine, self.engine.connect_socket())

    def create(self, domid: int = DOMID) -> None:
        """The domain exists in the hypervisor; dom0 gives it its home."""
        self.hv.create_domain(domid)
        home = f"/local/domain/{domid}"
        assert self.dom0.ok(Op.MKDIR, home) == OK
        assert self.dom0.ok(Op.SET_PERMS, home, f"n{domid}") == OK

    def introduce(self, domid: int = DOMID, port: int = 3) -> Peer:
        assert self.dom0.ok(Op.INTRODUCE, str(domid), "4095", str(port)) == OK
        conn = self.engine.domains.connection(domid)
        assert conn is not None
        return Peer(self.engine, conn)

    def guest(self, domid: int = DOMID) -> Peer:
        self.create(domid)
        return self.introduce(domid)

    def add(self, domid: int, *strings: str) -> Msg:
        return self.dom0.call(Op.ADD_DOMAIN_WATCHES, args(str(domid), *strings))

    def watches(self, domid: int = DOMID, index: int = 0) -> tuple[int, list[str], int]:
        """GET_DOMAIN_WATCHES: (gencnt, the strings after it, reply size)."""
        payload = self.dom0.ok(Op.GET_DOMAIN_WATCHES, str(domid), str(index))
        assert payload.endswith(b"\x00")
        gen, *strings = payload[:-1].decode("latin-1").split("\x00")
        assert gen.isdigit(), payload
        return int(gen), strings, len(payload)

    def all_watches(self, domid: int = DOMID) -> list[tuple[str, str]]:
        """The whole list, paged the way MIGRATION.md a.5 reads it."""
        first, _, _ = self.watches(domid)
        out: list[tuple[str, str]] = []
        while True:
            gen, strings, _ = self.watches(domid, len(out))
            assert gen == first, "the list changed while being read"
            if not strings:
                return out
            out += list(zip(strings[::2], strings[1::2], strict=True))

    def gen(self, domid: int = DOMID) -> int:
        return self.watches(domid, 10**6)[0]


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    assert audit(h.engine) == []


# -- common rules of the three operations --------------------------------------


@pytest.mark.parametrize("op", SEED_OPS)
def test_privileged_only(host: Host, op: Op) -> None:
    guest = host.guest()
    assert guest.err(op, str(DOMID), "0") == "EACCES"
    assert guest.err(op, str(DOMID)) == "EACCES"
    assert host.hv.calls.count(("quiesce", DOMID)) == 0


@pytest.mark.parametrize("op", SEED_OPS)
def test_transaction_id_must_be_zero(host: Host, op: Op) -> None:
    host.guest()
    # An id naming no transaction: ENOENT, as for every "checked" type.
    assert host.dom0.err(op, str(DOMID), "0", tx=77) == "ENOENT"
    # A real transaction of the caller: these operations take none.
    tx = int(host.dom0.ok(Op.TRANSACTION_START, "")[:-1])
    assert host.dom0.err(op, str(DOMID), "0", tx=tx) == "EINVAL"
    assert host.hv.calls.count(("quiesce", DOMID)) == 0
    assert host.all_watches() == []


@pytest.mark.parametrize("op", SEED_OPS)
@pytest.mark.parametrize("domid", ["0", "32752", "32767", "65536", "abc", "", "-1"])
def test_bad_domid_is_einval(host: Host, op: Op, domid: str) -> None:
    """The privileged domain, reserved ids and non-numbers (a.3 item 1)."""
    extra = ("0",) if op == Op.GET_DOMAIN_WATCHES else ()
    assert host.dom0.err(op, domid, *extra) == "EINVAL"


# -- QUIESCE -------------------------------------------------------------------


def test_quiesce_reply_is_deferred_until_drained(host: Host) -> None:
    host.guest()
    host.hv.idle = False
    assert host.dom0.raw(Op.QUIESCE, args(str(DOMID))) == []
    quiesce_req = host.dom0.req
    # Other requests are served meanwhile (a.3 item 6).
    assert host.dom0.ok(Op.READ, HOME) == b""
    host.hv.drained(DOMID)
    assert host.dom0.take() == [Msg(Op.QUIESCE, quiesce_req, 0, OK)]
    # Again, once quiesced: OK at once (a.3 item 8).
    assert host.dom0.ok(Op.QUIESCE, str(DOMID)) == OK


def test_quiesce_timeout_is_ebusy_and_may_be_repeated(host: Host) -> None:
    host.guest()
    host.hv.idle = False
    assert host.dom0.raw(Op.QUIESCE, args(str(DOMID))) == []
    host.hv.drained(DOMID, ok=False)
    [reply] = host.dom0.take()
    assert (reply.op, reply.payload) == (ERROR, b"EBUSY\x00")
    assert host.dom0.raw(Op.QUIESCE, args(str(DOMID))) == []  # waits again
    host.hv.drained(DOMID)
    assert [m.payload for m in host.dom0.take()] == [OK]


def test_quiesce_caller_gone_before_the_reply(host: Host) -> None:
    host.guest()
    host.hv.idle = False
    toolstack = Peer(host.engine, host.engine.connect_socket())
    assert toolstack.raw(Op.QUIESCE, args(str(DOMID))) == []
    host.engine.disconnect(toolstack.conn)
    host.hv.drained(DOMID)
    assert toolstack.take() == []
    assert toolstack.conn.id not in host.engine.pending


def test_quiesce_of_a_domain_not_introduced(host: Host) -> None:
    host.create()
    assert host.dom0.err(Op.QUIESCE, str(DOMID)) == "ENOENT"
    assert host.dom0.err(Op.QUIESCE, "9") == "ENOENT"
    assert host.dom0.err(Op.QUIESCE, str(DOMID), "x") == "EINVAL"


def test_introduce_resumes_a_quiesced_domain_intact(host: Host) -> None:
    """a.6: watches, transactions and queued output survive the resume."""
    guest = host.guest()
    guest.ok(Op.WATCH, "data", "w")
    tx = int(guest.ok(Op.TRANSACTION_START, "")[:-1])
    guest.take()
    gen = host.gen()
    assert host.dom0.ok(Op.QUIESCE, str(DOMID)) == OK
    host.dom0.write(f"{HOME}/data/while-quiesced", b"1")
    host.introduce(port=9)
    assert host.hv.calls[-1] == ("resume", DOMID)
    assert ("reset", DOMID) not in host.hv.calls
    assert host.gen() == gen
    assert host.all_watches() == [("data", "w")]
    assert guest.events() == [("data/while-quiesced", "w")]
    assert guest.write("data/in-tx", b"x", tx=tx).op == Op.WRITE
    assert guest.ok(Op.TRANSACTION_END, "T", tx=tx) == OK


def test_introduce_of_a_running_domain_resets_it(host: Host) -> None:
    """a.6, C compatibility: not quiesced, so watches and transactions go."""
    guest = host.guest()
    guest.ok(Op.WATCH, "data", "w")
    tx = int(guest.ok(Op.TRANSACTION_START, "")[:-1])
    gen = host.gen()
    host.introduce(port=9)
    assert ("reset", DOMID) in host.hv.calls
    assert host.gen() != gen
    assert host.all_watches() == []
    assert guest.err(Op.TRANSACTION_END, "T", tx=tx) == "ENOENT"


# -- ADD_DOMAIN_WATCHES --------------------------------------------------------


def test_add_to_an_introduced_domain_fires_at_the_domain(host: Host) -> None:
    guest = host.guest()
    out = host.dom0.raw(
        Op.ADD_DOMAIN_WATCHES,
        args(str(DOMID), "data", "rel", f"{HOME}/data", "abs", "@releaseDomain", "s"),
    )
    assert [(m.op, m.payload) for m in out] == [(Op.ADD_DOMAIN_WATCHES, OK)]
    # Initial events go to the domain, in order, paths as registered.
    assert guest.events() == [
        ("data", "rel"),
        (f"{HOME}/data", "abs"),
        ("@releaseDomain", "s"),
    ]
    host.dom0.write(f"{HOME}/data/x", b"1")
    assert guest.events() == [("data/x", "rel"), (f"{HOME}/data/x", "abs")]
    assert host.dom0.events() == []
    assert host.all_watches() == [
        ("data", "rel"),
        (f"{HOME}/data", "abs"),
        ("@releaseDomain", "s"),
    ]


def test_add_before_introduce_is_staged(host: Host) -> None:
    host.create()
    assert (
        host.add(DOMID, "data", "rel", "/local/domain/0/backend", "abs").payload == OK
    )
    assert host.add(DOMID, "@introduceDomain", "intro").payload == OK
    assert host.dom0.events() == []
    staged = [
        ("data", "rel"),
        ("/local/domain/0/backend", "abs"),
        ("@introduceDomain", "intro"),
    ]
    assert host.all_watches() == staged  # GET works on staged lists
    guest = host.introduce()
    # Attached at INTRODUCE, each firing its initial event to the domain.
    assert guest.events() == staged
    assert host.all_watches() == staged
    host.dom0.write(f"{HOME}/data/x", b"1")
    host.dom0.write("/local/domain/0/backend/vif", b"1")
    assert guest.events() == [("data/x", "rel")]  # the backend is not readable
    host.dom0.ok(Op.SET_PERMS, "/local/domain/0/backend/vif", "n0", f"r{DOMID}")
    assert guest.events() == [("/local/domain/0/backend/vif", "abs")]


def test_staged_watches_go_with_a_domain_that_dies(host: Host) -> None:
    host.create()
    assert host.add(DOMID, "data", "rel").payload == OK
    host.hv.kill_domain(DOMID)
    host.engine.check_domains()
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), "0") == "ENOENT"
    host.hv.create_domain(DOMID)
    guest = host.introduce()
    assert guest.events() == []
    assert host.all_watches() == []
    assert guest.err(Op.READ, "data", tx=7) == "ENOENT"  # not a restored domain


def test_add_for_a_domain_that_does_not_exist(host: Host) -> None:
    assert host.add(9, "data", "t").op == ERROR
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, "9", "data", "t") == "ENOENT"
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, "9") == "ENOENT"
    host.hv.kill_domain(9)
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, "9", "data", "t") == "ENOENT"
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, "9", "0") == "ENOENT"


def test_no_pairs_is_the_restored_marker_before_introduce_only(host: Host) -> None:
    host.create()
    assert host.add(DOMID).payload == OK
    assert host.watches() == (host.gen(), [], len(f"{host.gen()}\x00"))
    guest = host.introduce()
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, str(DOMID)) == "EINVAL"
    assert guest.events() == []


BAD_REQUESTS = {
    "odd number of strings": ("data", "t", "other"),
    "path without token": ("data",),
    "empty path": ("a", "t", "", "t"),
    "double slash": ("a", "t", "a//b", "t"),
    "trailing slash": ("a", "t", "a/", "t"),
    "bad character": ("a", "t", "a b", "t"),
    "absolute too long": ("a", "t", "/" + "x" * 3072, "t"),
}
DUPLICATES = {
    "twice in the request": ("a", "t", "b", "t", "a", "t"),
    "relative and absolute": ("a", "t", f"{HOME}/a", "t"),
    "against an existing watch": ("b", "u", "w", "t"),
    "existing, absolute form": ("b", "u", f"{HOME}/w", "t"),
}


@pytest.mark.parametrize("introduced", [True, False])
@pytest.mark.parametrize(
    ("name", "strings", "code"),
    [(k, v, "EINVAL") for k, v in BAD_REQUESTS.items()]
    + [(k, v, "EEXIST") for k, v in DUPLICATES.items()],
)
def test_add_is_all_or_nothing(
    host: Host, introduced: bool, name: str, strings: tuple[str, ...], code: str
) -> None:
    host.create()
    guest = host.introduce() if introduced else None
    assert host.add(DOMID, "w", "t").payload == OK
    if guest is not None:
        guest.take()
    before = host.watches()
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, str(DOMID), *strings) == code
    assert host.watches() == before, "a failed request changed the list"
    if guest is not None:
        assert guest.events() == []
    else:
        assert host.introduce().events() == [("w", "t")]
    assert host.all_watches() == [("w", "t")]


def test_same_path_other_token_is_no_duplicate(host: Host) -> None:
    host.guest()
    assert host.add(DOMID, "a", "t", "a", "u", f"{HOME}/a", "v").payload == OK
    assert [t for _, t in host.all_watches()] == ["t", "u", "v"]


def test_added_watches_bypass_the_quota_but_count() -> None:
    host = Host(watches=2)
    guest = host.guest()
    assert host.add(DOMID, "a", "1", "b", "2", "c", "3").payload == OK
    assert len(host.all_watches()) == 3
    assert guest.err(Op.WATCH, "d", "4") in ("E2BIG", "ENOSPC")
    assert audit(host.engine) == []


def test_double_restore_is_eexist(host: Host) -> None:
    """c.17: replaying the same watch records a second time fails loudly."""
    host.create()
    assert host.add(DOMID, "a", "t").payload == OK
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, str(DOMID), "a", "t") == "EEXIST"
    host.introduce()
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, str(DOMID), "a", "t") == "EEXIST"


# -- GET_DOMAIN_WATCHES --------------------------------------------------------


def test_pages_hold_whole_pairs_within_4096_bytes(host: Host) -> None:
    guest = host.guest()
    pairs = [(f"data/w{i:03d}", f"token-{i}-" + "x" * (i % 37)) for i in range(300)]
    for start in range(0, 300, 50):
        batch = [s for pair in pairs[start : start + 50] for s in pair]
        assert host.add(DOMID, *batch).payload == OK
    guest.take()
    gen = host.gen()
    got: list[tuple[str, str]] = []
    pages = 0
    while True:
        page_gen, strings, size = host.watches(DOMID, len(got))
        assert page_gen == gen
        assert size <= 4096
        if not strings:
            break
        pages += 1
        page = list(zip(strings[::2], strings[1::2], strict=True))
        got += page
        if len(got) < len(pairs):
            # Whole pairs only, and as many as fit: the next would not.
            nxt = pairs[len(got)]
            assert size + len(nxt[0]) + len(nxt[1]) + 2 > 4096
    assert got == pairs  # registration order
    assert pages >= 3
    # Any index, not only page boundaries.
    assert host.watches(DOMID, 299)[1] == list(pairs[299])
    assert host.watches(DOMID, 300) == (gen, [], len(f"{gen}\x00"))
    assert host.watches(DOMID, 10**9)[1] == []


def test_index_must_be_a_number(host: Host) -> None:
    host.guest()
    for index in ("x", "-1", "", "1.0"):
        assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), index) == "EINVAL"
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID)) == "EINVAL"
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), "0", "1") == "EINVAL"


def test_unknown_domain_is_enoent(host: Host) -> None:
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, "9", "0") == "ENOENT"
    host.create()  # exists, but neither introduced nor staged
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), "0") == "ENOENT"


def test_a_pair_that_cannot_fit_is_e2big(host: Host) -> None:
    guest = host.guest()
    for _ in range(6):  # a two-digit gencnt that stays two digits below
        guest.ok(Op.WATCH, "tmp", "t")
        guest.ok(Op.UNWATCH, "tmp", "t")
    # "NN\0" + "a\0" + token + "\0" = 4096: the largest pair that fits.
    guest.ok(Op.WATCH, "a", "t" * 4090)
    guest.ok(Op.WATCH, "b", "u" * 4091)  # one byte more
    guest.ok(Op.WATCH, "c", "v")
    gen = host.gen()
    assert 10 <= gen < 100
    assert host.watches(DOMID, 0) == (gen, ["a", "t" * 4090], 4096)
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), "1") == "E2BIG"
    assert host.watches(DOMID, 2) == (gen, ["c", "v"], 3 + 4)


def test_depth_watches_are_einval(host: Host) -> None:
    """c.7: the seed format cannot carry a depth; refuse, do not widen."""
    host.create()
    assert host.dom0.ok(Op.SET_FEATURE, str(DOMID), "7") == OK  # WATCHDEPTH
    guest = host.introduce()
    guest.ok(Op.WATCH, "data", "plain")
    assert host.all_watches() == [("data", "plain")]
    guest.ok(Op.WATCH, "data", "deep", "1")
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), "0") == "EINVAL"
    assert host.dom0.err(Op.GET_DOMAIN_WATCHES, str(DOMID), "1") == "EINVAL"


def test_gencnt_changes_exactly_when_the_list_does(host: Host) -> None:
    guest = host.guest()
    seen = [host.gen()]

    def changed() -> None:
        seen.append(host.gen())
        assert seen[-1] != seen[-2]

    def same() -> None:
        assert host.gen() == seen[-1]

    guest.ok(Op.WATCH, "a", "t")
    changed()
    guest.write("a/b", b"1")
    guest.ok(Op.READ, "a/b")
    host.dom0.write(f"{HOME}/a/c", b"2")
    guest.take()
    same()  # events and data operations leave the list alone
    assert guest.err(Op.WATCH, "a", "t") == "EEXIST"
    assert guest.err(Op.UNWATCH, "zz", "t") == "ENOENT"
    same()
    tx = int(guest.ok(Op.TRANSACTION_START, "")[:-1])
    guest.ok(Op.TRANSACTION_END, "F", tx=tx)
    host.dom0.ok(Op.WATCH, f"{HOME}/a", "dom0's own")
    same()  # another connection's watches are not the domain's
    guest.ok(Op.WATCH, "b", "t")
    changed()
    guest.ok(Op.UNWATCH, "a", "t")
    changed()
    assert host.add(DOMID, "c", "t").payload == OK
    changed()
    guest.ok(Op.RESET_WATCHES)
    changed()
    guest.ok(Op.RESET_WATCHES)
    same()  # nothing to remove
    guest.ok(Op.WATCH, "d", "t")
    changed()
    host.introduce(port=11)  # C-compatible reset of a running domain
    changed()
    assert len(set(seen)) == len(seen), "a gencnt value came back"
    assert seen == sorted(seen)


def test_gencnt_of_staged_lists(host: Host) -> None:
    host.create()
    assert host.add(DOMID, "a", "t").payload == OK
    first = host.gen()
    assert host.dom0.err(Op.ADD_DOMAIN_WATCHES, str(DOMID), "a", "t") == "EEXIST"
    assert host.gen() == first
    assert host.add(DOMID, "b", "t").payload == OK
    assert host.gen() != first


# -- doomed transactions (c.11) ------------------------------------------------


def restored(host: Host, *watches: str) -> Peer:
    """A domain restored from a migration (ADD_DOMAIN_WATCHES before INTRODUCE)."""
    host.create()
    host.dom0.write(f"{HOME}/data", b"")
    host.dom0.ok(Op.SET_PERMS, f"{HOME}/data", f"n{DOMID}")
    host.dom0.write(f"{HOME}/data/x", b"before")
    host.dom0.ok(Op.SET_PERMS, f"{HOME}/data/x", f"n{DOMID}")
    assert host.add(DOMID, *watches).payload == OK
    guest = host.introduce()
    guest.take()
    return guest


@pytest.mark.parametrize("watches", [(), ("data", "w")])
def test_unknown_transaction_of_a_restored_domain_is_doomed(
    host: Host, watches: tuple[str, ...]
) -> None:
    guest = restored(host, *watches)
    host.dom0.ok(Op.WATCH, f"{HOME}/data", "dom0")
    host.dom0.take()
    # The guest carries on with transaction 42, opened on the source host.
    assert guest.ok(Op.READ, "data/x", tx=42) == b"before"
    assert guest.write("data/x", b"in tx", tx=42) == Msg(Op.WRITE, guest.req, 42, OK)
    assert guest.write("data/new", b"1", tx=42).op == Op.WRITE
    assert guest.ok(Op.READ, "data/x", tx=42) == b"in tx"  # behaves normally
    assert sorted(guest.ok(Op.DIRECTORY, "data", tx=42).split(b"\x00")) == [
        b"",
        b"new",
        b"x",
    ]
    assert host.dom0.ok(Op.READ, f"{HOME}/data/x") == b"before"
    assert host.dom0.err(Op.READ, f"{HOME}/data/new") == "ENOENT"
    reply = guest.call(Op.TRANSACTION_END, args("T"), tx=42)
    assert (reply.op, reply.payload) == (ERROR, b"EAGAIN\x00")
    # Its writes never become visible, and fire nothing.
    assert host.dom0.ok(Op.READ, f"{HOME}/data/x") == b"before"
    assert host.dom0.err(Op.READ, f"{HOME}/data/new") == "ENOENT"
    assert host.dom0.events() == []
    assert guest.events() == []
    # The driver redoes it as a new transaction, which commits.
    tx = int(guest.ok(Op.TRANSACTION_START, "")[:-1])
    guest.write("data/x", b"redone", tx=tx)
    assert guest.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert host.dom0.ok(Op.READ, f"{HOME}/data/x") == b"redone"
    # Another old one is abandoned: END F is OK.
    guest.write("data/x", b"dropped", tx=43)
    assert guest.ok(Op.TRANSACTION_END, "F", tx=43) == OK
    assert host.dom0.ok(Op.READ, f"{HOME}/data/x") == b"redone"
    # Ending an old transaction directly is EAGAIN too.
    assert guest.err(Op.TRANSACTION_END, "T", tx=44) == "EAGAIN"


def test_doomed_transactions_count_against_the_quota() -> None:
    host = Host(transactions=2)
    guest = restored(host)
    tx = int(guest.ok(Op.TRANSACTION_START, "")[:-1])
    assert guest.ok(Op.READ, "data/x", tx=42) == b"before"  # 2 of 2
    assert guest.err(Op.READ, "data/x", tx=43) == "ENOENT"  # over quota
    assert guest.err(Op.TRANSACTION_END, "T", tx=43) == "ENOENT"
    assert guest.err(Op.TRANSACTION_END, "T", tx=42) == "EAGAIN"
    assert guest.ok(Op.READ, "data/x", tx=43) == b"before"  # room again
    assert guest.ok(Op.TRANSACTION_END, "T", tx=tx) == OK
    assert audit(host.engine) == []


def test_unknown_transaction_of_other_domains_is_enoent(host: Host) -> None:
    guest = host.guest()
    assert guest.err(Op.READ, "name", tx=42) == "ENOENT"
    assert guest.err(Op.WRITE, "data", tx=42) == "ENOENT"
    assert guest.err(Op.TRANSACTION_END, "T", tx=42) == "ENOENT"
    assert guest.err(Op.TRANSACTION_END, "F", tx=42) == "ENOENT"
    assert host.dom0.err(Op.READ, HOME, tx=42) == "ENOENT"
    assert host.dom0.err(Op.TRANSACTION_END, "T", tx=42) == "ENOENT"
    assert guest.conn.transactions == {}
