"""One regression test per class of xenstored security advisory (XSA).

Each test drives a real ``pyxenstored`` with real guests: ring pages and
event channels of the emulated hypervisor (EMULATION.md), domains built and
introduced by the simulated toolstack.  It states the secure behaviour
precisely (which error, which event, which node is gone) and ends, through
the ``host`` fixture, with the daemon alive, nothing in its log that looks
like a crash, and CONTROL ``check`` answering OK: the tree is consistent
and every quota account equals a recount.

docs/security.md maps each advisory to its test here.  The cases that
existing suites already pin down (malformed framing in test_bad_input.py,
ring abuse in test_hostile_rings.py, boundaries of every quota in
tests/unit/test_engine.py) are not repeated; these build on them with the
attack each advisory describes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.client.transport import Transport, UnixTransport
from pyxenstored.errors import (
    InvalidArgument,
    NoEntry,
    NoSpace,
    NotPermitted,
    OutOfMemory,
    PermissionDenied,
    TooBig,
    TransactionConflict,
    XsError,
)
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from pyxenstored.wire import HEADER
from pyxenstored.wire.ops import Op
from tests.conftest import BACKEND, RunningDaemon
from tests.ringtools import Page, drain
from tests.wiretools import TIMEOUT, RawGuest, args, frame, rss_kib, wait_until

OK = b"OK\0"
#: u32 word positions of the ring page fields (RING.md 1).
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD = 512, 513, 514, 515
ERROR_FIELD = 518
#: Defaults of the quotas the memory tests lean on (PROTOCOL.md 10).
MEMORY_QUOTA = 2621440
NODE_SIZE = 2048


# -- helpers -----------------------------------------------------------------


class Bounded:
    """A transport whose reads never wait longer than :data:`TIMEOUT`."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def send_all(self, data: bytes) -> None:
        self.inner.send_all(data)

    def receive_some(
        self, max_bytes: int = 65536, timeout: float | None = None
    ) -> bytes:
        wait = TIMEOUT if timeout is None else min(timeout, TIMEOUT)
        return self.inner.receive_some(max_bytes, timeout=wait)

    def close(self) -> None:
        self.inner.close()


def until_refused(call: Callable[[int], object], limit: int) -> tuple[int, XsError]:
    """Call ``call(0)``, ``call(1)``... until one fails; (calls done, error)."""
    for i in range(limit):
        try:
            call(i)
        except XsError as error:
            return i, error
    raise AssertionError(f"{limit} calls and none refused")


class Host:
    """A daemon serving the emulated hypervisor, its dom0 and its guests."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.daemon = daemon
        self.dir = daemon.directory
        self.hv = HostDir(str(self.dir))
        self.dom0 = self.socket_client()
        self.toolstack = Toolstack(self.dom0, self.hv)
        #: The guest end open for each domain (one at a time, as one kernel).
        self._guests: dict[int, Client | RawGuest] = {}

    def socket_client(self) -> Client:
        return Client(transport=Bounded(UnixTransport.connect(str(self.daemon.socket))))

    def drop_guest(self, domid: int) -> None:
        """Close the guest end open for the domain, if any."""
        old = self._guests.pop(domid, None)
        if old is not None:
            old.close()

    def guest(self, domid: int) -> Client:
        """A well-behaved guest client over the domain's ring."""
        self.drop_guest(domid)
        client = Client(
            transport=Bounded(GuestRing(str(self.dir), domid, timeout=TIMEOUT))
        )
        self._guests[domid] = client
        return client

    def raw(self, domid: int) -> RawGuest:
        """A guest writing frames itself (replaces the domain's other guest)."""
        self.drop_guest(domid)
        guest = RawGuest(self.dir, domid)
        self._guests[domid] = guest
        return guest

    def check(self) -> None:
        """CONTROL check: the tree and every account agree with a recount."""
        assert self.dom0.control("check") == OK

    def usage(self, domid: int) -> dict[str, int]:
        """What CONTROL ``quota <domid>`` says the domain uses."""
        text = self.dom0.control("quota", str(domid)).rstrip(b"\0").decode()
        used: dict[str, int] = {}
        for line in text.splitlines():
            name, figures = line.split()
            count = figures.split("/")[0]
            if count != "-":
                used[name] = int(count)
        return used

    def nodes(self) -> dict[str, list[str]]:
        """Every node and its permissions, walked by dom0."""
        found: dict[str, list[str]] = {}
        todo = ["/"]
        while todo:
            path = todo.pop()
            found[path] = [str(p) for p in self.dom0.get_perms(path)]
            prefix = path if path != "/" else ""
            todo.extend(f"{prefix}/{name}" for name in self.dom0.directory(path))
        return found

    def naming(self, domid: int) -> dict[str, list[str]]:
        """The nodes whose permissions name ``domid`` at all."""
        return {
            path: perms
            for path, perms in self.nodes().items()
            if any(int(p[1:]) == domid for p in perms)
        }

    def kill(self, domid: int, *, remove: bool = True) -> None:
        """The domain dies; wait for xenstore's clean-up."""
        self.hv.kill_domain(domid, remove=remove)
        wait_until(
            lambda: not self.dom0.is_domain_introduced(domid), f"dom{domid} cleaned"
        )

    def new_domain(self, domid: int) -> None:
        """A fresh domain (new page, no nodes written for it) is introduced."""
        self.hv.create_domain(domid)
        self.dom0.introduce(domid, 0xFEFFF, 1)

    def assert_sound(self) -> None:
        assert self.daemon.alive(), "the daemon died"
        self.check()
        text = self.daemon.log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert " ERROR " not in text, text[-3000:]
        assert " CRITICAL " not in text, text[-3000:]

    def close(self) -> None:
        for client in self._guests.values():
            client.close()
        self.dom0.close()


@pytest.fixture
def host(host_daemon: RunningDaemon) -> Iterator[Host]:
    """pyxenstored with domains 1 and 2 built and introduced."""
    h = Host(host_daemon)
    h.toolstack.create_domain(1)
    h.toolstack.create_domain(2)
    try:
        yield h
        h.assert_sound()
    finally:
        h.close()


def home(domid: int) -> str:
    return f"/local/domain/{domid}"


# -- XSA-115: watch events must not reveal unreadable nodes ----------------------


def test_xsa115_events_only_for_nodes_the_watcher_may_read(host: Host) -> None:
    """PROTOCOL.md 6.6: an event goes to a guest only if it may read the
    node (now or before the change) or its parent."""
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.watch("/", "all")
    assert drain(g1) == [("/", "all")]
    # Nodes of dom0 and of another guest: never heard of.
    dom0.write("/secret/a", b"x")
    dom0.mkdir("/secret/b")
    dom0.rm("/secret")
    dom0.write(f"{home(2)}/data/x", b"x")
    g2 = host.guest(2)
    g2.write("data/y", b"y")
    dom0.transaction(lambda tx: dom0.write("/secret2/x", b"x", tx))
    assert drain(g1) == []
    # Its own area: heard of, also through a transaction.
    dom0.write(f"{home(1)}/data/visible", b"")
    dom0.transaction(lambda tx: dom0.write(f"{home(1)}/data/tx", b"", tx))
    # Granting read fires; revoking fires too (it could read it before),
    # and after that the node is silent again.
    dom0.write("/shared", b"")
    dom0.set_perms("/shared", ["n0", "r1"])
    dom0.set_perms("/shared", ["n0"])
    dom0.write("/shared", b"again")
    # A node it may not read, under a parent it may read: told (its parent
    # lists it anyway).
    dom0.write("/pub/hidden", b"")
    dom0.set_perms("/pub", ["n0", "r1"])
    dom0.write("/pub/hidden", b"new")
    # Removal of an unreadable subtree under an unreadable parent: silent.
    dom0.write("/secret3/a/b", b"")
    dom0.rm("/secret3")
    assert drain(g1) == [
        (f"{home(1)}/data/visible", "all"),
        (f"{home(1)}/data/tx", "all"),
        ("/shared", "all"),
        ("/shared", "all"),
        ("/pub", "all"),
        ("/pub/hidden", "all"),
    ]
    # Reading them still hides what it may not see.
    with pytest.raises(PermissionDenied):
        g1.read("/pub/hidden")
    with pytest.raises(PermissionDenied):
        g1.read("/secret2/x")


def test_xsa115_special_watches_need_read_on_the_special_node(host: Host) -> None:
    """@introduceDomain/@releaseDomain fire only for readers of the node."""
    dom0 = host.dom0
    g1 = host.guest(1)
    g2 = host.guest(2)
    for g in (g1, g2):
        g.watch("@introduceDomain", "in")
        g.watch("@releaseDomain", "out")
        # The initial events are sent whatever the permissions (as C).
        assert drain(g) == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
    dom0.watch("@introduceDomain", "in")
    dom0.watch("@releaseDomain", "out")
    drain(dom0)
    for g in (g1, g2):
        with pytest.raises(PermissionDenied):
            g.get_perms("@releaseDomain")
        with pytest.raises(PermissionDenied):
            g.set_perms("@releaseDomain", ["n0", "r1"])
    host.toolstack.create_domain(3)
    host.kill(3)
    assert drain(dom0) == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
    assert drain(g1) == []
    assert drain(g2) == []
    # dom0 lets domain 1 (a driver domain, say) see domains going away.
    dom0.set_perms("@releaseDomain", ["n0", "r1"])
    assert [str(p) for p in g1.get_perms("@releaseDomain")] == ["n0", "r1"]
    with pytest.raises(PermissionDenied):
        g1.set_perms("@releaseDomain", ["n0", "r1", "r2"])  # read is not owner
    host.toolstack.create_domain(4)
    host.kill(4)
    assert drain(g1) == [("@releaseDomain", "out")]
    assert drain(g2) == []
    assert drain(dom0) == [("@introduceDomain", "in"), ("@releaseDomain", "out")]


# -- XSA-322 / XSA-417: a reused domid inherits nothing ----------------------------


def test_xsa322_reused_domid_inherits_nothing(host: Host) -> None:
    """Domain 1 dies; a new domain 1 gets no node, right, watch,
    transaction or quota count of the old one (PROTOCOL.md 8.2)."""
    dom0 = host.dom0
    # Domain 2 lets domain 1 create nodes in its area; dom0 grants it reads.
    dom0.set_perms(f"{home(2)}/data", ["n2", "w1"])
    dom0.write("/grant", b"secret")
    dom0.set_perms("/grant", ["n0", "r1"])
    old = host.guest(1)
    old.write("data/own/a", b"1")
    old.write(f"{home(2)}/data/from1", b"1")
    old.watch("data", "w")
    old_tx = old.transaction_start()
    old.write("data/in-tx", b"1", old_tx)
    assert old.read("/grant") == b"secret"
    assert host.usage(1)["transactions"] == 1
    host.kill(1)
    assert host.naming(1) == {}, "nodes still name the dead domain"
    assert [str(p) for p in dom0.get_perms(f"{home(2)}/data")] == ["n2"]
    assert not dom0.exists(f"{home(2)}/data/from1")
    host.new_domain(1)
    assert host.usage(1) == {"nodes": 0, "watches": 0, "transactions": 0, "memory": 0}
    new = host.guest(1)
    with pytest.raises(PermissionDenied):
        new.read("/grant")
    with pytest.raises(PermissionDenied):
        new.directory(home(1))
    with pytest.raises(PermissionDenied):
        new.read(f"{home(0)}/backend/vif/1/0/state")
    with pytest.raises(PermissionDenied):
        new.write(f"{home(2)}/data/again", b"")
    with pytest.raises(NoEntry):
        new.transaction_end(old_tx)
    dom0.write(f"{home(1)}/data/x", b"")
    assert drain(new) == [], "an old watch fired for the new domain"
    assert not dom0.exists(f"{home(1)}/data/in-tx")


def test_xsa322_entries_for_absent_domains_grant_nothing(host: Host) -> None:
    """An entry set while its domain did not exist stays dead (stale)."""
    dom0 = host.dom0
    dom0.write("/early", b"secret")
    dom0.set_perms("/early", ["n0", "r5"])
    assert [str(p) for p in dom0.get_perms("/early")] == ["n0", "r5"]
    with pytest.raises(NoEntry):
        dom0.set_perms("/early", ["n6"])  # an owner that does not exist
    host.new_domain(5)
    g5 = host.guest(5)
    with pytest.raises(PermissionDenied):
        g5.read("/early")
    g5.watch("/early", "w")
    drain(g5)
    dom0.write("/early", b"changed")
    assert drain(g5) == []


def test_xsa417_unintroduced_domain_leaves_nothing_to_its_successor(
    host: Host,
) -> None:
    """The toolstack built domain 5, which died before INTRODUCE; its
    backend entries (``n0 r5``) must not serve the next domain 5."""
    dom0 = host.dom0
    host.toolstack.create_domain(5, introduce=False)
    dom0.set_quota("nodes", 5000, 5)
    backend = f"{home(0)}/backend/vif/5/0/state"
    assert host.naming(5)
    host.toolstack.destroy_domain(5)  # dies; libxl removes what it knows of
    wait_until(lambda: host.naming(5) == {}, "dead domain 5 forgotten", timeout=3)
    host.new_domain(5)
    assert dom0.get_quota("nodes", 5) == 1000
    g5 = host.guest(5)
    with pytest.raises(PermissionDenied):
        g5.read(backend)


def test_xsa417_rights_given_to_a_dying_domain_grant_nothing(host: Host) -> None:
    """Between its clean-up and its end a dying domain can still be named in
    SET_PERMS; that must not give its successor anything."""
    dom0 = host.dom0
    host.kill(1, remove=False)  # dying: cleaned up, still there
    dom0.write("/late", b"secret")
    dom0.set_perms("/late", ["n0", "r1"])
    dom0.write("/late-owned", b"")
    with pytest.raises(NoEntry):
        dom0.set_perms("/late-owned", ["n1"])
    host.hv.kill_domain(1, remove=True)  # now gone
    host.new_domain(1)
    g1 = host.guest(1)
    with pytest.raises(PermissionDenied):
        g1.read("/late")
    assert host.usage(1)["nodes"] == 0


# -- XSA-323: path lengths ------------------------------------------------------------


def test_xsa323_path_length_is_checked_for_every_operation(host: Host) -> None:
    """An unprivileged path may measure 2048 (``path-max``, without any
    ``/local/domain/<n>/`` prefix), not more, whatever the operation."""
    dom0 = host.dom0
    g1 = host.guest(1)
    # 2048 characters; short components (a child list counts in node-size).
    longest = "data" + ("/" + "p" * 99) * 20 + "/" + "p" * 43
    assert len(longest) == 2048
    g1.write(longest, b"v")
    assert g1.read(f"{home(1)}/{longest}") == b"v"
    g1.rm(longest)
    g1.write("data/" + "p" * 99, b"")
    over = longest + "q"
    absolute = f"{home(1)}/{over}"
    other_prefix = f"{home(2)}/{over}"
    outside = "/" + "x" * 2048
    for path in (over, absolute, other_prefix, outside):
        for call in (
            lambda p: g1.write(p, b"v"),
            g1.read,
            g1.mkdir,
            g1.rm,
            g1.directory,
            g1.get_perms,
            lambda p: g1.set_perms(p, ["n1"]),
            lambda p: g1.watch(p, "t"),
        ):
            with pytest.raises(InvalidArgument):
                call(path)
        # No watch can have such a path; C 4.17 finds none (ENOENT).
        with pytest.raises(NoEntry):
            g1.unwatch(path, "t")
    assert dom0.directory(f"{home(1)}/data") == ["p" * 99]
    # dom0 is not bound by path-max, only by the absolute maximum.
    dom0.write(f"{home(1)}/{'d' * 3000}", b"")
    with pytest.raises(InvalidArgument):
        dom0.write("/" + "d" * 3072, b"")
    assert drain(g1) == []


# -- XSA-324 / XSA-330: watches removed while their events are queued -----------------


def test_xsa324_reset_watches_with_events_queued(host: Host) -> None:
    """RESET_WATCHES (sent inside a transaction, as CVE-2026-23557 did) while
    events for those watches wait in the daemon: the queued ones are still
    delivered, nothing is heard after the reply, the transaction is gone
    and the watch accounts are back to zero."""
    dom0 = host.dom0
    guest = host.raw(1)
    before = host.usage(1)
    req = 0
    for i in range(20):
        req += 1
        reply = guest.call(Op.WATCH, args("data", f"tok{i}"), req)
        assert reply[0] == Op.WATCH
    req += 1
    op, _, _, payload = guest.call(Op.TRANSACTION_START, b"\0", req)
    assert op == Op.TRANSACTION_START
    tx = int(payload[:-1])
    req += 1
    assert guest.call(Op.WRITE, b"data/in-tx\0v", req, tx)[3] == OK
    req += 1
    guest.call(Op.GET_DOMAIN_PATH, b"1\0", req)  # the initial events are in
    page = Page(host.dir, 1)
    try:
        # The guest stops reading; 60 writes queue 1200 events (more than
        # the 1 KiB ring holds).
        for i in range(60):
            dom0.write(f"{home(1)}/data/n{i:02d}", b"")
        req += 1
        reset = req
        guest.send(Op.RESET_WATCHES, b"\0", reset, tx)
        wait_until(lambda: page[REQ_CONS] == page[REQ_PROD], "RESET_WATCHES read")
        dom0.control("check")  # a round trip: the reset has been handled
        for i in range(10):
            dom0.write(f"{home(1)}/data/late{i}", b"")
    finally:
        page.close()
    got = guest.until(reset)
    events = [m for m in got if m[0] == Op.WATCH_EVENT]
    assert got[-1] == (Op.RESET_WATCHES, reset, tx, OK)
    assert len(got) == len(events) + 1
    assert len(events) == 20 * 60  # queued before the reset: all delivered
    assert not any(b"late" in m[3] for m in events)
    req += 1
    assert guest.call(Op.TRANSACTION_END, b"T\0", req, tx)[3] == b"ENOENT\0"
    req += 1
    dom0.write(f"{home(1)}/data/after", b"")
    reply = guest.call(Op.GET_DOMAIN_PATH, b"1\0", req)
    assert reply[0] == Op.GET_DOMAIN_PATH
    assert not guest.buf, "an event after RESET_WATCHES"
    assert not dom0.exists(f"{home(1)}/data/in-tx")
    after = host.usage(1)
    assert after["watches"] == after["transactions"] == 0
    # What is left charged is exactly the nodes dom0 wrote for it.
    written = [f"n{i:02d}" for i in range(60)] + [f"late{i}" for i in range(10)]
    written.append("after")
    assert after["nodes"] - before["nodes"] == len(written)
    cost = sum(16 + len(f"{home(1)}/data/{name}") + 8 for name in written)
    assert after["memory"] - before["memory"] == cost


def test_xsa330_watch_churn_leaves_nothing_behind(host: Host) -> None:
    """Watches added and dropped in every way (UNWATCH, RESET_WATCHES, a
    socket closed with events unread): the watch tables and the memory
    accounts come back to where they were, and so does the daemon's RSS."""
    dom0 = host.dom0
    g1 = host.guest(1)

    def watch_count() -> int:
        # C's memreport appends to a file (the trace without one).
        report_file = host.daemon.directory / "memreport"
        report_file.unlink(missing_ok=True)
        assert dom0.control("memreport", str(report_file)) == b"OK\0"
        report = report_file.read_text()
        for line in report.splitlines():
            if line.startswith("watches"):
                return int(line.split()[1])
        raise AssertionError(report)

    dom0.write(f"{home(1)}/data/churn", b"0")
    baseline_watches = watch_count()
    baseline_memory = host.usage(1)["memory"]
    rss_before = rss_kib(host.daemon.proc.pid)
    for rnd in range(30):
        for i in range(100):
            g1.watch(f"data/w{i}", f"token-{rnd}-{i}-" + "t" * 100)
        for i in range(0, 100, 2):
            g1.unwatch(f"data/w{i}", f"token-{rnd}-{i}-" + "t" * 100)
        g1.reset_watches()
        # A socket client with watches whose events it never reads.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(host.daemon.socket))
        for i in range(50):
            sock.sendall(frame(Op.WATCH, args(home(1), f"s{i}"), i + 1))
        dom0.write(f"{home(1)}/data/churn", str(rnd).encode())
        sock.close()
    drain(g1)
    wait_until(lambda: watch_count() == baseline_watches, "watches freed")
    assert host.usage(1)["watches"] == 0
    assert host.usage(1)["memory"] == baseline_memory + 1  # "0" became "29"
    grown = rss_kib(host.daemon.proc.pid) - rss_before
    assert grown < 16 * 1024, f"the daemon grew by {grown} KiB"


# -- XSA-325: a dead domain is cleaned up whatever state its ring is in ----------------


@pytest.mark.parametrize("how", ["index corruption", "oversized header", "no reads"])
@pytest.mark.parametrize("end", ["death", "RELEASE"])
def test_xsa325_broken_ring_does_not_prevent_cleanup(
    host: Host, how: str, end: str
) -> None:
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.write("data/mine", b"1")
    g1.watch("data", "w")
    dom0.write("/granted", b"")
    dom0.set_perms("/granted", ["n0", "r1"])
    drain(g1)
    page = Page(host.dir, 1)
    try:
        if how == "index corruption":
            page[REQ_PROD] = page[REQ_CONS] + 1024 + 500
            host.hv.kick(host.hv.read_port("port-1"))
            wait_until(lambda: page[ERROR_FIELD] == 2, "error = RINGIDX")
        elif how == "oversized header":
            raw = host.raw(1)
            raw.ring.send_all(HEADER.pack(Op.WRITE, 1, 0, 5000) + b"data/x\0")
            wait_until(lambda: page[ERROR_FIELD] == 3, "error = PROTO")
        else:
            # Requests and events pile up; nothing is ever read.
            raw = host.raw(1)
            burst = b"".join(frame(Op.READ, b"data/mine\0", i) for i in range(1000))
            deadline = time.monotonic() + 2
            while burst and time.monotonic() < deadline:
                burst = burst[raw.put(burst) :]
                time.sleep(0.01)
            for i in range(100):
                dom0.write(f"{home(1)}/data/n{i}", b"")
    finally:
        page.close()
    dom0.watch("@releaseDomain", "gone")
    drain(dom0)
    if end == "death":
        host.hv.kill_domain(1, remove=True)
        assert dom0.wait_watch(timeout=TIMEOUT) == ("@releaseDomain", "gone")
    else:
        dom0.release(1)
        assert drain(dom0) == [("@releaseDomain", "gone")]
    assert not dom0.is_domain_introduced(1)
    assert host.naming(1) == {}
    if BACKEND[0] == "emulated":
        # The emulation removes the port file on unbind; the shim keeps it.
        assert not (host.dir / "port-1").exists()
    with pytest.raises(NoEntry):
        dom0.release(1)


# -- XSA-352 / XSA-353: ownership, the root and the special nodes ------------------


def test_xsa352_only_the_privileged_domain_changes_owners(host: Host) -> None:
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.write("data/mine", b"")
    for perms in (["n2"], ["n0"], ["b2", "r1"]):
        with pytest.raises(NotPermitted):
            g1.set_perms("data/mine", perms)
        tx = g1.transaction_start()
        with pytest.raises(NotPermitted):
            g1.set_perms("data/mine", perms, tx)
        g1.transaction_end(tx, commit=False)
    g1.set_perms("data/mine", ["n1", "r2"])  # its own node, same owner: fine
    assert [str(p) for p in dom0.get_perms(f"{home(1)}/data/mine")] == ["n1", "r2"]
    with pytest.raises(PermissionDenied):
        g1.set_perms("name", ["n1"])  # n0 r1: readable, not its own
    # A stub domain acting for domain 1 may manage 1's nodes, not give them
    # away.
    dom0.set_target(2, 1)
    g2 = host.guest(2)
    owned_by_2 = host.usage(2)["nodes"]
    g2.set_perms(f"{home(1)}/data/mine", ["n1"])
    with pytest.raises(NotPermitted):
        g2.set_perms(f"{home(1)}/data/mine", ["n2"])
    assert [str(p) for p in dom0.get_perms(f"{home(1)}/data/mine")] == ["n1"]
    assert host.usage(2)["nodes"] == owned_by_2


def test_xsa353_the_root_and_special_nodes_are_checked(host: Host) -> None:
    dom0 = host.dom0
    g1 = host.guest(1)
    refused: list[Callable[[], object]] = [
        lambda: g1.directory("/"),
        lambda: g1.read("/"),
        lambda: g1.get_perms("/"),
        lambda: g1.set_perms("/", ["n1"]),
        lambda: g1.write("/x", b""),
        lambda: g1.mkdir("/x"),
        lambda: g1.rm("/tool"),
        lambda: g1.rm("/"),
        lambda: g1.write("/tool/xenstored/x", b""),
    ]
    for call in refused:
        with pytest.raises(PermissionDenied):
            call()
    dom0.set_perms("/", ["n0", "r1"])
    assert "tool" in g1.directory("/")
    for call in refused[3:]:
        with pytest.raises(PermissionDenied):
            call()
    dom0.set_perms("/", ["n0", "b1"])
    g1.write("/x", b"")
    assert [str(p) for p in g1.get_perms("/x")] == ["n1", "b1"]
    with pytest.raises(InvalidArgument):
        g1.rm("/")
    with pytest.raises(PermissionDenied):
        g1.set_perms("/", ["n0", "b1", "b2"])  # write is not ownership
    dom0.set_perms("/", ["n0"])
    assert [str(p) for p in dom0.get_perms("/")] == ["n0"]
    dom0.rm("/x")
    # The special nodes: only their permissions, only for their owner.
    for name in ("@introduceDomain", "@releaseDomain"):
        with pytest.raises(PermissionDenied):
            g1.get_perms(name)
        with pytest.raises(PermissionDenied):
            g1.set_perms(name, ["n1"])
        one_path: list[Callable[[str], object]] = [
            g1.read,
            g1.rm,
            g1.directory,
            g1.mkdir,
        ]
        for refuse in one_path:
            with pytest.raises(InvalidArgument):
                refuse(name)
        with pytest.raises(InvalidArgument):
            g1.write(name, b"")
    with pytest.raises(InvalidArgument):
        g1.set_perms("@other", ["n1"])
    assert [str(p) for p in dom0.get_perms("@introduceDomain")] == ["n0"]


# -- XSA-326: memory exhaustion ---------------------------------------------------


def test_xsa326_unread_replies_are_bounded(host: Host) -> None:
    """A guest sends requests with 2 KiB replies and never reads: the daemon
    stops reading its ring at the outstanding quota (20)."""
    dom0 = host.dom0
    dom0.write(f"{home(1)}/data/big", b"b" * 2000)
    guest = host.raw(1)
    page = Page(host.dir, 1)
    rss_before = rss_kib(host.daemon.proc.pid)
    request = frame(Op.READ, b"data/big\0", 7)
    pending = request * 20000  # 40 MB of replies if nothing stopped it
    try:
        quiet_since = time.monotonic()
        while pending and time.monotonic() - quiet_since < 1.5:
            n = guest.put(pending[:1024])
            if n:
                pending = pending[n:]
                quiet_since = time.monotonic()
            else:
                time.sleep(0.01)
        consumed = page[REQ_CONS] // len(request)
        # The outstanding quota, plus what fits the 1 KiB reply ring and the
        # request being read.
        assert consumed <= 20 + 1 + 1, consumed
        assert pending
    finally:
        page.close()
    grown = rss_kib(host.daemon.proc.pid) - rss_before
    assert grown < 8 * 1024, f"the daemon grew by {grown} KiB"
    assert host.usage(1)["memory"] < MEMORY_QUOTA


def test_xsa326_watch_events_for_a_guest_that_never_reads(host: Host) -> None:
    """The watch quota's worth of watches with 1 KiB tokens, 200 changes:
    25 MB of events if nothing bounded them; the memory quota does."""
    dom0 = host.dom0
    g1 = host.guest(1)
    for i in range(128):
        g1.watch("data", f"{i:03d}" + "t" * 1000)
    with pytest.raises(TooBig):  # the 129th: E2BIG under the 4.21 rule
        g1.watch("data", "one-too-many")
    drain(g1)
    rss_before = rss_kib(host.daemon.proc.pid)
    for i in range(200):
        dom0.write(f"{home(1)}/data/n{i}", b"")
    grown = rss_kib(host.daemon.proc.pid) - rss_before
    assert grown < 16 * 1024, f"the daemon grew by {grown} KiB"
    assert "dropped" in host.daemon.log.read_text()
    # The guest reads again and is served.
    assert g1.read("name") == b"guest1"


def test_xsa326_max_size_nodes_stop_at_the_memory_quota(host: Host) -> None:
    """Nodes of the largest size with the longest paths: the memory quota
    (ENOMEM) stops the guest, not the daemon's memory."""
    dom0 = host.dom0
    dom0.set_quota("nodes", 100000, 1)
    g1 = host.guest(1)
    rss_before = rss_kib(host.daemon.proc.pid)
    value = b"v" * (NODE_SIZE - 16 - 8)
    # One long name per parent: a child list counts in the parent's size.
    _, error = until_refused(
        lambda i: g1.write(f"data/{i // 40:03d}/{i % 40:02d}/" + "p" * 2000, value),
        5000,
    )
    assert isinstance(error, OutOfMemory), error
    used = host.usage(1)["memory"]
    assert MEMORY_QUOTA - 3 * (2100 + NODE_SIZE) < used <= MEMORY_QUOTA
    with pytest.raises(NoSpace):  # one byte more than node-size
        g1.write("data/x", value + b"v")
    grown = rss_kib(host.daemon.proc.pid) - rss_before
    assert grown < 32 * 1024, f"the daemon grew by {grown} KiB"


def fill_until_refused(g: Client, prefix: str, tx: int) -> int:
    """Write the largest nodes under ``prefix`` until a quota refuses one."""
    value = b"v" * (NODE_SIZE - 16 - 8)
    written, error = until_refused(
        lambda i: g.write(
            f"{prefix}/{i // 25:03d}/{i % 25:02d}/" + "p" * 1900, value, tx
        ),
        3000,
    )
    assert isinstance(error, (NoSpace, OutOfMemory)), error
    return written


def test_xsa326_nodes_in_transactions_are_bounded(host: Host) -> None:
    """Every transaction the guest may open, each filled with the largest
    nodes until a quota refuses: each stops, so the whole is bounded by
    transactions x memory (10 x 2.5 MiB); what is committed stays within
    the quotas."""
    dom0 = host.dom0
    g1 = host.guest(1)
    for n in range(10):  # separate parents: the commits do not conflict
        dom0.mkdir(f"{home(1)}/data/t{n}")
    rss_before = rss_kib(host.daemon.proc.pid)
    txs = [g1.transaction_start() for _ in range(10)]
    with pytest.raises(NoSpace):
        g1.transaction_start()
    written = [fill_until_refused(g1, f"data/t{n}", tx) for n, tx in enumerate(txs)]
    assert min(written) > 100, written
    grown = rss_kib(host.daemon.proc.pid) - rss_before
    assert grown < 96 * 1024, f"the daemon grew by {grown} KiB"
    g1.transaction_end(txs[0])
    for tx in txs[1:]:
        with pytest.raises((NoSpace, OutOfMemory)):
            g1.transaction_end(tx)
    used = host.usage(1)
    assert used["transactions"] == 0
    assert used["nodes"] <= 1000
    assert used["memory"] <= MEMORY_QUOTA


def test_xsa326_accessed_nodes_in_a_transaction_are_bounded(host: Host) -> None:
    """Reading more than ``transaction-nodes`` (1024) distinct nodes in one
    transaction fails it: ENOSPC, then ENOMEM at commit."""
    dom0 = host.dom0

    def fill(tx: int) -> None:
        dom0.write("/big", b"", tx)
        dom0.set_perms("/big", ["n0", "r1"], tx)
        for i in range(1100):
            dom0.write(f"/big/{i:04d}", b"b" * 2000, tx)

    dom0.transaction(fill)
    g1 = host.guest(1)
    rss_before = rss_kib(host.daemon.proc.pid)
    tx = g1.transaction_start()
    read, error = until_refused(lambda i: g1.read(f"/big/{i:04d}", tx), 1100)
    assert isinstance(error, NoSpace), error
    assert read == 1024
    assert g1.read("/big/0000", tx) == b"b" * 2000  # seen already: served
    with pytest.raises(NoSpace):
        g1.read("/big/1099", tx)
    with pytest.raises(OutOfMemory):
        g1.transaction_end(tx)
    grown = rss_kib(host.daemon.proc.pid) - rss_before
    assert grown < 16 * 1024, f"the daemon grew by {grown} KiB"


# -- XSA-415: no orphans through transactions ---------------------------------------


def assert_no_orphans(host: Host) -> None:
    """Every node's parent exists and lists it (walked from the root)."""
    found = host.nodes()
    for path in found:
        if path != "/":
            parent = path[: path.rfind("/")] or "/"
            assert parent in found, f"{path} is an orphan"
    host.check()  # also compares each parent's child list with the tree


@pytest.mark.parametrize("depth", [1, 4])
def test_xsa415_child_created_under_a_parent_deleted_meanwhile(
    host: Host, depth: int
) -> None:
    """A transaction creates under ``p`` (and implicit parents below it),
    another connection deletes ``p``: the commit fails, nothing is left."""
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.write("data/p", b"")
    before = host.usage(1)
    tx = g1.transaction_start()
    child = "data/p/" + "/".join(f"c{i}" for i in range(depth))
    g1.write(child, b"v", tx)
    dom0.rm(f"{home(1)}/data/p")
    with pytest.raises(TransactionConflict):
        g1.transaction_end(tx)
    assert not dom0.exists(f"{home(1)}/data/p")
    assert not dom0.exists(f"{home(1)}/{child}")
    assert host.usage(1)["nodes"] == before["nodes"] - 1
    assert_no_orphans(host)


@pytest.mark.parametrize("first", ["remover", "creator"])
def test_xsa415_two_transactions_delete_and_create(host: Host, first: str) -> None:
    """One transaction removes ``p``, another creates ``p/c``: whichever
    commits first wins, the other gets EAGAIN; never a child without its
    parent."""
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.write("data/p", b"")
    remover = dom0.transaction_start()
    dom0.rm(f"{home(1)}/data/p", remover)
    creator = g1.transaction_start()
    g1.write("data/p/c", b"v", creator)
    if first == "remover":
        dom0.transaction_end(remover)
        with pytest.raises(TransactionConflict):
            g1.transaction_end(creator)
        assert not dom0.exists(f"{home(1)}/data/p")
    else:
        g1.transaction_end(creator)
        with pytest.raises(TransactionConflict):
            dom0.transaction_end(remover)
        assert dom0.read(f"{home(1)}/data/p/c") == b"v"
    assert not dom0.exists(f"{home(1)}/data/p/c") or dom0.exists(f"{home(1)}/data/p")
    assert_no_orphans(host)


def test_parent_deleted_in_a_transaction_while_a_child_is_written(
    host: Host,
) -> None:
    """A transaction removes ``p`` while another connection writes ``p/new``
    outside it: the commit fails and ``p/new`` keeps its parent."""
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.write("data/p/old", b"")
    tx = g1.transaction_start()
    g1.rm("data/p", tx)
    dom0.write(f"{home(1)}/data/p/new", b"")
    with pytest.raises(TransactionConflict):
        g1.transaction_end(tx)
    assert g1.directory("data/p") == ["old", "new"]
    assert_no_orphans(host)


# -- XSA-418: deep paths without recursion -------------------------------------------


def test_xsa418_deep_nesting(host: Host) -> None:
    """~1500 levels: created at once, walked, watched, removed in and out of
    transactions, and finally left behind by a released domain."""
    dom0 = host.dom0
    top = f"{home(1)}/deep"
    levels = (3072 - len(top)) // 2
    deepest = top + "/a" * levels
    assert levels >= 1500
    assert len(deepest) <= 3072
    dom0.watch(top, "deep")
    drain(dom0)
    dom0.write(deepest, b"bottom")
    assert drain(dom0) == [(deepest, "deep")]
    path = top
    for _ in range(levels):
        assert dom0.directory(path) == ["a"]
        path += "/a"
    assert dom0.directory(deepest) == []
    assert dom0.read(deepest) == b"bottom"
    # Removed in a transaction that is then dropped, then for real.
    tx = dom0.transaction_start()
    dom0.rm(top, tx)
    assert not dom0.exists(deepest, tx)
    dom0.transaction_end(tx, commit=False)
    assert dom0.read(deepest) == b"bottom"
    dom0.rm(top)
    # Descendants fire exact-mode events: only the watch on the top hears.
    assert drain(dom0) == [(top, "deep")]
    assert not dom0.exists(top)
    host.check()
    # The guest nests as deep as its quotas let it: one WRITE, 901 nodes.
    g1 = host.guest(1)
    before = host.usage(1)["nodes"]
    g1.write("data/deep2" + "/b" * 900, b"")
    assert host.usage(1)["nodes"] == before + 901
    # dom0 nests again and hands the top to domain 1; RELEASE removes it
    # all (XSA-419: whoever owns the descendants).
    dom0.write(deepest, b"again")
    dom0.set_perms(top, ["n1"])
    dom0.release(1)
    assert not dom0.exists(top)
    assert not dom0.exists(f"{home(1)}/data/deep2")
    assert host.naming(1) == {}


# -- XSA-419: everything a dead domain owns goes; no quota escape -------------------


def test_xsa419_nodes_of_a_dead_domain_go_wherever_they_are(host: Host) -> None:
    dom0 = host.dom0
    dom0.set_perms(f"{home(2)}/data", ["n2", "w1"])
    dom0.write("/pool", b"")
    dom0.set_perms("/pool", ["n0", "w1"])
    g1 = host.guest(1)
    g1.write(f"{home(2)}/data/from1/x", b"")
    g1.write("/pool/g1", b"")
    # Below its nodes, nodes it does not own go with them.
    dom0.write("/pool/g1/child", b"")
    dom0.set_perms("/pool/g1/child", ["n0"])
    g2 = host.guest(2)
    g2.write("data/own", b"")  # the neighbour's own node stays
    host.kill(1)
    for gone in (
        f"{home(2)}/data/from1",
        "/pool/g1",
        "/pool/g1/child",
        home(1) + "/data",
    ):
        assert not dom0.exists(gone), gone
    assert dom0.directory("/pool") == []
    assert dom0.directory(f"{home(2)}/data") == ["own"]
    assert host.naming(1) == {}
    host.new_domain(1)
    assert host.usage(1)["nodes"] == host.usage(1)["memory"] == 0


def test_xsa419_implicit_parents_count_against_the_node_quota(host: Host) -> None:
    """``a/b/c/d`` creates four nodes and is charged four, all or nothing,
    also through a transaction."""
    dom0 = host.dom0
    g1 = host.guest(1)
    owned = host.usage(1)["nodes"]
    dom0.set_quota("nodes", owned + 3, 1)
    with pytest.raises(NoSpace):
        g1.write("data/a/b/c/d", b"")
    assert not dom0.exists(f"{home(1)}/data/a")
    g1.write("data/a/b/c", b"")
    assert host.usage(1)["nodes"] == owned + 3
    dom0.set_quota("nodes", owned + 6, 1)
    tx = g1.transaction_start()
    with pytest.raises(NoSpace):
        g1.write("data/x/y/z/w", b"", tx)
    g1.write("data/x/y/z", b"", tx)
    g1.transaction_end(tx)
    assert host.usage(1)["nodes"] == owned + 6


# -- XSA-421: nodes through transactions --------------------------------------------


def test_xsa421_node_quota_is_enforced_at_commit(host: Host) -> None:
    """Ten transactions, each within the quota alone, cannot commit more
    than the quota together."""
    dom0 = host.dom0
    g1 = host.guest(1)
    for n in range(10):
        dom0.mkdir(f"{home(1)}/data/t{n}")
    owned = host.usage(1)["nodes"]
    dom0.set_quota("nodes", owned + 25, 1)
    txs = [g1.transaction_start() for _ in range(10)]
    for n, tx in enumerate(txs):
        for i in range(10):
            g1.write(f"data/t{n}/{i}", b"", tx)
    committed = 0
    for tx in txs:
        try:
            g1.transaction_end(tx)
            committed += 1
        except NoSpace:
            pass
    assert committed == 2
    assert host.usage(1)["nodes"] == owned + 20


def test_xsa421_memory_quota_is_enforced_at_commit(host: Host) -> None:
    """Two transactions of 1.5 MiB each: the second commit would take the
    guest over its 2.5 MiB memory quota and fails with ENOMEM."""
    dom0 = host.dom0
    dom0.set_quota("nodes", 100000, 1)  # the memory quota is the one tested
    g1 = host.guest(1)
    dom0.mkdir(f"{home(1)}/data/a")
    dom0.mkdir(f"{home(1)}/data/b")
    value = b"v" * (NODE_SIZE - 16 - 8)
    first, second = g1.transaction_start(), g1.transaction_start()
    for tx, parent in ((first, "data/a"), (second, "data/b")):
        for i in range(370):
            g1.write(f"{parent}/{i:03d}/" + "p" * 1900, value, tx)
    g1.transaction_end(first)
    with pytest.raises(OutOfMemory):
        g1.transaction_end(second)
    assert host.usage(1)["memory"] <= MEMORY_QUOTA
    assert dom0.directory(f"{home(1)}/data/b") == []


def test_xsa421_created_then_deleted_in_one_transaction(host: Host) -> None:
    """CVE-2022-42326: nodes created and deleted (and re-created) in one
    transaction leave the accounts exactly right, however often."""
    dom0 = host.dom0
    g1 = host.guest(1)
    g1.write("data/keep", b"k")
    before = host.usage(1)
    after_first: dict[str, int] = {}
    for round_ in range(50):
        tx = g1.transaction_start()
        g1.write("data/tmp/a/b/c", b"x" * 100, tx)
        g1.write("data/tmp/d", b"", tx)
        g1.rm("data/tmp", tx)
        g1.rm("data/keep", tx)
        g1.write("data/keep", b"k", tx)
        g1.write("data/tmp2/e", b"", tx)
        g1.rm("data/tmp2/e", tx)
        g1.transaction_end(tx)
        after = host.usage(1)
        after_first = after_first or after
        assert after == after_first, round_
        host.check()
    # Only "tmp2" is new: one node, and what it costs.
    assert after_first["nodes"] == before["nodes"] + 1
    tmp2_cost = 16 + len(f"{home(1)}/data/tmp2") + 8
    assert after_first["memory"] == before["memory"] + tmp2_cost
    assert sorted(g1.directory("data")) == ["keep", "tmp2"]
    assert dom0.read(f"{home(1)}/data/keep") == b"k"
    host.check()


# -- XSA-425 (CVE-2022-42330): RELEASE and INTRODUCE while requests are in flight ---


def burst(i: int) -> bytes:
    """Requests of every kind a guest might have in flight."""
    return b"".join(
        [
            frame(Op.WRITE, f"data/b{i}\0".encode() + b"v" * 50, 1),
            frame(Op.WATCH, args("data", f"t{i}"), 2),
            frame(Op.TRANSACTION_START, b"\0", 3),
            frame(Op.READ, b"name\0", 4),
            frame(Op.DIRECTORY, b"data\0", 5),
            frame(Op.WRITE, b"data/half\0" + b"h" * 300, 6)[:200],
        ]
    )


@pytest.mark.parametrize("what", ["RELEASE", "INTRODUCE again"])
def test_xsa425_release_or_introduce_with_requests_in_flight(
    host: Host, what: str
) -> None:
    """libxl's soft reset (RELEASE then INTRODUCE), and a bare INTRODUCE,
    hit while the guest has requests and half a request in flight, ten
    times over: the daemon survives, the state is consistent each time."""
    dom0 = host.dom0
    for i in range(10):
        guest = host.raw(1)
        pending = burst(i)
        while pending:  # what fits; the guest never reads
            n = guest.put(pending)
            if not n:
                break
            pending = pending[n:]
        # The guest's kernel is gone (kexec): its requests stay in the page.
        host.drop_guest(1)
        if what == "RELEASE":
            dom0.release(1)
            assert host.naming(1) == {}
            dom0.introduce(1, 0xFEFFF, 1)
        else:
            dom0.introduce(1, 0xFEFFF, 1)
        assert dom0.is_domain_introduced(1)
        host.check()
        # A clean slate for the guest's next life: the ring reset (by a
        # fresh guest end, which reads the daemon's new port).
        fresh = GuestRing(str(host.dir), 1, timeout=TIMEOUT)
        fresh.request_reconnect()
        fresh.close()
    g1 = host.guest(1)
    assert g1.get_domain_path(1) == home(1)
    if what == "RELEASE":
        with pytest.raises(PermissionDenied):
            g1.write("data/x", b"")  # its nodes went with the RELEASE
        assert host.usage(1) == {
            "nodes": 0,
            "watches": 0,
            "transactions": 0,
            "memory": 0,
        }
    else:
        g1.write("data/x", b"")
        assert host.usage(1)["watches"] == host.usage(1)["transactions"] == 0


def test_introduce_again_leaves_the_guest_stream_whole(host: Host) -> None:
    """A second INTRODUCE resets the connection but not the ring (MIGRATION.md
    a.6): a message already partly in the full reply ring must still be
    completed, or every later message the guest reads is misframed."""
    dom0 = host.dom0
    guest = host.raw(1)
    assert guest.call(Op.WATCH, args("data", "t" * 300), 1)[0] == Op.WATCH
    guest.call(Op.GET_DOMAIN_PATH, b"1\0", 2)  # the initial event is in
    for i in range(10):  # 325-byte events: the 1 KiB ring ends mid-message
        dom0.write(f"{home(1)}/data/n{i}", b"")
    page = Page(host.dir, 1)
    try:
        wait_until(lambda: page[RSP_PROD] - page[RSP_CONS] == 1024, "ring full")
    finally:
        page.close()
    dom0.introduce(1, 0xFEFFF, 1)
    guest.send(Op.READ, b"name\0", 3)
    messages = guest.until(3, timeout=3)
    assert messages[-1] == (Op.READ, 3, 0, b"guest1")
    for op, req, tx, payload in messages[:-1]:
        assert (op, req, tx) == (Op.WATCH_EVENT, 0, 0)
        assert payload.endswith(b"\0" + b"t" * 300 + b"\0"), payload


def test_release_while_quiesce_waits_for_the_ring(host: Host) -> None:
    """QUIESCE waits for the guest's half-sent request; RELEASE comes first.
    The QUIESCE still gets exactly one reply."""
    guest = host.raw(1)
    page = Page(host.dir, 1)
    try:
        guest.put(frame(Op.WRITE, b"data/x\0" + b"v" * 100, 1)[:50])
        wait_until(lambda: page[REQ_CONS] == 50, "the half request taken")
    finally:
        page.close()
    quiescer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    quiescer.settimeout(TIMEOUT)
    quiescer.connect(str(host.daemon.socket))
    try:
        quiescer.sendall(frame(Op.QUIESCE, b"1\0", 42))
        time.sleep(0.2)  # draining: the rest of the request never comes
        host.dom0.release(1)
        reply = quiescer.recv(4096)
        assert reply, "connection closed instead of a reply"
        op, req, tx, _ = HEADER.unpack_from(reply)
        assert (req, tx) == (42, 0)
        assert op in (Op.QUIESCE, Op.ERROR)
    finally:
        quiescer.close()


# -- races with a domain that dies mid-request ---------------------------------------


def test_domain_death_fails_transactions_that_name_it(host: Host) -> None:
    """dom0 grants rights to domain 1 (and creates a node for it) inside a
    transaction; domain 1 dies before the commit.  The commit fails with
    EAGAIN, the redo is refused, the next domain 1 gets nothing."""
    dom0 = host.dom0
    dom0.write("/conf", b"secret")
    tx = dom0.transaction_start()
    dom0.set_perms("/conf", ["n0", "r1"], tx)
    dom0.write(f"{home(2)}/for1", b"", tx)
    dom0.set_perms(f"{home(2)}/for1", ["n1"], tx)
    g1 = host.guest(1)
    g1_tx = g1.transaction_start()
    g1.write("data/pending", b"", g1_tx)
    host.kill(1)
    with pytest.raises(TransactionConflict):
        dom0.transaction_end(tx)
    with pytest.raises(NoEntry):
        dom0.set_perms("/conf", ["n1"])
    assert host.naming(1) == {}
    host.new_domain(1)
    g1 = host.guest(1)
    with pytest.raises(PermissionDenied):
        g1.read("/conf")
    assert host.usage(1)["nodes"] == 0


def test_stub_domain_loses_its_target_when_the_target_dies(host: Host) -> None:
    """SET_TARGET 2 -> 1, then domain 1 dies and a new domain 1 comes: the
    stub domain must not control the newcomer's nodes."""
    dom0 = host.dom0
    dom0.set_target(2, 1)
    g2 = host.guest(2)
    owned_by_2 = host.usage(2)["nodes"]
    g2.write(f"{home(1)}/data/by-stub", b"")  # charged to the stub domain
    assert host.usage(2)["nodes"] == owned_by_2 + 1
    host.kill(1)
    host.toolstack.create_domain(1)
    g1 = host.guest(1)
    g1.write("data/private", b"mine")
    with pytest.raises(PermissionDenied):
        g2.read(f"{home(1)}/data/private")
    with pytest.raises(PermissionDenied):
        g2.set_perms(f"{home(1)}/data/private", ["n1", "r2"])
    assert host.usage(2)["nodes"] == owned_by_2  # by-stub went with domain 1


# -- DIRECTORY too large for one reply ------------------------------------------------


def test_directory_too_big_then_directory_part(host: Host) -> None:
    """E2BIG for DIRECTORY, then the list in DIRECTORY_PART pages of whole
    names; E2BIG is never told to a caller that may not read the node."""
    dom0 = host.dom0
    names = [f"child-{i:05d}" for i in range(500)]  # 6500 bytes listed

    def fill(tx: int) -> None:
        for name in names:
            dom0.write(f"/big/{name}", b"", tx)

    dom0.transaction(fill)
    dom0.set_perms("/big", ["n0", "r1"])
    guest = host.raw(1)
    assert guest.call(Op.DIRECTORY, b"/big\0", 1) == (Op.ERROR, 1, 0, b"E2BIG\0")
    listing = b""
    pages = 0
    gen = None
    while True:
        pages += 1
        op, _, _, payload = guest.call(
            Op.DIRECTORY_PART, args("/big", str(len(listing))), 10 + pages
        )
        assert op == Op.DIRECTORY_PART
        assert len(payload) <= 4096
        head, _, data = payload.partition(b"\0")
        assert gen in (None, head)
        gen = head
        if data.endswith(b"\0\0") or data == b"\0":
            listing += data[:-1]
            break
        assert data.endswith(b"\0")  # whole names only
        listing += data
        assert pages < 10
    assert pages == 2
    assert listing.split(b"\0")[:-1] == [n.encode() for n in names]
    # Past the end: the generation and an empty list.
    reply = guest.call(Op.DIRECTORY_PART, args("/big", "99999"), 50)
    assert reply[3] == gen + b"\0\0"
    # The node changes between pages: the generation says so.
    dom0.write("/big/late", b"")
    reply = guest.call(Op.DIRECTORY_PART, args("/big", "0"), 51)
    assert reply[3].partition(b"\0")[0] != gen
    assert guest.call(Op.DIRECTORY_PART, args("/big", "x"), 52)[3] == b"EINVAL\0"
    # Domain 2 may not read it: EACCES, not E2BIG (no size leak).
    other = host.raw(2)
    assert other.call(Op.DIRECTORY, b"/big\0", 1)[3] == b"EACCES\0"
    assert other.call(Op.DIRECTORY_PART, args("/big", "0"), 2)[3] == b"EACCES\0"
    # The client library pages transparently, in and out of transactions.
    g1 = host.guest(1)
    assert g1.directory("/big") == [*names, "late"]
    tx = g1.transaction_start()
    assert g1.directory("/big", tx) == [*names, "late"]
    g1.transaction_end(tx)
