"""Live update: the daemon's program is replaced under running clients.

Every test runs real daemons (pyxenstored, and Debian's C xenstored under
the peers' shim) and drives the update with Debian's ``xenstore-control
live-update``, as an operator would.  The scene each update must carry
over (:class:`Scene`): nodes with permissions naming a guest, a dom0
socket connection holding a watch, a guest on its ring holding a watch,
a dom0 request half sent, a guest request half written into its ring, and
a TRANSACTION_START parked while the update waited for an open
transaction to end.  After the update (:meth:`Scene.check`): the same
pid, the same tree and permissions, the old connections answered, the
half-sent requests answered once completed, the parked one answered, the
watches firing, the guest's permissions still enforced.

Directions: pyxenstored -> pyxenstored (on the backend ``--backend``
picks), C -> pyxenstored (C hands over the Xen library handles, so ours
starts on the library backend, under the shim), pyxenstored -> C and on
back to pyxenstored.  Then every way an update cannot happen, each of
which must leave the daemon serving as before.

Under the shim, event-channel ports live in the shim's process memory
and do not survive exec (the kernel's do): after an update there, kicks
between the daemon and the guest are lost, and both sides find each
other's messages by re-checking the ring (our daemon every second, C on
any event, the simulated guest every few milliseconds).  The tests wait
long enough for that.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.client.transport import Transport, UnixTransport
from pyxenstored.errors import PermissionDenied, TransactionConflict
from pyxenstored.migration.xsstate import ConnectionData, NodeData, decode_state
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from pyxenstored.wire import HEADER
from pyxenstored.wire.ops import Op
from pyxenstored.wire.payload import join_args
from tests.conftest import (
    BACKEND,
    EVENT_LOOP,
    SHIM,
    CDaemon,
    RunningDaemon,
    stop_process,
    wait_for_socket,
)
from tests.wiretools import frame, take_message

BINDIR = Path("/tmp/peers/xenroot/usr/lib/xen-4.17/bin")
XENSTORE_CONTROL = BINDIR / "xenstore-control"
C_XENSTORED = BINDIR / "xenstored"
#: Our daemon's program, as an operator names it to xenstore-control.
PYXENSTORED = Path(sys.executable).parent / "pyxenstored"
DOMID = 3
HOME = f"/local/domain/{DOMID}"
TIMEOUT = 10.0


# -- raw framing over a socket or a guest's ring ------------------------------


class Raw:
    """A connection speaking xenstore frames byte by byte."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._buf = bytearray()
        self._req = 100
        #: Watch events seen while waiting for replies: (path, token).
        self.events: list[tuple[str, str]] = []

    def frame(self, op: Op, *args: str, tx: int = 0) -> tuple[int, bytes]:
        self._req += 1
        payload = join_args(*args)
        if op == Op.WRITE:  # WRITE's value has no NUL after it
            payload = payload[:-1]
        return self._req, frame(op, payload, self._req, tx)

    def send(self, op: Op, *args: str, tx: int = 0) -> int:
        req, data = self.frame(op, *args, tx=tx)
        self.transport.send_all(data)
        return req

    def _next(self, deadline: float) -> tuple[int, int, bytes]:
        while True:
            message = take_message(self._buf)
            if message is not None:
                return message.op, message.req_id, message.payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message")
            try:
                # Short waits: a guest whose kick was lost re-checks its ring.
                data = self.transport.receive_some(65536, timeout=min(left, 0.05))
            except TimeoutError:
                continue
            if not data and isinstance(self.transport, UnixTransport):
                raise ConnectionError("closed")
            self._buf += data

    def reply(self, req: int, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            op, got, payload = self._next(deadline)
            if op == Op.WATCH_EVENT:
                self.events.append(_event(payload))
                continue
            assert got == req, f"reply to {got}, expected {req}"
            return op, payload

    def event(self, token: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for i, (path, tok) in enumerate(self.events):
                if tok == token:
                    del self.events[i]
                    return path
            op, _req, payload = self._next(deadline)
            assert op == Op.WATCH_EVENT, f"unexpected {op} {payload!r}"
            self.events.append(_event(payload))


def _event(payload: bytes) -> tuple[str, str]:
    path, token = payload.rstrip(b"\0").decode().split("\0")
    return path, token


def _ok(raw: Raw, req: int) -> bytes:
    op, payload = raw.reply(req)
    assert op != Op.ERROR, f"error {payload!r}"
    return payload


# -- the scene ---------------------------------------------------------------


def _tree(socket: Path) -> dict[str, tuple[bytes, list[str]]]:
    """Every node with its value and permissions (read as dom0)."""
    with Client(str(socket)) as client:
        out: dict[str, tuple[bytes, list[str]]] = {}
        stack = ["/"]
        while stack:
            path = stack.pop()
            out[path] = (
                client.read(path),
                [str(p) for p in client.get_perms(path)],
            )
            for name in client.directory(path):
                stack.append(f"{path.rstrip('/')}/{name}")
        return out


class Scene:
    """What every live update must carry over (module docstring)."""

    def __init__(self, socket: Path, host: Path) -> None:
        self.socket = socket
        self.host = host
        self.tool = Client(str(socket))
        Toolstack(self.tool, HostDir(str(host))).create_domain(DOMID)
        tool = self.tool
        tool.write("/lu/watched", b"0")
        tool.write("/lu/shared", b"shared")
        tool.set_perms("/lu/shared", ["n0", f"r{DOMID}"])
        tool.write("/lu/private", b"private")
        tool.write(f"{HOME}/data", b"guest data")
        tool.set_perms(f"{HOME}/data", [f"b{DOMID}"])
        for i in range(50):
            tool.write(f"/lu/bulk/{i}", f"value {i}".encode())
        # dom0 connection holding a watch
        self.dom0 = Raw(UnixTransport.connect(str(socket)))
        _ok(self.dom0, self.dom0.send(Op.WATCH, "/lu/watched", "dom0tok"))
        assert self.dom0.event("dom0tok") == "/lu/watched"
        # the guest, on its ring, holding a watch
        self.ring = GuestRing(str(host), DOMID, timeout=TIMEOUT)
        self.guest = Raw(self.ring)
        _ok(self.guest, self.guest.send(Op.WATCH, "/lu/shared", "guesttok"))
        assert self.guest.event("guesttok") == "/lu/shared"
        # a holder keeps a transaction open while the update starts
        self.holder = Raw(UnixTransport.connect(str(socket)))
        self.holder_tx = int(
            _ok(self.holder, self.holder.send(Op.TRANSACTION_START, "")).rstrip(b"\0")
        )
        self.latecomer = Raw(UnixTransport.connect(str(socket)))
        self.before = _tree(socket)

    def half_send(self) -> None:
        """Requests in flight: half of a dom0 WRITE and of a guest WRITE."""
        self.dom0_req, data = self.dom0.frame(Op.WRITE, "/lu/from-dom0", "d0")
        self.dom0_rest = data[20:]
        self.dom0.transport.send_all(data[:20])
        self.guest_req, gdata = self.guest.frame(
            Op.WRITE, f"{HOME}/data/from-guest", "g"
        )
        self.guest_rest = gdata[10:]
        self.guest.transport.send_all(gdata[:10])

    def park(self) -> None:
        """While the update waits for the holder: a TRANSACTION_START waits too."""
        self.parked_req = self.latecomer.send(Op.TRANSACTION_START, "")

    def release(self) -> None:
        _ok(self.holder, self.holder.send(Op.TRANSACTION_END, "T", tx=self.holder_tx))

    def check(self) -> None:
        """Everything carried over: see the module docstring."""
        # the parked transaction start is answered by the new program
        tx = int(_ok(self.latecomer, self.parked_req).rstrip(b"\0"))
        assert tx > 0
        _ok(self.latecomer, self.latecomer.send(Op.TRANSACTION_END, "F", tx=tx))
        # the half-sent requests, completed, are answered
        self.dom0.transport.send_all(self.dom0_rest)
        assert _ok(self.dom0, self.dom0_req) == b"OK\0"
        self.guest.transport.send_all(self.guest_rest)
        assert _ok(self.guest, self.guest_req) == b"OK\0"
        # the tree and its permissions, plus the two completed writes
        after = _tree(self.socket)
        assert after.pop("/lu/from-dom0")[0] == b"d0"
        value, perms = after.pop(f"{HOME}/data/from-guest")
        assert value == b"g"
        assert perms == after[f"{HOME}/data"][1]  # inherited, as always
        assert after == self.before
        # old connections answered, watches firing
        assert _ok(self.dom0, self.dom0.send(Op.READ, "/lu/shared")) == b"shared"
        self.tool.write("/lu/watched", b"1")
        assert self.dom0.event("dom0tok") == "/lu/watched"
        self.tool.write("/lu/shared", b"changed")
        assert self.guest.event("guesttok", timeout=TIMEOUT) == "/lu/shared"
        # permissions still enforced for the guest
        assert _ok(self.guest, self.guest.send(Op.READ, "/lu/shared")) == b"changed"
        op, payload = self.guest.reply(self.guest.send(Op.READ, "/lu/private"))
        assert (op, payload) == (Op.ERROR, b"EACCES\0")
        op, payload = self.guest.reply(self.guest.send(Op.WRITE, "/lu/shared", "x"))
        assert (op, payload) == (Op.ERROR, b"EACCES\0")
        with Client(str(self.socket)) as fresh:
            assert fresh.read(f"{HOME}/data") == b"guest data"

    def close(self) -> None:
        for raw in (self.dom0, self.holder, self.latecomer):
            raw.transport.close()
        self.ring.close()
        self.tool.close()


def live_update(
    env: dict[str, str], binary: Path, *args: str, timeout: int = 10
) -> subprocess.CompletedProcess[str]:
    """Debian's ``xenstore-control live-update`` (blocks until answered)."""
    return subprocess.run(
        [str(XENSTORE_CONTROL), "live-update", "-t", str(timeout), *args, str(binary)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def update_with_scene(
    scene: Scene, env: dict[str, str], binary: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Start the update while a transaction is open, then let it proceed."""
    scene.half_send()
    result: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(
        target=lambda: result.append(live_update(env, binary, *args))
    )
    thread.start()
    time.sleep(1.0)  # the update is pending: it waits for the holder
    scene.park()
    time.sleep(0.3)
    scene.release()
    thread.join(60)
    assert result, "xenstore-control did not return"
    return result[0]


@pytest.fixture
def py_daemon(host_daemon: RunningDaemon) -> RunningDaemon:
    """pyxenstored serving guests in its own directory (conftest's host_daemon)."""
    return host_daemon


def _log(daemon: RunningDaemon) -> str:
    return daemon.log.read_text() if daemon.log.exists() else ""


# -- pyxenstored -> pyxenstored ---------------------------------------------------


def test_py_to_py_keeps_everything(py_daemon: RunningDaemon) -> None:
    scene = Scene(py_daemon.socket, py_daemon.directory)
    try:
        pid = py_daemon.proc.pid
        done = update_with_scene(scene, py_daemon.env, PYXENSTORED)
        assert done.returncode == 0, done.stderr + _log(py_daemon)
        assert py_daemon.alive()
        assert py_daemon.proc.pid == pid
        scene.check()
        log = _log(py_daemon)
        assert "live update: state saved" in log
        # the guest's ring, and on the library backend dom0's own ring too
        rings = 2 if BACKEND[0] == "xen" else 1
        assert f"connections taken over ({rings} rings)" in log
        assert not (py_daemon.directory / "state_dump").exists()
    finally:
        scene.close()


def test_pyxenstore_control_drives_it_too(py_daemon: RunningDaemon) -> None:
    with Client(str(py_daemon.socket)) as client:
        client.write("/a", b"1")
        client.watch("/a", "t")
        client.wait_watch(TIMEOUT)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyxenstored",
                "control",
                "live-update",
                "-t",
                "5",
                str(PYXENSTORED),
            ],
            env=py_daemon.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        client.write("/a", b"2")
        assert client.wait_watch(TIMEOUT).path == "/a"
        assert client.read("/a") == b"2"


def test_twice_in_a_row(py_daemon: RunningDaemon) -> None:
    with Client(str(py_daemon.socket)) as client:
        client.write("/x", b"1")
        for i in range(2):
            done = live_update(py_daemon.env, PYXENSTORED)
            assert done.returncode == 0, done.stderr
            client.write("/x", str(i).encode())
        assert client.read("/x") == b"1"
    assert py_daemon.alive()


def test_a_domain_that_died_during_the_update_is_cleaned_up(
    py_daemon: RunningDaemon,
) -> None:
    """The new program looks at which domains still live (C's check_domains)."""
    host = HostDir(str(py_daemon.directory))
    wrapper = py_daemon.directory / "kill-guest.sh"
    wrapper.write_text(
        f'#!/bin/sh\n: > {py_daemon.directory}/dying-{DOMID}\nexec {PYXENSTORED} "$@"\n'
    )
    wrapper.chmod(0o755)
    with Client(str(py_daemon.socket)) as tool:
        Toolstack(tool, host).create_domain(DOMID)
        tool.watch("@releaseDomain", "rel")
        tool.wait_watch(TIMEOUT)
        done = live_update(py_daemon.env, wrapper)
        assert done.returncode == 0, done.stderr
        assert tool.wait_watch(TIMEOUT).path == "@releaseDomain"
        assert not tool.is_domain_introduced(DOMID)
        assert not tool.exists(f"{HOME}/data")  # the guest's own nodes went


def test_forked_daemon_with_a_pid_file(short_tmp: Path) -> None:
    """As Debian starts it: forked, with a pid file, which stays valid."""
    pid_file = short_tmp / "xenstored.pid"
    socket = short_tmp / "socket"
    subprocess.run(
        [str(PYXENSTORED), "--socket", str(socket), "--pid-file", str(pid_file)],
        check=True,
        timeout=30,
    )
    pid = int(pid_file.read_text())
    env = {**os.environ, "XENSTORED_PATH": str(socket)}
    try:
        with Client(str(socket)) as client:
            client.write("/f", b"1")
            done = live_update(env, PYXENSTORED)
            assert done.returncode == 0, done.stderr
            assert client.read("/f") == b"1"
        assert int(pid_file.read_text()) == pid
        # the new program holds the pid file's lock: a second start does nothing
        again = subprocess.run(
            [str(PYXENSTORED), "--socket", str(socket), "--pid-file", str(pid_file)],
            timeout=30,
            check=False,
        )
        assert again.returncode == 0
        assert int(pid_file.read_text()) == pid
    finally:
        os.kill(pid, 15)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


# -- refusals: an update that cannot happen changes nothing -----------------------


def _still_serving(daemon: RunningDaemon, client: Client) -> None:
    """The old connection works, its watch fires, and the tree is intact."""
    client.write("/keep/b", b"after")
    assert client.wait_watch(TIMEOUT).path == "/keep/b"
    assert client.read("/keep/a") == b"before"
    assert daemon.alive()
    assert not (daemon.directory / "state_dump").exists()


@pytest.fixture
def watched(py_daemon: RunningDaemon) -> Iterator[Client]:
    with Client(str(py_daemon.socket)) as client:
        client.write("/keep/a", b"before")
        client.watch("/keep", "k")
        client.wait_watch(TIMEOUT)
        yield client


def test_missing_binary(py_daemon: RunningDaemon, watched: Client) -> None:
    done = live_update(py_daemon.env, py_daemon.directory / "nothing-here")
    assert done.returncode != 0
    assert "File not accessible." in done.stderr
    _still_serving(py_daemon, watched)


def test_binary_not_executable(py_daemon: RunningDaemon, watched: Client) -> None:
    plain = py_daemon.directory / "plain"
    plain.write_text("#!/bin/sh\n")
    done = live_update(py_daemon.env, plain)
    assert done.returncode != 0
    assert "File not executable." in done.stderr
    _still_serving(py_daemon, watched)


def test_state_cannot_be_written(py_daemon: RunningDaemon, watched: Client) -> None:
    # The state goes to /dev/full: the write fails with ENOSPC (disk full).
    (py_daemon.directory / "state_dump").symlink_to("/dev/full")
    done = live_update(py_daemon.env, PYXENSTORED)
    assert done.returncode != 0
    assert "Dump write error" in done.stderr
    assert "No space left on device" in done.stderr
    _still_serving(py_daemon, watched)


def test_exec_fails(py_daemon: RunningDaemon, watched: Client) -> None:
    garbage = py_daemon.directory / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program\n")
    garbage.chmod(0o755)
    done = live_update(py_daemon.env, garbage)
    assert done.returncode != 0
    assert "Error activating new binary" in done.stderr
    _still_serving(py_daemon, watched)
    # the VIRQ and the event channel still work: a guest comes and goes
    host = HostDir(str(py_daemon.directory))
    Toolstack(watched, host).create_domain(7)
    with Client(transport=GuestRing(str(py_daemon.directory), 7)) as guest:
        guest.write("/local/domain/7/data/x", b"1")
    assert watched.read("/local/domain/7/data/x") == b"1"


def test_a_quiesced_domain_blocks_the_update_even_forced(
    py_daemon: RunningDaemon, watched: Client
) -> None:
    Toolstack(watched, HostDir(str(py_daemon.directory))).create_domain(DOMID)
    watched.quiesce(DOMID)
    for force in ((), ("-F",)):
        done = live_update(py_daemon.env, PYXENSTORED, *force, timeout=1)
        assert done.returncode != 0
        assert f"Domain {DOMID}: quiesced for migration" in done.stderr
    _still_serving(py_daemon, watched)


def test_a_client_not_reading_blocks_the_update_and_is_closed_when_forced(
    py_daemon: RunningDaemon, watched: Client
) -> None:
    watched.write("/keep/big", b"x" * 3000)
    assert watched.wait_watch(TIMEOUT).path == "/keep/big"
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(str(py_daemon.socket))
    try:
        # Replies pile up: more than the kernel takes, so asyncio holds some.
        lazy.sendall(Raw(UnixTransport(lazy)).frame(Op.READ, "/keep/big")[1] * 400)
        time.sleep(0.5)
        done = live_update(py_daemon.env, PYXENSTORED, timeout=1)
        assert done.returncode != 0
        assert "bytes not sent" in done.stderr
        _still_serving(py_daemon, watched)
        done = live_update(py_daemon.env, PYXENSTORED, "-F", timeout=1)
        assert done.returncode == 0, done.stderr
        # Its connection was closed, not carried over with a message cut
        # short: it reads replies (the last one possibly cut where the
        # kernel's buffer ended), then the end of the stream.
        lazy.settimeout(TIMEOUT)
        received = b""
        while chunk := lazy.recv(65536):
            received += chunk
        pos = replies = 0
        while len(received) - pos >= HEADER.size:
            op, _req, _tx, length = HEADER.unpack_from(received, pos)
            assert op == Op.READ
            pos += HEADER.size + length
            replies += 1
        assert 0 < replies < 400
    finally:
        lazy.close()
    watched.write("/keep/b", b"after")
    assert watched.wait_watch(TIMEOUT).path == "/keep/b"


def test_open_transaction_refuses_then_forced(
    py_daemon: RunningDaemon, watched: Client
) -> None:
    with Client(str(py_daemon.socket)) as holder:
        tx = holder.transaction_start()
        holder.write("/keep/in-tx", b"1", tx)
        done = live_update(py_daemon.env, PYXENSTORED, timeout=1)
        assert done.returncode != 0
        assert "Domains with long running transactions:" in done.stderr
        _still_serving(py_daemon, watched)
        # -F: the update proceeds; the transaction can only end in EAGAIN
        done = live_update(py_daemon.env, PYXENSTORED, "-F", timeout=1)
        assert done.returncode == 0, done.stderr
        with pytest.raises(TransactionConflict):
            holder.transaction_end(tx)
        assert not watched.exists("/keep/in-tx")
        # and the connection goes on normally
        holder.write("/keep/c", b"3")
        assert holder.read("/keep/c") == b"3"


def test_abort_answers_and_runs_the_parked_request(py_daemon: RunningDaemon) -> None:
    socket = str(py_daemon.socket)
    with Client(socket) as holder:
        holder_tx = holder.transaction_start()
        lu = Raw(UnixTransport.connect(socket))
        late = Raw(UnixTransport.connect(socket))
        other = Raw(UnixTransport.connect(socket))
        try:
            req = lu.send(Op.CONTROL, "live-update", "-f", str(PYXENSTORED))
            assert _ok(lu, req) == b"OK\0"
            # only the connection that opened the session may start it
            req = other.send(Op.CONTROL, "live-update", "-s")
            assert _ok(other, req) == b"Not in live-update session.\0"
            started = lu.send(Op.CONTROL, "live-update", "-s", "-t", "30")
            time.sleep(0.2)
            parked = late.send(Op.TRANSACTION_START, "")
            with pytest.raises(TimeoutError):
                late.reply(parked, timeout=0.5)
            # the holder is not held back: it has a transaction open
            holder.write("/a", b"1", holder_tx)
            req = other.send(Op.CONTROL, "live-update", "-a")
            assert _ok(other, req) == b"OK\0"
            assert _ok(lu, started) == b"Cancellation was requested\0"
            assert int(_ok(late, parked).rstrip(b"\0")) > 0
            holder.transaction_end(holder_tx)
            assert holder.read("/a") == b"1"
        finally:
            for raw in (lu, late, other):
                raw.transport.close()
    assert py_daemon.alive()


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (b"xenstore\0\0\0\x01\0\0\0\0garbage", "bad xenstore state stream: at byte"),
        (None, "cannot read the saved state"),
    ],
    ids=["corrupt", "missing"],
)
def test_a_state_it_cannot_read_is_refused_on_start(
    short_tmp: Path, state: bytes | None, why: str
) -> None:
    if state is not None:
        (short_tmp / "state_dump").write_bytes(state)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxenstored.cli.xenstored",
            "-N",
            "-U",
            "--socket",
            str(short_tmp / "socket"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XENSTORED_RUNDIR": str(short_tmp)},
    )
    assert out.returncode == 1
    assert why in out.stderr
    # one line says why (the log lines before it are INFO)
    assert out.stderr.strip().splitlines()[-1].startswith("pyxenstored: ")
    assert not (short_tmp / "socket").exists()


def test_update_into_a_program_that_finds_the_state_corrupt(short_tmp: Path) -> None:
    """The new program exits non-zero rather than serve an empty tree."""
    daemon = RunningDaemon(short_tmp, [])
    wrapper = short_tmp / "corrupt.sh"
    state = short_tmp / "state_dump"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"printf 'xenstore\\0\\0\\0\\3\\0\\0\\0\\0' > {state}\n"
        f'exec {PYXENSTORED} "$@"\n'
    )
    wrapper.chmod(0o755)
    try:
        with Client(str(daemon.socket)) as client:
            client.write("/a", b"1")
        live_update(daemon.env, wrapper)
        daemon.proc.wait(20)
        assert daemon.proc.returncode == 1
        assert "bad xenstore state stream: at byte 8" in _log(daemon)
    finally:
        daemon.stop()


# -- a cold start from a saved state ------------------------------------------------


def capture_state(daemon_env: dict[str, str], directory: Path, binary: Path) -> Path:
    """Live-update into a wrapper that keeps a copy of the state."""
    saved = directory / "saved.state"
    wrapper = directory / "keep.sh"
    wrapper.write_text(
        f'#!/bin/sh\ncp {directory}/state_dump {saved}\nexec {binary} "$@"\n'
    )
    wrapper.chmod(0o755)
    done = live_update(daemon_env, wrapper)
    assert done.returncode == 0, done.stderr
    return saved


def test_restore_cold_start(py_daemon: RunningDaemon, short_tmp: Path) -> None:
    with Client(str(py_daemon.socket)) as client:
        client.write("/cold/a", b"1")
        client.set_perms("/cold/a", ["n0", "r5"])
        client.set_quota("nodes", 77)
    saved = capture_state(py_daemon.env, py_daemon.directory, PYXENSTORED)
    before = _tree(py_daemon.socket)
    other = short_tmp / "other"
    other.mkdir()
    restored = RunningDaemon(other, ["--restore", str(saved)])
    try:
        assert _tree(restored.socket) == before
        with Client(str(restored.socket)) as client:
            assert client.get_quota("nodes") == 77
    finally:
        assert restored.stop() == 0


def test_restore_refuses_a_bad_file(short_tmp: Path) -> None:
    bad = short_tmp / "bad"
    bad.write_bytes(b"not a stream at all")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxenstored.cli.xenstored",
            "-N",
            "--socket",
            str(short_tmp / "socket"),
            "--restore",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "bad xenstore state stream: at byte 0" in out.stderr


# -- with C xenstored --------------------------------------------------------------


def _c_env(directory: Path) -> dict[str, str]:
    return {
        **os.environ,
        "XENSTORED_PATH": str(directory / "socket"),
        "XENSTORED_RUNDIR": str(directory),
    }


def test_c_to_py(short_tmp: Path) -> None:
    c = CDaemon(short_tmp / "c", [])
    directory = short_tmp / "c"
    try:
        scene = Scene(c.socket, directory)
        try:
            done = update_with_scene(scene, _c_env(directory), PYXENSTORED)
            assert done.returncode == 0, done.stderr
            os.kill(c.pid, 0)  # the same process, now running our program
            cmdline = Path(f"/proc/{c.pid}/cmdline").read_bytes().split(b"\0")
            assert any(b"pyxenstored" in part for part in cmdline), cmdline
            assert b"-U" in cmdline
            scene.check()
        finally:
            scene.close()
    finally:
        c.stop()


class PyOnShim:
    """pyxenstored on the Xen library backend under the shim, as C runs."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.socket = directory / "socket"
        self.env = {
            **_c_env(directory),
            "LD_PRELOAD": str(SHIM),
            "XS_SHIM_DIR": str(directory),
        }
        self.log = open(directory / "xenstored.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(PYXENSTORED),
                "-N",
                "--hypervisor",
                "xen",
                "--event-loop",
                EVENT_LOOP[0],
            ],
            env=self.env,
            stdout=self.log,
            stderr=self.log,
        )
        wait_for_socket(self.socket, self.proc)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def test_py_to_c_and_back(short_tmp: Path) -> None:
    daemon = PyOnShim(short_tmp / "p")
    try:
        scene = Scene(daemon.socket, daemon.directory)
        try:
            env = daemon.env
            done = update_with_scene(scene, env, C_XENSTORED, "-c", "-N")
            assert done.returncode == 0, done.stderr
            assert daemon.proc.poll() is None
            cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
            assert cmdline.split(b"\0")[0] == str(C_XENSTORED).encode()
            scene.check()
            # and back to pyxenstored, which C starts with its own arguments
            before = _tree(daemon.socket)
            done = live_update(env, PYXENSTORED)
            assert done.returncode == 0, done.stderr
            assert daemon.proc.poll() is None
            assert _tree(daemon.socket) == before
            scene.tool.write("/lu/watched", b"2")
            assert scene.dom0.event("dom0tok") == "/lu/watched"
            scene.tool.write("/lu/shared", b"again")
            assert scene.guest.event("guesttok") == "/lu/shared"
        finally:
            scene.close()
    finally:
        daemon.stop()


def test_py_writes_what_c_reads(short_tmp: Path) -> None:
    """Our state, read back by our codec: C's record order (MIGRATION.md b.6)."""
    daemon = PyOnShim(short_tmp / "p")
    try:
        with Client(str(daemon.socket)) as client:
            client.write("/o/a", b"1")
            client.watch("/o", "tok")
            client.wait_watch(TIMEOUT)
            saved = capture_state(daemon.env, daemon.directory, PYXENSTORED)
            stream = decode_state(saved.read_bytes())
            assert stream.version == 1
            conns = [r for r in stream.records if isinstance(r, ConnectionData)]
            assert conns[0].domid == 0
            assert conns[0].conn_type == 0
            nodes = [r.path for r in stream.records if isinstance(r, NodeData)]
            assert nodes[0] == "/"
            assert nodes[-2:] == ["@releaseDomain", "@introduceDomain"]
            client.write("/o/b", b"2")
            assert client.wait_watch(TIMEOUT).path == "/o/b"
    finally:
        daemon.stop()


def test_guest_permissions_survive_into_c(short_tmp: Path) -> None:
    """After py -> C, C enforces the permissions we carried."""
    daemon = PyOnShim(short_tmp / "p")
    try:
        with Client(str(daemon.socket)) as tool:
            Toolstack(tool, HostDir(str(daemon.directory))).create_domain(DOMID)
            tool.write("/secret", b"s")
            done = live_update(daemon.env, C_XENSTORED, "-c", "-N")
            assert done.returncode == 0, done.stderr
            with Client(transport=GuestRing(str(daemon.directory), DOMID)) as guest:
                with pytest.raises(PermissionDenied):
                    guest.read("/secret")
                assert guest.read(f"{HOME}/name") != b""
    finally:
        daemon.stop()
