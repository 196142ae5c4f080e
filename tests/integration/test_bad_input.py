"""Misbehaving clients against the real daemon on its Unix socket.

Each test talks raw bytes to a running ``pyxenstored`` (the ``daemon``
fixture) while a well-behaved *bystander* connection, opened first, keeps
using the daemon.  After every scenario: the daemon is alive, the
bystander and a brand-new client are served, nothing crashed in the log,
and a connection the daemon had to drop (or that vanished in the middle of
a message) is reported by exactly one log line naming it.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.wire import HEADER, Packet
from tests.conftest import RunningDaemon
from tests.wiretools import frame, rss_kib, take_message

READ, WATCH, TRANSACTION_END, WRITE, SET_PERMS, ERROR = 2, 4, 7, 11, 14, 16
OK = b"OK\0"


class Raw:
    """A client that speaks the wire format by hand."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = bytearray()
        self.req = 1000

    def send(self, op: int, payload: bytes, tx: int = 0) -> int:
        self.req += 1
        self.sock.sendall(frame(op, payload, self.req, tx))
        return self.req

    def recv(self) -> Packet:
        while (message := take_message(self.buf)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the daemon closed the connection")
            self.buf += data
        return message

    def call(self, op: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
        """One request, its reply (watch events are skipped)."""
        req = self.send(op, payload, tx)
        while True:
            rop, rreq, rtx, rpayload = self.recv()
            if rop == 15:
                continue
            assert (rreq, rtx) == (req, tx)
            return rop, rpayload

    def error(self, op: int, payload: bytes, tx: int = 0) -> str:
        rop, rpayload = self.call(op, payload, tx)
        assert rop == ERROR, (rop, rpayload)
        return rpayload[:-1].decode()

    def closed_by_peer(self, timeout: float = 5) -> bytes | None:
        """Everything received before the daemon closed; None if it did not."""
        self.sock.settimeout(timeout)
        got = bytes(self.buf)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return got
                got += data
        except ConnectionResetError:
            return got
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


class Log:
    """The lines the daemon logs from now on."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.path = daemon.log
        self.start = self.path.stat().st_size

    def lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace").splitlines()

    def wait(self, count: int, timeout: float = 2.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.lines()) < count:
            time.sleep(0.02)
        time.sleep(0.1)  # a chance for a second, unwanted line to show up
        return self.lines()


@pytest.fixture
def bystander(daemon: RunningDaemon) -> Iterator[Raw]:
    client = Raw(daemon.socket)
    assert client.call(WRITE, b"/bystander\0here") == (WRITE, OK)
    yield client
    client.close()


def assert_healthy(daemon: RunningDaemon, bystander: Raw) -> None:
    assert daemon.alive()
    assert bystander.call(WRITE, b"/bystander\0still") == (WRITE, OK)
    assert bystander.call(READ, b"/bystander\0") == (READ, b"still")
    fresh = Raw(daemon.socket)
    try:
        assert fresh.call(READ, b"/bystander\0") == (READ, b"still")
    finally:
        fresh.close()
    text = daemon.log.read_text(errors="replace")
    assert "Traceback" not in text
    assert " ERROR " not in text
    assert " CRITICAL " not in text


def assert_one_line_for_a_closed_connection(lines: list[str]) -> str:
    assert len(lines) == 1, f"expected one log line, got {lines}"
    assert re.search(r"conn\d+", lines[0]), lines[0]
    return lines[0]


def assert_no_warnings(log: Log) -> None:
    noisy = [line for line in log.lines() if "WARNING" in line]
    assert noisy == []


# -- framing violations: the connection goes, the daemon stays ----------------------


@pytest.mark.parametrize("data", [b"\x02\0\0", b"\x02\0\0\0\x01\0\0\0\0\0\0\0\x05"])
def test_short_header_then_close(
    daemon: RunningDaemon, bystander: Raw, data: bytes
) -> None:
    log = Log(daemon)
    bad = Raw(daemon.socket)
    bad.sock.sendall(data)
    bad.close()
    assert_healthy(daemon, bystander)
    assert_one_line_for_a_closed_connection(log.wait(1))


@pytest.mark.parametrize("length", [4097, 65536, 0xFFFFFFFF])
def test_length_over_4096_closes_without_reply(
    daemon: RunningDaemon, bystander: Raw, length: int
) -> None:
    log = Log(daemon)
    bad = Raw(daemon.socket)
    # The "body" holds a well-formed WRITE: it must never be executed.
    body = frame(WRITE, b"/smuggled\0x", 1)
    bad.sock.sendall(HEADER.pack(WRITE, 1, 0, length) + body)
    received = bad.closed_by_peer()
    bad.close()
    assert received == b"", "the connection must be closed with no reply"
    assert_healthy(daemon, bystander)
    assert bystander.error(READ, b"/smuggled\0") == "ENOENT"
    line = assert_one_line_for_a_closed_connection(log.wait(1))
    assert str(length) in line


def test_client_disconnects_mid_message(daemon: RunningDaemon, bystander: Raw) -> None:
    log = Log(daemon)
    bad = Raw(daemon.socket)
    whole = frame(WRITE, b"/half\0" + b"v" * 94, 1)
    bad.sock.sendall(whole[:60])
    time.sleep(0.05)
    bad.close()
    assert_healthy(daemon, bystander)
    assert bystander.error(READ, b"/half\0") == "ENOENT"
    assert_one_line_for_a_closed_connection(log.wait(1))


def test_payload_of_exactly_4096_is_served(
    daemon: RunningDaemon, bystander: Raw
) -> None:
    value = b"v" * (4096 - len(b"/max\0"))
    assert bystander.call(WRITE, b"/max\0" + value) == (WRITE, OK)
    assert bystander.call(READ, b"/max\0") == (READ, value)
    assert_healthy(daemon, bystander)


# -- malformed requests: an ERROR reply, the connection stays --------------------------


MISSING_NUL = [
    (READ, b"/a"),
    (READ, b""),
    (READ, b"/a\0/b\0"),
    (WRITE, b"/a"),
    (WATCH, b"/a\0tok"),
    (WATCH, b"/a\0"),
    (SET_PERMS, b"/a\0n0"),
    (TRANSACTION_END, b"T"),
    (12, b"/a"),  # MKDIR
    (13, b"/a"),  # RM
    (1, b"/"),  # DIRECTORY
]


def test_missing_nul_terminators(daemon: RunningDaemon, bystander: Raw) -> None:
    log = Log(daemon)
    client = Raw(daemon.socket)
    for op, payload in MISSING_NUL:
        assert client.error(op, payload) == "EINVAL", (op, payload)
        assert client.call(READ, b"/bystander\0") == (READ, b"here")  # still served
    client.close()
    assert_healthy(daemon, bystander)
    assert_no_warnings(log)


INVALID_PATHS = [
    b"/a b",
    b"/a.b",
    b"/..",
    b"/\xe9t\xe9",
    b"/a\x01",
    b"/a\n",
    b"//",
    b"/a//b",
    b"/a/",
    b"",
    b"@releaseDomain",
]


@pytest.mark.parametrize(
    "op", [READ, WRITE, 12, 13, 1], ids=["READ", "WRITE", "MKDIR", "RM", "DIRECTORY"]
)
def test_invalid_paths(daemon: RunningDaemon, bystander: Raw, op: int) -> None:
    log = Log(daemon)
    for path in INVALID_PATHS:
        payload = path + b"\0" + (b"value" if op == WRITE else b"")
        assert bystander.error(op, payload) == "EINVAL", path
    assert bystander.call(1, b"/\0") == (1, b"tool\0bystander\0")
    assert_healthy(daemon, bystander)
    assert_no_warnings(log)


def test_over_long_paths(daemon: RunningDaemon, bystander: Raw) -> None:
    longest = b"/" + b"p" * 3071
    assert bystander.error(READ, longest + b"\0") == "ENOENT"
    assert bystander.call(WRITE, longest + b"\0v") == (WRITE, OK)
    assert bystander.call(READ, longest + b"\0") == (READ, b"v")
    for op in (READ, WRITE, 12, 13, 1):
        assert bystander.error(op, b"/" + b"p" * 3072 + b"\0") == "EINVAL"
    assert bystander.error(READ, b"/" + b"p" * 4000 + b"\0") == "EINVAL"
    assert_healthy(daemon, bystander)


def test_unknown_operations(daemon: RunningDaemon, bystander: Raw) -> None:
    for op in (15, 16, 20, 30, 0xFFFF, 0xFFFFFFFF):
        req = bystander.send(op, b"junk\0", tx=0)
        assert bystander.recv() == (ERROR, req, 0, b"ENOSYS\0"), op
    assert_healthy(daemon, bystander)


MALFORMED_PERMS = [
    b"x0\0",
    b"r\0",
    b"r-1\0",
    b"r65536\0",
    b"r0x-5\0",
    b"r0-5\0",
    b"rr\0",
    b"r5junk\0",
    b"\0",
    b"n0\0r0x\0",
]


def test_malformed_permission_strings(daemon: RunningDaemon, bystander: Raw) -> None:
    assert bystander.call(WRITE, b"/p\0") == (WRITE, OK)
    for perms in MALFORMED_PERMS:
        assert bystander.error(SET_PERMS, b"/p\0" + perms) == "EINVAL", perms
        assert bystander.call(3, b"/p\0") == (3, b"n0\0")  # GET_PERMS: unchanged
    assert bystander.error(SET_PERMS, b"/p\0") == "EINVAL"  # no permission at all
    assert_healthy(daemon, bystander)


def test_unknown_transaction_id(daemon: RunningDaemon, bystander: Raw) -> None:
    for op, payload in [(READ, b"/\0"), (WRITE, b"/t\0v"), (TRANSACTION_END, b"T\0")]:
        assert bystander.error(op, payload, tx=77) == "ENOENT"
    assert bystander.error(READ, b"/t\0") == "ENOENT"
    assert_healthy(daemon, bystander)


# -- load: a client that never reads, and deep pipelining ------------------------------


def test_client_that_never_reads(daemon: RunningDaemon, bystander: Raw) -> None:
    value = b"x" * 4000
    assert bystander.call(WRITE, b"/big\0" + value) == (WRITE, OK)
    log = Log(daemon)
    baseline = rss_kib(daemon.proc.pid)
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(daemon.socket))
    hog.setblocking(False)
    burst = frame(READ, b"/big\0", 1) * 2000  # 8 MB of replies per burst
    dropped = False
    slowest = 0.0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not dropped:
        try:
            hog.send(burst)
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
        started = time.monotonic()
        assert bystander.call(READ, b"/big\0") == (READ, value)
        slowest = max(slowest, time.monotonic() - started)
    hog.close()
    assert slowest < 0.5, f"the bystander waited {slowest:.2f}s"
    grown = rss_kib(daemon.proc.pid) - baseline
    assert grown < 200 * 1024, f"the daemon grew by {grown} KiB"
    assert_healthy(daemon, bystander)
    lines = log.wait(1 if dropped else 0, timeout=1)
    if dropped:
        assert_one_line_for_a_closed_connection(lines)
    else:
        assert len(lines) <= 1


def test_thousands_of_pipelined_requests(daemon: RunningDaemon, bystander: Raw) -> None:
    count = 2500
    requests = []
    for i in range(count):
        requests.append(frame(WRITE, b"/pipe/%d\0value-%d" % (i, i), 2 * i + 1))
        requests.append(frame(READ, b"/pipe/%d\0" % i, 2 * i + 2))
    client = Raw(daemon.socket)
    client.sock.settimeout(20)
    started = time.monotonic()
    client.sock.sendall(b"".join(requests))
    for i in range(count):
        assert client.recv() == (WRITE, 2 * i + 1, 0, OK)
        assert client.recv() == (READ, 2 * i + 2, 0, b"value-%d" % i)
    elapsed = time.monotonic() - started
    client.close()
    assert elapsed < 15
    assert bystander.call(READ, b"/pipe/%d\0" % (count - 1)) == (
        READ,
        b"value-%d" % (count - 1),
    )
    assert_healthy(daemon, bystander)
