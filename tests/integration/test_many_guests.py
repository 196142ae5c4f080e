"""One hundred guest domains served at once, with dom0 clients beside them.

The toolstack builds :data:`GUESTS` domains (libxl's skeleton, INTRODUCE).
Then, in one event loop, every guest runs an
:class:`~pyxenstored.client.AsyncClient` over its own emulated ring
(:class:`~pyxenstored.sim.ring.AsyncGuestRing`) while :data:`DOM0_CLIENTS`
socket clients work beside them.  Each guest reads its skeleton, writes
and reads back its own nodes, is refused another guest's, watches its
``data`` directory (relative) and all of ``/local/domain`` (absolute),
receives dom0's write to its area, and commits a transaction (every tenth
one first loses a conflict dom0 causes, then retries).  Every answer and
every event is checked:

* a guest gets exactly the events of its own area, never another guest's
  (PROTOCOL.md 6.6): with 100 guests watching ``/local/domain``, any
  leak would show;
* a dom0 watcher on ``/local/domain`` sees each guest write exactly once;
* dom0 reads back what every guest committed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.sync import Client
from pyxenstored.errors import PermissionDenied
from pyxenstored.sim.ring import AsyncGuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from tests.conftest import RunningDaemon

GUESTS = 100
DOM0_CLIENTS = 4
#: Node writes each guest makes outside its transaction.
WRITES = 20
#: A value bigger than the 1 KiB ring, so messages of all guests wrap.
BIG = 1800
#: The whole concurrent phase must finish within this (it takes ~2 s).
DEADLINE = 60.0
#: How long a guest waits for one expected event.
EVENT_TIMEOUT = 10.0


def home(domid: int) -> str:
    return f"/local/domain/{domid}"


@dataclass
class Tally:
    """What the clients saw."""

    guest_events: int = 0


async def drain(client: AsyncClient) -> list[tuple[str, str]]:
    """Every event queued to ``client`` so far.

    The daemon queues a request's events before its reply, and handles a
    connection's requests in order, so once the reply to a barrier
    request is in, every event caused before it has been read.
    """
    await client.get_domain_path(0)
    events: list[tuple[str, str]] = []
    while True:
        try:
            event = await client.wait_watch(timeout=0)
        except TimeoutError:
            return events
        events.append((event.path, event.token))


async def wait_for(client: AsyncClient, want: tuple[str, str]) -> list[tuple[str, str]]:
    """Events up to and including ``want`` (bounded by EVENT_TIMEOUT)."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(EVENT_TIMEOUT):
        while want not in seen:
            event = await client.wait_watch()
            seen.append((event.path, event.token))
    return seen


async def guest(
    domid: int,
    directory: str,
    dom0: AsyncClient,
    tally: Tally,
) -> None:
    """Everything one guest does; raises on any wrong answer."""
    g = AsyncClient(transport=AsyncGuestRing(directory, domid))
    mine = home(domid)
    other = home(domid % GUESTS + 1)
    try:
        assert await g.read("name") == f"guest{domid}".encode()
        assert await g.read(f"{mine}/domid") == str(domid).encode()
        assert await g.get_domain_path(domid) == mine

        await g.watch("data", "rel")
        await g.watch("/local/domain", "all")
        events = await drain(g)
        assert events == [("data", "rel"), ("/local/domain", "all")], events

        for j in range(WRITES):
            await g.write(f"data/k{j}", f"{domid}-{j}".encode())
        for j in range(WRITES):
            assert await g.read(f"{mine}/data/k{j}") == f"{domid}-{j}".encode()
        assert sorted(await g.directory("data")) == sorted(
            f"k{j}" for j in range(WRITES)
        )
        big = bytes((domid + i) & 0xFF for i in range(BIG))
        await g.write("data/big", big)
        assert await g.read("data/big") == big

        # Another guest's area is refused, whether the node exists or not
        # (existence is hidden: PROTOCOL.md 5.4).
        refused: list[Callable[[], Awaitable[object]]] = [
            partial(g.write, f"{other}/data/x", b"evil"),
            partial(g.read, f"{other}/data/k0"),
            partial(g.read, f"{other}/data/missing"),
            partial(g.read, f"{other}/name"),
            partial(g.directory, f"{other}/data"),
        ]
        for call in refused:
            try:
                await call()
            except PermissionDenied:
                pass
            else:
                raise AssertionError(f"dom{domid} reached {other}: {call}")

        # dom0 writes into the guest's area; the guest sees it.
        await dom0.write(f"{mine}/data/from-dom0", b"hello")
        events += await wait_for(g, ("data/from-dom0", "rel"))

        attempts = 0

        async def body(tx: int) -> None:
            nonlocal attempts
            attempts += 1
            value = await g.read("data/k0", tx)
            if attempts == 1 and domid % 10 == 0:
                # dom0 rewrites what the transaction read: commit must fail.
                await dom0.write(f"{mine}/data/k0", value)
            await g.write("data/tx", value + b"+tx", tx)

        await g.transaction(body, attempts=3)
        assert attempts == (2 if domid % 10 == 0 else 1), (domid, attempts)
        assert await g.read("data/tx") == f"{domid}-0+tx".encode()

        events += await drain(g)
        tally.guest_events += len(events)
        rel = {p for p, t in events if t == "rel"}
        want = {
            "data",
            "data/from-dom0",
            "data/tx",
            "data/big",
            *(f"data/k{j}" for j in range(WRITES)),
        }
        assert rel == want, (domid, sorted(rel ^ want))
        absolute = {p for p, t in events if t == "all"}
        leaked = [
            p for p in absolute if p != "/local/domain" and not p.startswith(mine + "/")
        ]
        assert not leaked, f"dom{domid} saw other domains' events: {leaked}"
        assert absolute == {"/local/domain"} | {f"{mine}/{p}" for p in want - {"data"}}
    finally:
        await g.aclose()


async def run_all(directory: str, socket: str) -> Tally:
    tally = Tally()
    dom0s = [AsyncClient(socket) for _ in range(DOM0_CLIENTS)]
    watcher = AsyncClient(socket)
    try:
        for client in (*dom0s, watcher):
            await client.connect()
        await watcher.watch("/local/domain", "dom0")
        await drain(watcher)
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(
                *(
                    guest(domid, directory, dom0s[domid % DOM0_CLIENTS], tally)
                    for domid in range(1, GUESTS + 1)
                ),
                *(dom0_load(client) for client in dom0s),
            )
        seen = Counter(p for p, _ in await drain(watcher))
        for domid in range(1, GUESTS + 1):
            for j in range(WRITES):
                path = f"{home(domid)}/data/k{j}"
                # Written once by the guest (and once more by dom0 for the
                # guests whose transaction it made conflict).
                want = 2 if j == 0 and domid % 10 == 0 else 1
                assert seen[path] == want, (path, seen[path])
            assert seen[f"{home(domid)}/data/tx"] == 1
        # dom0 reads back what every guest committed.
        for domid in range(1, GUESTS + 1):
            value = await dom0s[0].read(f"{home(domid)}/data/tx")
            assert value == f"{domid}-0+tx".encode()
    finally:
        for client in (*dom0s, watcher):
            await client.aclose()
    return tally


async def dom0_load(client: AsyncClient) -> None:
    """dom0 traffic beside the guests: its own nodes, written and read."""
    for i in range(50):
        path = f"/tool/load/{id(client)}/{i}"
        await client.write(path, str(i).encode())
        assert await client.read(path) == str(i).encode()
        await asyncio.sleep(0)


def traffic(trace: str) -> dict[str, Counter[str]]:
    """Lines of the daemon's trace per connection: IN, OUT and EVT counts."""
    per_conn: dict[str, Counter[str]] = {}
    for line in trace.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] in ("IN", "OUT", "EVT"):
            per_conn.setdefault(fields[2], Counter())[fields[3]] += 1
    return per_conn


def test_hundred_guests(host_daemon: RunningDaemon) -> None:
    directory = str(host_daemon.directory)
    started = time.monotonic()
    with Client(str(host_daemon.socket)) as dom0:
        toolstack = Toolstack(dom0, HostDir(directory))
        for domid in range(1, GUESTS + 1):
            toolstack.create_domain(domid)
    built = time.monotonic()
    tally = asyncio.run(run_all(directory, str(host_daemon.socket)))
    elapsed = time.monotonic() - built
    assert host_daemon.alive()
    with Client(str(host_daemon.socket)) as dom0:
        for domid in range(1, GUESTS + 1):
            assert dom0.is_domain_introduced(domid)
    log = host_daemon.log.read_text()
    assert "ring marked broken" not in log, log
    assert "Traceback" not in log, log
    # The daemon's own account: every guest request was answered, and the
    # events it sent are the ones the guests received.
    per_conn = traffic(host_daemon.trace.read_text())
    guests = {name: c for name, c in per_conn.items() if name.startswith("dom")}
    assert len(guests) == GUESTS, sorted(guests)
    unanswered = {n: c for n, c in guests.items() if c["IN"] != c["OUT"]}
    assert not unanswered, unanswered
    guest_requests = sum(c["IN"] for c in guests.values())
    assert sum(c["EVT"] for c in guests.values()) == tally.guest_events
    dom0_requests = sum(c["IN"] for n, c in per_conn.items() if n not in guests)
    print(
        f"\n{GUESTS} guests built in {built - started:.1f} s; concurrent phase "
        f"{elapsed:.1f} s: {guest_requests} guest requests, "
        f"{tally.guest_events} guest events, {dom0_requests} dom0 requests "
        "(building included)"
    )
