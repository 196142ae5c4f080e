"""Start-up as a drop-in for C xenstored: fork, pid file, readiness.

Every test runs the real ``pyxenstored`` command.  Without ``-N`` it
forks: the process the test starts is only the parent, which must exit
once the daemon serves; the daemon itself is then found through ``-P`` or
the pid file, and stopped by the ``launched`` fixture.  Debian's C
xenstored (under the peers' shim) is the oracle for the pid-file lock and
for the nodes a fresh store holds.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EVENT_LOOP, PEERS, CDaemon

DAEMON = [sys.executable, "-m", "pyxenstored.cli.xenstored"]


def run(
    *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the daemon command to its (parent's) exit."""
    return subprocess.run(
        [*DAEMON, "--event-loop", EVENT_LOOP[0], *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def answers(path: Path) -> bool:
    """Whether ``path`` accepts a connection right now (no waiting)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def state(pid: int) -> str | None:
    """The process's state letter (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


def running(pid: int) -> bool:
    return state(pid) not in (None, "Z")


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def lock_holder(path: Path) -> int | None:
    """The pid holding a POSIX lock on ``path``, from ``/proc/locks``."""
    st = path.stat()
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if fields[1] == "POSIX" and fields[5] == device:
            return int(fields[4])
    return None


@pytest.fixture
def launched() -> Iterator[list[int]]:
    """Pids of forked daemons, stopped at the end of the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not running(pid):
            continue
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"pyxenstored.cli.xenstored" not in cmdline:
            continue  # long gone, and the pid reused
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid):
            os.kill(pid, signal.SIGKILL)


def start(directory: Path, launched: list[int], *extra: str) -> int:
    """Start a forked daemon serving ``directory/socket``; its pid."""
    out = run(
        "--socket", str(directory / "socket"),
        "--log-file", str(directory / "daemon.log"),
        "-P", *extra,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (0, ""), out
    pid = int(out.stdout)
    launched.append(pid)
    return pid


def test_the_parent_exits_0_once_the_daemon_serves(
    short_tmp: Path, launched: list[int]
) -> None:
    pid = start(short_tmp, launched, "--pid-file", str(short_tmp / "pid"))
    assert answers(short_tmp / "socket")  # at once: no waiting needed
    assert running(pid)
    assert os.getsid(pid) == pid  # setsid: its own session
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/cwd") == "/"


def test_the_pid_file_holds_the_daemon_s_pid_and_is_locked(
    short_tmp: Path, launched: list[int]
) -> None:
    pid_file = short_tmp / "pid"
    pid = start(short_tmp, launched, "--pid-file", str(pid_file))
    assert pid_file.read_text() == f"{pid}\n"
    assert lock_holder(pid_file) == pid
    with open(pid_file, "r+b") as f, pytest.raises(OSError, match="Resource"):
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_stale_pid_file_is_taken_over(short_tmp: Path, launched: list[int]) -> None:
    pid_file = short_tmp / "pid"
    pid_file.write_text("999999999 left by a killed daemon\n")
    pid = start(short_tmp, launched, "--pid-file", str(pid_file))
    assert pid_file.read_text() == f"{pid}\n"


@pytest.mark.parametrize("fork", [True, False])
def test_a_second_daemon_on_the_same_pid_file_exits_0(
    short_tmp: Path, launched: list[int], fork: bool
) -> None:
    pid_file = short_tmp / "pid"
    first = start(short_tmp, launched, "--pid-file", str(pid_file))
    second = run(
        "--socket", str(short_tmp / "other"), "--pid-file", str(pid_file), "-P",
        *([] if fork else ["-N"]),
    )  # fmt: skip
    assert (second.returncode, second.stdout) == (0, "")
    said = [line for line in second.stderr.splitlines() if "pid file" in line]
    assert len(said) == 1
    assert f"another daemon (pid {first}) holds the pid file {pid_file}" in said[0]
    assert not (short_tmp / "other").exists()
    assert pid_file.read_text() == f"{first}\n"
    assert answers(short_tmp / "socket")


def test_c_xenstored_does_not_start_on_our_pid_file(
    short_tmp: Path, launched: list[int]
) -> None:
    pid_file = short_tmp / "pid"
    start(short_tmp, launched, "--pid-file", str(pid_file))
    # C xenstored with the peers' shim, as start-c-xenstored.sh runs it.
    rundir = short_tmp / "c"
    rundir.mkdir()
    binaries = subprocess.run(
        ["sh", str(PEERS / "get-xen-binaries.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.strip()
    env = {
        **os.environ,
        "XS_SHIM_DIR": str(rundir),
        "XENSTORED_RUNDIR": str(rundir),
        "XENSTORED_PATH": str(rundir / "socket"),
        "LD_PRELOAD": "/tmp/peers/build/libxenshim.so",
    }
    c = subprocess.run(
        [f"{binaries}/xenstored", "-N", "-F", str(pid_file)],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert c.returncode == 0
    assert not (rundir / "socket").exists()


def test_we_do_not_start_on_a_running_c_xenstored(short_tmp: Path) -> None:
    # C 4.17 closes its pid file once written, which drops its lock: the
    # socket is what stops us, and C's pid file is left as it was.
    pid_file = short_tmp / "cpid"
    theirs = CDaemon(short_tmp / "c", ["-F", str(pid_file)])
    try:
        assert lock_holder(pid_file) is None
        ours = run(
            "--socket", str(theirs.socket), "-F", str(pid_file),
            "--log-file", str(short_tmp / "log"),
        )  # fmt: skip
        assert ours.returncode == 1
        assert (
            ours.stderr
            == f"pyxenstored: another xenstored is serving {theirs.socket}\n"
        )
        assert pid_file.read_text() == f"{theirs.pid}\n"
    finally:
        theirs.stop()


def test_a_failed_start_leaves_another_daemon_s_pid_file_alone(
    short_tmp: Path,
) -> None:
    (short_tmp / "socket").mkdir()
    (short_tmp / "pid").write_text("4242\n")
    out = run(
        "--socket", str(short_tmp / "socket"), "--pid-file", str(short_tmp / "pid"),
        "--log-file", str(short_tmp / "log"),
    )  # fmt: skip
    assert out.returncode == 1
    assert (short_tmp / "pid").read_text() == "4242\n"


def test_output_pid_in_the_foreground(short_tmp: Path) -> None:
    with subprocess.Popen(
        [*DAEMON, "-N", "-P", "--socket", str(short_tmp / "socket"),
         "--log-file", str(short_tmp / "log")],
        stdout=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline() == f"{proc.pid}\n".encode()
            assert answers(short_tmp / "socket")  # printed once it serves
        finally:
            proc.terminate()
        assert proc.wait(10) == 0


def _notify_socket(short_tmp: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(20)
    if abstract:
        name = f"pyxs-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        return sock, "@" + name
    sock.bind(str(short_tmp / "notify"))
    return sock, str(short_tmp / "notify")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_is_told_ready_in_the_foreground(
    short_tmp: Path, abstract: bool
) -> None:
    sock, address = _notify_socket(short_tmp, abstract)
    env = {**os.environ, "NOTIFY_SOCKET": address}
    with (
        sock,
        subprocess.Popen(
            [*DAEMON, "-N", "--socket", str(short_tmp / "socket"),
             "--log-file", str(short_tmp / "log")],
            env=env,
        ) as proc,
    ):  # fmt: skip
        try:
            assert sock.recv(4096) == b"READY=1"
            assert answers(short_tmp / "socket")
        finally:
            proc.terminate()
        assert proc.wait(10) == 0


def test_systemd_is_told_ready_and_the_main_pid_when_forked(
    short_tmp: Path, launched: list[int]
) -> None:
    sock, address = _notify_socket(short_tmp, abstract=True)
    with sock:
        out = run(
            "--socket", str(short_tmp / "socket"), "-P",
            "--log-file", str(short_tmp / "log"),
            env={**os.environ, "NOTIFY_SOCKET": address},
        )  # fmt: skip
        assert out.returncode == 0, out
        pid = int(out.stdout)
        launched.append(pid)
        assert sock.recv(4096).split(b"\n") == [b"READY=1", f"MAINPID={pid}".encode()]


def test_a_start_up_failure_in_the_child_fails_the_parent(short_tmp: Path) -> None:
    (short_tmp / "socket").mkdir()
    out = run(
        "--socket", str(short_tmp / "socket"), "--pid-file", str(short_tmp / "pid"),
        "--log-file", str(short_tmp / "log"), "-P",
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"pyxenstored: {short_tmp}/socket exists and is not a socket\n"
    assert not (short_tmp / "pid").exists()


def test_a_bad_pid_file_fails_in_one_line(short_tmp: Path) -> None:
    out = run(
        "--socket", str(short_tmp / "socket"), "--log-file", str(short_tmp / "log"),
        "--pid-file", str(short_tmp / "missing" / "pid"),
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("pyxenstored: cannot use the pid file ")
    assert not (short_tmp / "socket").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-such-option"],
        ["--master-domid", "zero"],
        ["-I", "maybe"],
        ["--hypervisor", "kvm"],
        ["-Q", "nodes"],
    ],
)
def test_bad_input_is_one_line_and_status_2(argv: list[str]) -> None:
    out = run(*argv)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("pyxenstored: ")
    assert "Traceback" not in out.stderr


def test_sigterm_removes_the_pid_file_and_the_socket(
    short_tmp: Path, launched: list[int]
) -> None:
    pid = start(short_tmp, launched, "--pid-file", str(short_tmp / "pid"))
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    assert not (short_tmp / "pid").exists()
    assert not (short_tmp / "socket").exists()
    assert "stopping" in (short_tmp / "daemon.log").read_text()


def test_c_only_options_are_accepted(short_tmp: Path, launched: list[int]) -> None:
    start(short_tmp, launched, "-R", "-I", "off", "-K", "-D", "--master-domid", "0")
    log = (short_tmp / "daemon.log").read_text()
    assert "-K/--keep-orphans is ignored" in log
    assert answers(short_tmp / "socket")


def test_a_fresh_store_holds_what_c_xenstored_s_holds(
    short_tmp: Path, launched: list[int], c_xenstored: CDaemon
) -> None:
    start(short_tmp, launched)

    def listing(path: Path) -> str:
        return subprocess.run(
            ["xenstore-ls", "-p", "/"],
            env={**os.environ, "XENSTORED_PATH": str(path)},
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    ours = listing(short_tmp / "socket")
    assert ours == listing(c_xenstored.socket)
    assert [line.split(" = ")[0].strip() for line in ours.splitlines()] == [
        "tool",
        "xenstored",
    ]
