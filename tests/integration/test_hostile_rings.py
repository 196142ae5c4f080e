"""Guests that break the ring rules: each hurts only itself.

Every case builds two domains with the toolstack: :data:`BAD` misbehaves
by writing the shared page directly (RING.md 1 layout, through its own
``mmap``), :data:`GOOD` is a well-behaved guest.  After each case the
daemon must be alive and still serve the good guest and dom0
(:func:`assert_others_served`), and must have done to the bad one what
RING.md prescribes:

* indices more than the ring size apart: ``error`` = 2 (RINGIDX), the ring
  is no longer served (RING.md 2, 7);
* a header announcing more than 4096 payload bytes: ``error`` = 3 (PROTO)
  (PROTOCOL.md 1.1);
* a request cut off forever: no reply, nothing else disturbed; completing
  it later gets the reply;
* a guest that never reads while its watches fire: queued output stays
  under the memory quota, the surplus events are dropped and the log says
  so, the daemon's memory does not follow the flood; and events left
  unread longer than the watch-event timeout are discarded (PROTOCOL.md
  6.4);
* a request flood: once the outstanding quota is reached the daemon stops
  reading the ring (RING.md 3.1) and later answers everything in order;
* death in the middle of a request: ``@releaseDomain`` for dom0 and the
  domain's nodes gone (PROTOCOL.md 8.2);
* a reconnection request (``connection`` = 1): a reset ring, watches and
  transactions dropped, and the guest carries on (RING.md 6).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.errors import BrokenConnection, NoEntry
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from pyxenstored.wire import HEADER
from pyxenstored.wire.ops import Op
from tests.conftest import BACKEND, RunningDaemon
from tests.ringtools import Page, drain
from tests.wiretools import TIMEOUT, frame, rss_kib, split, wait_until

BAD = 1
GOOD = 2
#: u32 word positions of the page's fields (RING.md 1).
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, FEATURES, CONNECTION, ERROR = range(512, 519)
#: ``error`` values (RING.md 7).
RINGIDX = 2
PROTO = 3
#: Longer than the daemon's safety-net rescan (1 s), so "nothing happened
#: within QUIET" also covers a lost kick.
QUIET = 1.5


# -- helpers ------------------------------------------------------------------


def receive(ring: GuestRing, n: int) -> bytes:
    """Exactly ``n`` reply bytes (bounded by TIMEOUT)."""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while len(data) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(data)} of {n} reply bytes came"
        data += ring.receive_some(n - len(data), timeout=left)
    return data


def assert_others_served(daemon: RunningDaemon) -> None:
    """The daemon lives, the good guest and dom0 are served, events flow."""
    assert daemon.alive(), "the daemon died"
    home = f"/local/domain/{GOOD}"
    with (
        Client(str(daemon.socket)) as dom0,
        Client(transport=GuestRing(str(daemon.directory), GOOD, timeout=TIMEOUT)) as g,
    ):
        g.write("data/alive", b"yes")
        assert g.read(f"{home}/data/alive") == b"yes"
        assert dom0.read(f"{home}/data/alive") == b"yes"
        g.watch("data", "ok")
        dom0.write(f"{home}/data/from-dom0", b"1")
        assert drain(g) == [("data", "ok"), ("data/from-dom0", "ok")]
        g.unwatch("data", "ok")
        assert g.read("name") == f"guest{GOOD}".encode()


@pytest.fixture
def host(host_daemon: RunningDaemon) -> Iterator[RunningDaemon]:
    """pyxenstored with the two domains built and introduced."""
    with Client(str(host_daemon.socket)) as dom0:
        toolstack = Toolstack(dom0, HostDir(str(host_daemon.directory)))
        toolstack.create_domain(BAD)
        toolstack.create_domain(GOOD)
    yield host_daemon
    assert_others_served(host_daemon)


def bad_ring(daemon: RunningDaemon) -> GuestRing:
    return GuestRing(str(daemon.directory), BAD, timeout=TIMEOUT)


def assert_not_served(ring: GuestRing, page: Page) -> None:
    """A valid request of the bad guest gets nothing back any more."""
    before = page[RSP_PROD]
    page[REQ_PROD] = page[REQ_CONS]  # "repair" the indices
    ring.ring.write_requests(frame(Op.READ, b"name\0"))
    ring.kick()
    time.sleep(QUIET)
    assert page[RSP_PROD] == before, "the broken ring was served again"


# -- the cases -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["req_prod", "rsp_cons"])
def test_index_jump(host: RunningDaemon, field: str) -> None:
    """Indices more than 1024 apart: error RINGIDX, the ring is dropped."""
    ring = bad_ring(host)
    page = Page(host.directory, BAD)
    try:
        with Client(transport=ring) as g:
            assert g.read("name") == f"guest{BAD}".encode()
            if field == "req_prod":
                page[REQ_PROD] = page[REQ_CONS] + 1024 + 700
            else:
                # The guest claims to have consumed replies never produced;
                # the daemon notices when it next writes a reply.
                page[RSP_CONS] = page[RSP_PROD] + 5000
                ring.ring.write_requests(frame(Op.READ, b"name\0"))
            ring.kick()
            wait_until(lambda: page[ERROR] == RINGIDX, "error = RINGIDX")
            assert_not_served(ring, page)
            # Nor does a reconnection revive it (RING.md 7 leaves that open;
            # like C we keep a ring the guest corrupted out of service).
            ring.timeout = QUIET
            with pytest.raises(BrokenConnection):
                ring.request_reconnect()
            assert page[ERROR] == RINGIDX
    finally:
        page.close()
    assert broken_logged(host, RINGIDX)


def broken_logged(daemon: RunningDaemon, code: int) -> bool:
    """The log says why the bad guest's ring was given up."""
    return any(
        f"dom{BAD}: " in line and f"ring marked broken (error {code})" in line
        for line in daemon.log.read_text().splitlines()
    )


@pytest.mark.parametrize("length", [4097, 0xFFFFFFFF])
def test_oversized_header(host: RunningDaemon, length: int) -> None:
    """A header announcing more than 4096 bytes: error PROTO."""
    ring = bad_ring(host)
    page = Page(host.directory, BAD)
    try:
        ring.send_all(HEADER.pack(Op.WRITE, 1, 0, length) + b"data/x\0")
        wait_until(lambda: page[ERROR] == PROTO, "error = PROTO")
        assert page[RSP_PROD] == 0, "the daemon replied to a broken message"
        assert_not_served(ring, page)
    finally:
        ring.close()
        page.close()
    assert broken_logged(host, PROTO)


@pytest.mark.parametrize("cut", [10, 16, 16 + 3])
def test_request_cut_off(host: RunningDaemon, cut: int) -> None:
    """Part of a request, then silence: no reply, nothing broken."""
    ring = bad_ring(host)
    page = Page(host.directory, BAD)
    message = frame(Op.READ, b"name\0", req_id=77)
    try:
        ring.send_all(message[:cut])
        time.sleep(QUIET)
        assert page[RSP_PROD] == 0, "a reply to half a request"
        assert page[ERROR] == 0
        assert_others_served(host)
        # Completed at last, the request is answered normally.
        ring.send_all(message[cut:])
        reply = split(receive(ring, 16 + len(f"guest{BAD}")))
        assert reply == ([(Op.READ, 77, 0, f"guest{BAD}".encode())], b"")
    finally:
        ring.close()
        page.close()


def test_guest_never_reads_while_watches_fire(host: RunningDaemon) -> None:
    """Back-pressure: bounded output queue, dropped events, memory flat."""
    bad_home = f"/local/domain/{BAD}"
    ring = bad_ring(host)
    g = Client(transport=ring)
    # 20 watches whose tokens make every event about 4 KiB: each dom0 write
    # below queues 80 KiB for the guest, 32 MiB over the flood if nothing
    # bounded it (the memory quota is 2.5 MiB).
    tokens = [f"{i:02d}" + "t" * 4000 for i in range(20)]
    for token in tokens:
        g.watch("data", token)
    drain(g)
    writes = 400
    with Client(str(host.socket)) as dom0:
        dom0.write(f"{bad_home}/data/warmup", b"")
        before = rss_kib(host.proc.pid)
        started = time.monotonic()
        for i in range(writes):
            dom0.write(f"{bad_home}/data/n{i}", b"x")
        flood_time = time.monotonic() - started
        growth = rss_kib(host.proc.pid) - before
    assert_others_served(host)
    log = host.log.read_text()
    assert "dropped" in log, log[-2000:]
    assert growth < 16 * 1024, f"daemon grew by {growth} KiB during the flood"
    # The log is not flooded too: a few lines per episode, not one per event.
    drop_lines = [line for line in log.splitlines() if "dropped" in line]
    assert len(drop_lines) < 10, drop_lines[:20]
    assert flood_time < 20, flood_time
    # Reading again, the guest gets every reply and a bounded part of the
    # events, and carries on.
    assert g.read("name") == f"guest{BAD}".encode()
    got = drain(g)
    assert 0 < len(got) < writes * len(tokens) // 4, len(got)
    ring.close()


def test_unread_events_expire(short_tmp: Path) -> None:
    """Events left unread past the watch-event timeout are discarded."""
    daemon = RunningDaemon(
        short_tmp, ["--host-dir", str(short_tmp), "-w", "watch-event=1"]
    )
    try:
        with Client(str(daemon.socket)) as dom0:
            toolstack = Toolstack(dom0, HostDir(str(short_tmp)))
            toolstack.create_domain(BAD)
            toolstack.create_domain(GOOD)
            ring = GuestRing(str(short_tmp), BAD, timeout=TIMEOUT)
            g = Client(transport=ring)
            g.watch("data", "w")
            drain(g)
            # 100 events of about 40 bytes: the first ~25 fill the reply
            # ring (written, so never discarded), the rest wait in the
            # daemon's queue ...
            for i in range(100):
                dom0.write(f"/local/domain/{BAD}/data/n{i:03d}", b"")
            time.sleep(2.5)  # ... longer than the 1 s timeout.
            got = [p for p, _ in drain(g)]
            assert 0 < len(got) < 50, got
            assert got == [f"data/n{i:03d}" for i in range(len(got))], got
            # New events are delivered normally.
            dom0.write(f"/local/domain/{BAD}/data/late", b"")
            assert drain(g) == [("data/late", "w")]
            ring.close()
        assert "discarded" in daemon.log.read_text()
        assert_others_served(daemon)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log.read_text()


def test_request_flood(host: RunningDaemon) -> None:
    """Requests never collected: the daemon stops reading, then catches up."""
    ring = bad_ring(host)
    page = Page(host.directory, BAD)
    total = 300
    pending = b"".join(frame(Op.READ, b"name\0", req_id=i) for i in range(total))
    try:
        # Write whatever fits, kick, until the daemon takes nothing more.
        quiet_since = time.monotonic()
        while pending and time.monotonic() - quiet_since < QUIET:
            n = ring.ring.write_requests(pending)
            if n:
                pending = pending[n:]
                ring.kick()
                quiet_since = time.monotonic()
            else:
                time.sleep(0.01)
        assert pending, "the daemon consumed everything without being read"
        consumed = page[REQ_CONS]
        assert page[REQ_PROD] - consumed > 0
        # Replies fit in the 1 KiB reply ring, plus the outstanding quota
        # (20) waiting in the daemon; one more request may be in progress.
        reply_size = 16 + len(f"guest{BAD}")
        bound = (1024 // reply_size + 20 + 1) * len(frame(Op.READ, b"name\0"))
        assert consumed <= bound, (consumed, bound)
        assert_others_served(host)
        assert page[REQ_CONS] == consumed, "the daemon read on over quota"
        # Now collect: every request is answered, in order.
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while len(data) < total * reply_size:
            assert time.monotonic() < deadline, len(data) // reply_size
            n = ring.ring.write_requests(pending)
            if n:
                pending = pending[n:]
                ring.kick()
            try:
                data += ring.receive_some(timeout=0.1)
            except TimeoutError:
                pass
        want = [(Op.READ, i, 0, f"guest{BAD}".encode()) for i in range(total)]
        assert split(data) == (want, b"")
    finally:
        ring.close()
        page.close()


@pytest.mark.parametrize("how", ["dying", "page removed"])
def test_death_mid_request(host: RunningDaemon, how: str) -> None:
    """The domain dies with a request half sent and output queued."""
    bad_home = f"/local/domain/{BAD}"
    ring = bad_ring(host)
    g = Client(transport=ring)
    g.write("data/mine", b"1")
    g.watch("data", "w")
    with Client(str(host.socket)) as dom0:
        for i in range(100):  # events the guest will never read
            dom0.write(f"{bad_home}/data/n{i}", b"")
        ring.send_all(frame(Op.WRITE, b"data/half\0" + b"v" * 600)[:300])
        dom0.watch("@releaseDomain", "gone")
        drain(dom0)
        HostDir(str(host.directory)).kill_domain(BAD, remove=how != "dying")
        assert dom0.wait_watch(timeout=TIMEOUT) == ("@releaseDomain", "gone")
        assert not dom0.is_domain_introduced(BAD)
        assert not dom0.exists(f"{bad_home}/data")
        assert not dom0.exists(f"{bad_home}/device/vif/0")
        assert dom0.read(f"{bad_home}/name") == f"guest{BAD}".encode()
        with pytest.raises(NoEntry):
            dom0.release(BAD)
    if BACKEND[0] == "emulated":
        # The emulation removes the port file on unbind; the shim keeps it.
        assert not (host.directory / f"port-{BAD}").exists()
    ring.close()


def test_reconnection(host: RunningDaemon) -> None:
    """connection = 1: the ring is reset and the guest carries on."""
    bad_home = f"/local/domain/{BAD}"
    ring = bad_ring(host)
    page = Page(host.directory, BAD)
    try:
        assert page[FEATURES] & 1, "RECONNECTION not advertised"
        old = Client(transport=ring)
        old.watch("data", "w")
        tx = old.transaction_start()
        old.write("data/in-tx", b"1", tx)
        drain(old)
        # Half a request in the ring, and replies the guest did not read.
        ring.send_all(frame(Op.READ, b"name\0", req_id=9)[:7])
        with Client(str(host.socket)) as dom0:
            dom0.write(f"{bad_home}/data/unread", b"")
            ring.request_reconnect()
            assert page[CONNECTION] == 0
            assert (page[REQ_CONS], page[REQ_PROD]) == (0, 0)
            assert (page[RSP_CONS], page[RSP_PROD]) == (0, 0)
            assert page[ERROR] == 0
            # A fresh client on the same ring: served from a clean state.
            g = Client(transport=ring)
            assert g.read("name") == f"guest{BAD}".encode()
            dom0.write(f"{bad_home}/data/after", b"")
            assert drain(g) == [], "a watch survived the reconnection"
            with pytest.raises(NoEntry):
                g.transaction_end(tx)
            assert not dom0.exists(f"{bad_home}/data/in-tx")
            g.watch("data", "again")
            dom0.write(f"{bad_home}/data/after", b"2")
            assert drain(g) == [("data", "again"), ("data/after", "again")]
            g.close()
    finally:
        page.close()


def test_indices_left_near_wrap(host: RunningDaemon) -> None:
    """Indices a previous kernel left just below 2**32 count on modulo 2**32.

    Neither side may assume they start at 0 (RING.md 2), and our INTRODUCE
    leaves the page as it is (MIGRATION.md a.6), so every message below
    crosses the wrap of the free-running counters.
    """
    domid = 3
    page = bytearray(4096)
    start = 0xFFFFFFFF - 700
    struct.pack_into("<IIII", page, 4 * REQ_CONS, start, start, start + 9, start + 9)
    with Client(str(host.socket)) as dom0:
        Toolstack(dom0, HostDir(str(host.directory))).create_domain(
            domid, introduce=False
        )
        HostDir(str(host.directory)).create_domain(domid, page=bytes(page))
        dom0.introduce(domid, 0xFEFFF, 1)
    ring = GuestRing(str(host.directory), domid, timeout=TIMEOUT)
    view = Page(host.directory, domid)
    try:
        with Client(transport=ring) as g:
            for size in (100, 1000, 2000, 1500):
                value = bytes((i * 13 + size) & 0xFF for i in range(size))
                g.write(f"data/v{size}", value)
                assert g.read(f"data/v{size}") == value
            assert g.read("name") == f"guest{domid}".encode()
        # Both streams went past 2**32 and came out small.
        assert view[REQ_CONS] == view[REQ_PROD] < 0x10000
        assert view[RSP_CONS] == view[RSP_PROD] < 0x10000
        assert view[ERROR] == 0
    finally:
        view.close()
