"""Client and AsyncClient against real daemons (ours, and C xenstored).

Each behaviour is checked on the wire as a real daemon produces it:
transactions that really conflict, watch events that really arrive before
the reply of the write that caused them, and child lists too long for one
DIRECTORY reply.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client import (
    AsyncClient,
    Client,
    DeviceTransport,
    UnixTransport,
    WatchEvent,
    commands,
)
from pyxenstored.client.commands import Request
from pyxenstored.client.transport import CHUNK, AsyncUnixTransport
from pyxenstored.errors import (
    AlreadyExists,
    BrokenConnection,
    Busy,
    ConnectionClosed,
    InvalidArgument,
    NoEntry,
    TooBig,
    TransactionConflict,
    XsError,
)
from pyxenstored.perms import Access, Perm
from pyxenstored.wire import HEADER, Op
from tests.conftest import CDaemon, RunningDaemon

#: 1000 children with 40-character names: ~41 kB, ten times a payload.
BIG = [f"child-{i:04d}-" + "x" * 29 for i in range(1000)]


class RecordingTransport:
    """A Unix transport that remembers the type of every request sent."""

    def __init__(self, path: Path) -> None:
        self.inner = UnixTransport.connect(str(path))
        self.ops: list[int] = []

    def send_all(self, data: bytes) -> None:
        self.ops.append(HEADER.unpack_from(data)[0])
        self.inner.send_all(data)

    def receive_some(
        self, max_bytes: int = CHUNK, timeout: float | None = None
    ) -> bytes:
        return self.inner.receive_some(max_bytes, timeout)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def xs(daemon: RunningDaemon) -> Iterator[Client]:
    with Client(str(daemon.socket)) as client:
        yield client


# -- blocking client: nodes --


def test_read_write_mkdir_rm_exists(xs: Client) -> None:
    xs.write("/t/a", b"bin\0ary\xff")
    assert xs.read("/t/a") == b"bin\0ary\xff"
    xs.write("/t/empty", b"")
    assert xs.read("/t/empty") == b""
    xs.mkdir("/t/dir/sub")
    assert xs.read("/t/dir/sub") == b""
    xs.mkdir("/t/a")  # existing: untouched
    assert xs.read("/t/a") == b"bin\0ary\xff"
    assert xs.exists("/t/dir") is True
    xs.rm("/t/dir")
    assert xs.exists("/t/dir/sub") is False
    assert xs.directory("/t") == ["a", "empty"]


def test_relative_paths_resolve_against_dom0_home(xs: Client) -> None:
    xs.write("rel/x", b"1")
    assert xs.read("/local/domain/0/rel/x") == b"1"
    assert xs.directory("rel") == ["x"]


def test_get_and_set_perms(xs: Client) -> None:
    xs.write("/p", b"")
    assert xs.get_perms("/p") == [Perm(Access.NONE, 0)]
    xs.set_perms("/p", ["b0", Perm(Access.READ, 0), "w0"])
    assert [str(p) for p in xs.get_perms("/p")] == ["b0", "r0", "w0"]
    assert xs.get_perms("@releaseDomain")[0].domid == 0


def test_errors_are_raised_as_their_classes(xs: Client) -> None:
    with pytest.raises(NoEntry):
        xs.read("/does/not/exist")
    with pytest.raises(InvalidArgument):
        xs.read("bad path")
    with pytest.raises(InvalidArgument):
        xs.rm("/")
    xs.watch("/w", "t")
    with pytest.raises(AlreadyExists):
        xs.watch("/w", "t")
    with pytest.raises(NoEntry):
        xs.unwatch("/w", "other")
    with pytest.raises(NoEntry):
        xs.transaction_end(424242)
    with pytest.raises(TooBig):  # refused before sending, like libxenstore
        xs.write("/big", b"x" * 5000)
    tx = xs.transaction_start()
    with pytest.raises(Busy):  # no nesting
        xs._run(commands.transaction_start(), tx)
    xs.transaction_end(tx, commit=False)
    assert xs.read("/") == b""  # the connection is still usable


def test_large_directory_uses_directory_part(daemon: RunningDaemon) -> None:
    transport = RecordingTransport(daemon.socket)
    with Client(transport=transport) as xs:
        tx = xs.transaction_start()
        for name in BIG:
            xs.write(f"/big/{name}", b"", tx)
        xs.transaction_end(tx)
        transport.ops.clear()
        assert xs.directory("/big") == BIG
    assert transport.ops[0] == Op.DIRECTORY
    assert transport.ops[1:] == [Op.DIRECTORY_PART] * (len(transport.ops) - 1)
    assert len(transport.ops) >= 11  # 41 kB in parts of at most 4 kB


def test_large_directory_against_c_xenstored(c_xenstored: CDaemon) -> None:
    with Client(str(c_xenstored.socket)) as xs:
        tx = xs.transaction_start()
        for name in BIG:
            xs.write(f"/big/{name}", b"", tx)
        xs.transaction_end(tx)
        assert xs.directory("/big") == BIG


# -- blocking client: watches --


def test_watch_initial_event_and_event_before_ok(xs: Client) -> None:
    xs.watch("/w", "tok")
    xs.write("/w/x", b"1")
    # C and ours send the event of a write before its OK, and the initial
    # event after WATCH's OK: both were read while waiting for replies.
    assert xs._protocol.queued_events == 2
    assert xs.wait_watch(timeout=0) == WatchEvent("/w", "tok")
    assert xs.wait_watch(timeout=0) == WatchEvent("/w/x", "tok")
    with pytest.raises(TimeoutError):
        xs.wait_watch(timeout=0.05)


def test_events_from_another_connection(xs: Client, daemon: RunningDaemon) -> None:
    xs.watch("/w", "a")
    xs.watch("rel", "b")
    assert xs.wait_watch(1) == WatchEvent("/w", "a")
    assert xs.wait_watch(1) == WatchEvent("rel", "b")
    with Client(str(daemon.socket)) as other:
        other.write("/w/1", b"")
        other.write("/local/domain/0/rel/q", b"")
        other.rm("/w")
    got = list(xs.watch_events(timeout=0.3))
    # RM fires the removed root for subtree watches; the removed
    # descendants only fire watches on exactly their own path.
    assert got == [
        WatchEvent("/w/1", "a"),
        WatchEvent("rel/q", "b"),
        WatchEvent("/w", "a"),
    ]


def test_unwatch_and_reset_watches(xs: Client, daemon: RunningDaemon) -> None:
    xs.watch("/u", "1")
    xs.watch("/v", "2")
    xs.unwatch("/u", "1")
    xs.reset_watches()
    list(xs.watch_events(timeout=0.1))  # initial events
    with Client(str(daemon.socket)) as other:
        other.write("/u/x", b"")
        other.write("/v/x", b"")
    assert list(xs.watch_events(timeout=0.2)) == []


def test_watch_depth(xs: Client) -> None:
    xs.watch("/d", "t", depth=0)
    xs.write("/d/child", b"")
    xs.write("/d", b"v")
    assert list(xs.watch_events(timeout=0.2)) == [WatchEvent("/d", "t")] * 2


# -- blocking client: transactions --


def test_transaction_conflict_from_second_client(
    xs: Client, daemon: RunningDaemon
) -> None:
    xs.write("/k", b"0")
    tx = xs.transaction_start()
    assert xs.read("/k", tx) == b"0"
    with Client(str(daemon.socket)) as other:
        other.write("/k", b"0")  # same value: still a conflict
    xs.write("/k", b"1", tx)
    with pytest.raises(TransactionConflict):
        xs.transaction_end(tx)
    assert xs.read("/k") == b"0"


def test_transaction_helper_retries_until_commit(
    xs: Client, daemon: RunningDaemon
) -> None:
    xs.write("/n", b"1")
    runs: list[int] = []
    with Client(str(daemon.socket)) as other:

        def increment(tx: int) -> int:
            value = int(xs.read("/n", tx))
            runs.append(tx)
            if len(runs) == 1:
                other.write("/n", b"10")  # interfere once
            xs.write("/n", b"%d" % (value + 1), tx)
            return value + 1

        assert xs.transaction(increment) == 11
    assert len(runs) == 2
    assert xs.read("/n") == b"11"


def test_transaction_helper_gives_up_and_aborts(
    xs: Client, daemon: RunningDaemon
) -> None:
    xs.write("/g", b"0")
    with Client(str(daemon.socket)) as other:

        def always_conflict(tx: int) -> None:
            xs.read("/g", tx)
            other.write("/g", b"x")
            xs.write("/g/mine", b"", tx)

        with pytest.raises(TransactionConflict):
            xs.transaction(always_conflict, attempts=3)

        def fails(tx: int) -> None:
            xs.write("/g/aborted", b"", tx)
            raise KeyError("boom")

        with pytest.raises(KeyError):
            xs.transaction(fails)
    assert not xs.exists("/g/mine")
    assert not xs.exists("/g/aborted")


# -- blocking client: domains and the daemon --


def test_domain_and_daemon_requests(xs: Client) -> None:
    assert xs.get_domain_path(7) == "/local/domain/7"
    assert xs.get_feature() > 0
    names = xs.list_quotas()
    assert "nodes" in names
    xs.set_quota("nodes", 1234)
    assert xs.get_quota("nodes") == 1234
    assert xs.control("print", "hello from the client test") == b"OK\0"
    assert b"check" in xs.control("help")
    with pytest.raises(NoEntry):
        xs.release(12345)  # never introduced
    with pytest.raises(InvalidArgument):
        xs.get_quota("no-such-quota")


def test_domain_lifecycle_against_c_xenstored(c_xenstored: CDaemon) -> None:
    with Client(str(c_xenstored.socket)) as xs:
        assert xs.is_domain_introduced(5) is False
        xs.watch("@introduceDomain", "in")
        xs.watch("@releaseDomain", "out")
        xs.introduce(5, 1, 1)
        xs.introduce(6, 1, 1)
        assert xs.is_domain_introduced(5) is True
        assert xs.get_domain_path(5) == "/local/domain/5"
        xs.set_target(6, 5)
        xs.resume(5)
        xs.release(6)
        xs.release(5)
        assert xs.is_domain_introduced(5) is False
        events = list(xs.watch_events(timeout=0.3))
        assert events.count(WatchEvent("@introduceDomain", "in")) >= 3
        assert WatchEvent("@releaseDomain", "out") in events


def test_domain_lifecycle_and_seed_ops(host_daemon: RunningDaemon) -> None:
    for domid in (5, 6):  # EMULATION.md: the ring page file makes it exist
        (host_daemon.directory / f"ring-{domid}").write_bytes(bytes(4096))
    with Client(str(host_daemon.socket)) as xs:
        assert xs.is_domain_introduced(5) is False
        xs.add_domain_watches(5, [("/staged", "s")])  # before INTRODUCE
        xs.watch("@introduceDomain", "in")
        xs.introduce(5, 1, 1)
        xs.introduce(6, 1, 1)
        assert xs.is_domain_introduced(5) is True
        xs.set_target(6, 5)
        xs.add_domain_watches(5, [("/a", "t1"), ("rel", "t2")])
        with pytest.raises(AlreadyExists):
            xs.add_domain_watches(5, [("/a", "t1")])
        gen, pairs = xs.get_domain_watches(5, 0)
        assert pairs == [("/staged", "s"), ("/a", "t1"), ("rel", "t2")]
        assert xs.get_domain_watches(5, 3) == (gen, [])
        assert xs.get_domain_watches(5, 1) == (gen, pairs[1:])
        xs.quiesce(5)
        xs.quiesce(5)  # already quiesced: OK at once
        xs.introduce(5, 1, 1)  # resumes the quiesced domain
        xs.resume(5)
        xs.release(6)
        xs.release(5)
        assert xs.is_domain_introduced(5) is False
        with pytest.raises(NoEntry):
            xs.quiesce(5)
        with pytest.raises(NoEntry):
            xs.get_domain_watches(9, 0)
        events = list(xs.watch_events(timeout=0.3))
        assert events[0] == WatchEvent("@introduceDomain", "in")
        assert events.count(WatchEvent("@introduceDomain", "in")) >= 2


def test_client_finds_socket_like_libxenstore(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.setenv("XENSTORED_RUNDIR", str(daemon.socket.parent))
    with Client() as xs:
        xs.write("/found", b"rundir")
    monkeypatch.setenv("XENSTORED_PATH", str(daemon.socket))
    monkeypatch.setenv("XENSTORED_RUNDIR", "/nonexistent")
    with Client() as xs:
        assert xs.read("/found") == b"rundir"
    monkeypatch.setenv("XENSTORED_PATH", str(daemon.socket.parent / "nothing"))
    with pytest.raises(FileNotFoundError):
        Client()


def test_device_transport(daemon: RunningDaemon, tmp_path: Path) -> None:
    # The xenbus device is a plain file descriptor: drive one over a
    # connected socket's descriptor.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket))
    with Client(transport=DeviceTransport(sock.detach())) as xs:
        xs.write("/dev", b"ice")
        xs.watch("/dev", "t")
        assert xs.wait_watch(1) == WatchEvent("/dev", "t")
        with pytest.raises(TimeoutError):
            xs.wait_watch(0.05)
        assert xs.read("/dev") == b"ice"
    # A path that is not a socket is opened as the device, as libxenstore
    # does; a regular file answers nothing.
    (tmp_path / "not-a-socket").write_bytes(b"")
    with Client(str(tmp_path / "not-a-socket")) as xs, pytest.raises(BrokenConnection):
        xs.read("/")


def test_closed_and_broken_connections(daemon: RunningDaemon) -> None:
    xs = Client(str(daemon.socket))
    xs.close()
    xs.close()
    with pytest.raises(ConnectionClosed):
        xs.read("/")
    xs = Client(str(daemon.socket))
    xs.watch("/", "t")
    assert xs.wait_watch(1) == WatchEvent("/", "t")
    daemon.stop()
    with pytest.raises(BrokenConnection):
        xs.read("/")
    with pytest.raises(BrokenConnection):
        xs.wait_watch(1)
    xs.close()


# -- asyncio client --


async def _async_everything(path: str) -> None:
    async with AsyncClient(path) as xs, AsyncClient(path) as other:
        await xs.write("/a/x", b"1")
        assert await xs.read("/a/x") == b"1"
        await xs.mkdir("/a/d")
        assert await xs.directory("/a") == ["x", "d"]
        assert await xs.exists("/a/d")
        await xs.rm("/a/d")
        assert not await xs.exists("/a/d")
        await xs.set_perms("/a", ["n0", "r3"])
        assert [str(p) for p in await xs.get_perms("/a")] == ["n0", "r3"]
        assert await xs.get_domain_path(3) == "/local/domain/3"
        assert await xs.get_feature() > 0
        assert "nodes" in await xs.list_quotas()
        await xs.set_quota("watches", 99)
        assert await xs.get_quota("watches") == 99
        assert (await xs.control("help")).startswith(b"check")
        with pytest.raises(NoEntry):
            await xs.read("/nope")
        with pytest.raises(NoEntry):
            await xs.release(4321)

        # pipelining: many requests in flight on one connection
        await asyncio.gather(*(xs.write(f"/p/{i}", b"%d" % i) for i in range(200)))
        values = await asyncio.gather(*(xs.read(f"/p/{i}") for i in range(200)))
        assert values == [b"%d" % i for i in range(200)]
        mixed = await asyncio.gather(
            xs.read("/p/1"),
            xs.read("/missing"),
            xs.read("/p/2"),
            return_exceptions=True,
        )
        assert list(mixed[::2]) == [b"1", b"2"]
        assert isinstance(mixed[1], NoEntry)

        # watches: initial event, then the write's event
        await xs.watch("/a", "tok")
        await other.write("/a/y", b"")
        assert await xs.wait_watch(1) == WatchEvent("/a", "tok")
        assert await xs.wait_watch(1) == WatchEvent("/a/y", "tok")
        await xs.unwatch("/a", "tok")
        await xs.watch("/a", "again")
        await xs.reset_watches()
        got = [event async for event in xs.watch_events(timeout=0.2)]
        assert got == [WatchEvent("/a", "again")]

        # a real conflict, retried by the helper
        await xs.write("/c", b"0")
        runs = 0

        async def bump(tx: int) -> bytes:
            nonlocal runs
            runs += 1
            value = await xs.read("/c", tx)
            if runs == 1:
                await other.write("/c", b"5")
            await xs.write("/c", value + b"!", tx)
            return value

        assert await xs.transaction(bump) == b"5"
        assert runs == 2
        assert await xs.read("/c") == b"5!"
        tx = await xs.transaction_start()
        await xs.read("/c", tx)
        await other.write("/c", b"6")
        with pytest.raises(TransactionConflict):
            await xs.transaction_end(tx)

        # the DIRECTORY_PART fallback
        tx = await xs.transaction_start()
        await asyncio.gather(*(xs.write(f"/big/{n}", b"", tx) for n in BIG))
        await xs.transaction_end(tx)
        assert await xs.directory("/big") == BIG
    with pytest.raises(ConnectionClosed):
        await xs.read("/a")


def test_async_client_every_method(daemon: RunningDaemon) -> None:
    asyncio.run(_async_everything(str(daemon.socket)))


def test_async_client_connection_lost(daemon: RunningDaemon) -> None:
    async def scenario() -> None:
        xs = AsyncClient(transport=await AsyncUnixTransport.connect(str(daemon.socket)))
        await xs.watch("/", "t")
        waiting = asyncio.create_task(xs.wait_watch())
        assert await waiting == WatchEvent("/", "t")
        waiting = asyncio.create_task(xs.wait_watch())
        await asyncio.sleep(0.05)
        daemon.stop()
        with pytest.raises(BrokenConnection):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(BrokenConnection):
            await xs.read("/")
        await xs.aclose()

    asyncio.run(scenario())


def test_async_first_requests_concurrently_share_one_connection(
    daemon: RunningDaemon,
) -> None:
    async def scenario() -> None:
        xs = AsyncClient(str(daemon.socket))
        try:
            paths = await asyncio.wait_for(
                asyncio.gather(*(xs.get_domain_path(i) for i in range(20))), 10
            )
            assert paths == [f"/local/domain/{i}" for i in range(20)]
        finally:
            await xs.aclose()

    asyncio.run(scenario())


def test_async_cancelled_request_does_not_confuse_later_ones(
    daemon: RunningDaemon,
) -> None:
    async def scenario() -> None:
        async with AsyncClient(str(daemon.socket)) as xs:
            await xs.write("/x", b"x")
            task = asyncio.create_task(xs.read("/x"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await xs.read("/x") == b"x"
            await xs.write("/y", b"y")
            assert await xs.read("/y") == b"y"

    asyncio.run(scenario())


def test_sync_and_async_facades_offer_the_same_methods() -> None:
    """The two hand-kept façades must not drift (STYLE.md 4.9)."""

    def public(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose", "connect"}


def _pipeline_requests() -> list[Request]:
    requests = [Request(Op.WRITE, b"/pipe/k%d\0v%d" % (i, i)) for i in range(300)]
    requests.append(Request(Op.READ, b"/pipe/missing\0"))
    requests += [Request(Op.READ, b"/pipe/k%d\0" % i) for i in range(300)]
    return requests


def _check_pipeline(results: list[bytes | XsError]) -> None:
    assert len(results) == 601
    assert results[:300] == [b"OK\0"] * 300
    assert isinstance(results[300], NoEntry)
    assert results[301:] == [b"v%d" % i for i in range(300)]


def test_sync_pipeline_answers_in_order(daemon: RunningDaemon) -> None:
    with Client(str(daemon.socket)) as client:
        _check_pipeline(client.pipeline(_pipeline_requests()))
        # The connection is still in step afterwards.
        assert client.read("/pipe/k7") == b"v7"


def test_async_pipeline_answers_in_order(daemon: RunningDaemon) -> None:
    async def run() -> None:
        async with AsyncClient(str(daemon.socket)) as client:
            _check_pipeline(await client.pipeline(_pipeline_requests()))
            assert await client.pipeline([]) == []
            assert await client.read("/pipe/k7") == b"v7"

    asyncio.run(run())


def test_async_connect_waits_while_the_listen_backlog_is_full(short_tmp: Path) -> None:
    """EAGAIN from a Unix socket's connect means the backlog is full and
    nothing connected: the client retries, rather than take asyncio's
    "in progress" path and write into a socket that never connected."""
    path = str(short_tmp / "busy")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    while True:  # fill the backlog with connections nobody accepts yet
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            break
        queued.append(sock)
    received: list[bytes] = []

    def accept_late() -> None:
        time.sleep(0.1)
        for _ in queued:
            listener.accept()[0].close()
        conn, _ = listener.accept()  # the client's, once there is room
        conn.settimeout(5)
        with conn:
            received.append(conn.recv(5))

    acceptor = threading.Thread(target=accept_late)
    acceptor.start()

    async def client() -> None:
        transport = await AsyncUnixTransport.connect(path)
        try:
            await transport.send_all(b"hello")
        finally:
            await transport.aclose()

    try:
        asyncio.run(client())
    finally:
        acceptor.join(10)
        for sock in queued:
            sock.close()
        listener.close()
    assert received == [b"hello"]
