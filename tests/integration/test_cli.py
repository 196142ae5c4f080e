"""``pyxenstore`` side by side with Debian's xenstore-utils 4.17.

Every sub-command and flag is run twice on the same daemon state: once as
the real ``xenstore-<mode>`` tool (``xenstore-control`` for ``control``)
and once as ``pyxenstore <mode>``; stdout and the exit status must be
identical.  Read-only cases run against both pyxenstored and C xenstored.
Commands that change the store run on twin subtrees (``/real`` for the C
tool, ``/ours`` for ours) whose resulting contents are then compared.
"""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyxenstored.cli.xenstore import main, sanitise, unsanitise
from pyxenstored.client import Client
from tests.conftest import CDaemon, RunningDaemon

XENSTORE_CONTROL = "/tmp/peers/xenroot/usr/lib/xen-4.17/bin/xenstore-control"
OURS = [sys.executable, "-m", "pyxenstored"]

Server = RunningDaemon | CDaemon


@dataclass(frozen=True)
class Run:
    status: int
    out: bytes
    err: bytes


def real_argv(mode: str, args: Sequence[str]) -> list[str]:
    tool = XENSTORE_CONTROL if mode == "control" else f"xenstore-{mode}"
    return [tool, *args]


def run_real(server: Server, mode: str, *args: str) -> Run:
    proc = subprocess.run(
        real_argv(mode, args),
        env=server.env,
        capture_output=True,
        timeout=20,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_ours(
    capsysbinary: pytest.CaptureFixture[bytes], server: Server, mode: str, *args: str
) -> Run:
    status = main(["--socket", str(server.socket), mode, *args])
    out, err = capsysbinary.readouterr()
    return Run(status, out, err)


def run_ours_process(server: Server, mode: str, *args: str) -> Run:
    proc = subprocess.run(
        [*OURS, mode, *args],
        env=server.env,
        capture_output=True,
        timeout=20,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def side_by_side(
    capsysbinary: pytest.CaptureFixture[bytes], server: Server, mode: str, *args: str
) -> tuple[Run, Run]:
    real, ours = (
        run_real(server, mode, *args),
        run_ours(capsysbinary, server, mode, *args),
    )
    assert (ours.status, ours.out) == (real.status, real.out), (real.err, ours.err)
    assert bool(ours.err) == bool(real.err), (real.err, ours.err)
    return real, ours


def twin(
    capsysbinary: pytest.CaptureFixture[bytes],
    server: Server,
    mode: str,
    *template: str,
) -> tuple[Run, Run]:
    """Run ``mode`` with ``{R}`` in the arguments as /real (C tool) and
    /ours (ours); outputs and the two subtrees must then be the same."""
    real = run_real(server, mode, *(a.replace("{R}", "/real") for a in template))
    ours = run_ours(
        capsysbinary, server, mode, *(a.replace("{R}", "/ours") for a in template)
    )
    assert ours.status == real.status, (template, real.err, ours.err)
    assert ours.out.replace(b"/ours", b"/R") == real.out.replace(b"/real", b"/R")
    assert bool(ours.err) == bool(real.err), (real.err, ours.err)
    assert dump(server, "/ours") == dump(server, "/real"), template
    return real, ours


def dump(server: Server, root: str) -> list[tuple[str, bytes, list[str]]]:
    """Every node under ``root``: relative path, value, permissions."""
    out: list[tuple[str, bytes, list[str]]] = []
    with Client(str(server.socket)) as xs:
        if not xs.exists(root):
            return out

        def walk(path: str) -> None:
            rel = path[len(root) :]
            out.append((rel, xs.read(path), [str(p) for p in xs.get_perms(path)]))
            for name in xs.directory(path):
                walk(f"{path}/{name}")

        walk(root)
    return out


def populate(server: Server) -> None:
    with Client(str(server.socket)) as xs:
        xs.write("/a/b", b"hello")
        xs.write("/a/c", b"")
        xs.write("/a/d/e", b"x\ty\\z\n\r")
        xs.write("/long/" + "n" * 85, b"v")
        xs.write("/long/k", b"0123456789" * 10)
        for width in (68, 69, 70, 71):
            xs.write(f"/long/w{width}", b"7" * width)
        xs.write("/bin/all", bytes(range(256))[:200])
        xs.write("/bin/high", bytes(range(128, 256)))
        xs.write("/bin/nul", b"a\0b")
        xs.write("/local/domain/0/rel", b"relative")
        xs.write("/perms/x", b"1")
        xs.set_perms("/perms/x", ["n0", "r5", "b7"])
        xs.set_perms("/perms", ["w0"])
        for i in range(40):
            xs.write(f"/many/c{i:02d}", b"%d" % i)


def _tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="pyxs-", dir="/tmp"))


@pytest.fixture(scope="module", params=["pyxenstored", "c-xenstored"])
def tree(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A populated daemon shared by the read-only tests of this module."""
    directory = _tmpdir()
    server: Server
    if request.param == "pyxenstored":
        server = RunningDaemon(directory, [])
    else:
        server = CDaemon(directory / "c", [])
    try:
        populate(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- read-only modes, on both daemons --

LS_CASES = [
    [],
    ["-p"],
    ["-f"],
    ["-fp"],
    ["/a"],
    ["-p", "/long"],
    ["/long", "-p"],
    ["--flat", "--prefix", "/perms"],
    ["-s", "/bin"],
    ["/a", "/bin"],
    ["/nonexistent"],
    ["rel-missing"],
    ["-h"],
    ["-t"],
    ["-pf", "/"],
]


@pytest.mark.parametrize("args", LS_CASES, ids=" ".join)
def test_ls(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server, args: list[str]
) -> None:
    side_by_side(capsysbinary, tree, "ls", *args)


READ_CASES = [
    ["/a/b", "/bin/all"],
    ["/bin/high"],
    ["/bin/nul"],
    ["-p", "/a/b", "/a/c"],
    ["-R", "/bin/all"],
    ["-pR", "/a/b", "/a/d/e"],
    ["--raw", "--prefix", "/bin/nul"],
    ["/a/b", "/nonexistent", "/a/c"],
    ["/nonexistent"],
    ["bad path"],
    ["/a/b/"],
    ["rel"],
    [],
    ["-h"],
    ["-f", "/a"],
    ["/a/b", "-p"],
    ["--", "-p"],
    ["-s", "/a/b"],
]


@pytest.mark.parametrize("args", READ_CASES, ids=" ".join)
def test_read(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server, args: list[str]
) -> None:
    side_by_side(capsysbinary, tree, "read", *args)


@pytest.mark.parametrize(
    "args",
    [
        ["/a"],
        ["/a", "/nonexistent"],
        ["/a", "/a/b", "rel"],
        ["-p", "/a"],
        [],
        ["bad"],
        ["-s", "/a"],
    ],
    ids=" ".join,
)
def test_exists(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server, args: list[str]
) -> None:
    side_by_side(capsysbinary, tree, "exists", *args)


@pytest.mark.parametrize(
    "args",
    [
        ["/a"],
        ["-p", "/a", "/"],
        ["/a", "/nonexistent", "/a/d"],
        ["-p", "rel-missing"],
        ["/many"],
        ["-s", "/a/d"],
        [],
        ["-R", "/a"],
    ],
    ids=" ".join,
)
def test_list(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server, args: list[str]
) -> None:
    side_by_side(capsysbinary, tree, "list", *args)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-h"],
        ["-p", "/a"],
        ["-n", "0", "/a"],
        ["-n", "x", "/a"],
        ["-n", "-5", "/a"],
        ["bad path"],
    ],
    ids=" ".join,
)
def test_watch_without_events(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server, args: list[str]
) -> None:
    side_by_side(capsysbinary, tree, "watch", *args)


@pytest.mark.parametrize(
    "args",
    [["help"], ["print", "side by side"], ["bogus"], ["log"], ["quota", "70"]],
    ids=" ".join,
)
def test_control(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server, args: list[str]
) -> None:
    real, ours = side_by_side(capsysbinary, tree, "control", *args)
    if real.status == 3:  # the error messages are the real tool's words
        assert ours.err == real.err


def test_control_usage(
    capsysbinary: pytest.CaptureFixture[bytes], tree: Server
) -> None:
    real = run_real(tree, "control")
    ours = run_ours(capsysbinary, tree, "control")
    assert (ours.status, ours.out) == (real.status, real.out) == (2, b"")
    assert ours.err.startswith(b"Usage:\n")


@pytest.mark.parametrize("columns", [40, 100, 9, 0])
def test_ls_truncates_to_terminal_width(tree: Server, columns: int) -> None:
    real = on_terminal(real_argv("ls", ["-p"]), tree.env, columns)
    ours = on_terminal([*OURS, "ls", "-p"], tree.env, columns)
    assert ours == real
    assert b"(n0)" in ours


def on_terminal(argv: list[str], env: dict[str, str], columns: int) -> bytes:
    """Run with stdout on a pseudo-terminal ``columns`` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdout=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(20) == 0
    return b"".join(chunks)


# -- escaping --

UNSANITISE_CASES = [
    "plain",
    "a\\",
    "\\x41\\x4",
    "\\x 41",
    "\\x-1",
    "\\x0x41",
    "\\xZZ",
    "\\101\\1011\\8\\9",
    "\\777",
    "\\x+f",
    "\\q\\\\",
    "\\t\\n\\r",
    "\\x  4",
    "\\x4g",
    "\\x-Z",
    "\\x",
    "é\\é",
]


@pytest.mark.parametrize("spec", UNSANITISE_CASES)
def test_unsanitise_matches_xenstore_write(daemon: RunningDaemon, spec: str) -> None:
    subprocess.run(
        ["xenstore-write", "/u", spec], env=daemon.env, check=True, timeout=10
    )
    with Client(str(daemon.socket)) as xs:
        assert xs.read("/u") == unsanitise(os.fsencode(spec))


def test_sanitise_matches_xenstore_read(daemon: RunningDaemon) -> None:
    with Client(str(daemon.socket)) as xs:
        xs.write("/s", bytes(range(256))[:255])
    out = subprocess.run(
        ["xenstore-read", "/s"],
        env=daemon.env,
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    assert out == sanitise(bytes(range(256))[:255]) + b"\n"


# -- commands that change the store (twin subtrees) --


def test_write(
    capsysbinary: pytest.CaptureFixture[bytes], daemon: RunningDaemon
) -> None:
    t = twin
    t(capsysbinary, daemon, "write", "{R}/a", "1")
    t(capsysbinary, daemon, "write", "{R}/a", "1", "{R}/b")  # odd: usage
    t(capsysbinary, daemon, "write", "{R}/a")
    t(capsysbinary, daemon, "write")
    t(capsysbinary, daemon, "write", "{R}/p/x", "1", "{R}/p/y", "\\t\\x41")
    t(capsysbinary, daemon, "write", "{R}/q", "1", "bad path", "2")  # aborted: no /q
    t(capsysbinary, daemon, "write", "{R}/q/", "1")
    t(capsysbinary, daemon, "write", "-R", "{R}/raw", "\\x41\\")
    t(capsysbinary, daemon, "write", "--raw", "{R}/raw2", "é")
    t(capsysbinary, daemon, "write", "{R}/esc", "\\001\\n\\x7f\\\\a\\")
    t(capsysbinary, daemon, "write", "{R}/big", "x" * 5000)
    t(capsysbinary, daemon, "write", "-p", "{R}/a", "1")
    t(capsysbinary, daemon, "write", "{R}/a", "-s", "2")
    assert len(dump(daemon, "/ours")) == 8


def test_rm(capsysbinary: pytest.CaptureFixture[bytes], daemon: RunningDaemon) -> None:
    with Client(str(daemon.socket)) as xs:
        for root in ("/real", "/ours"):
            xs.write(f"{root}/t/a/b/c", b"1")
            xs.write(f"{root}/t/a/v", b"1")
            xs.write(f"{root}/t/keep", b"value")
            xs.write(f"{root}/t/keep/x/y", b"")
            xs.write(f"{root}/t/one", b"")
            xs.write(f"{root}/t/two", b"")
    t = twin
    t(capsysbinary, daemon, "rm", "{R}/t/nonexistent")
    t(capsysbinary, daemon, "rm", "{R}/nonexistent/x")
    t(capsysbinary, daemon, "rm", "bad path")
    t(capsysbinary, daemon, "rm")
    t(capsysbinary, daemon, "rm", "-t", "{R}/t/a/b/c")
    t(capsysbinary, daemon, "rm", "--tidy", "{R}/t/keep/x/y")
    t(capsysbinary, daemon, "rm", "{R}/t/one", "{R}/nonexistent/x")  # aborted
    t(capsysbinary, daemon, "rm", "{R}/t/one", "{R}/t/two")
    t(capsysbinary, daemon, "rm", "-t", "{R}/t/a/v")
    t(capsysbinary, daemon, "rm", "-p", "{R}/t")
    assert [path for path, _, _ in dump(daemon, "/ours")] == ["", "/t", "/t/keep"]


def test_rm_root_and_tidy_to_the_top(
    capsysbinary: pytest.CaptureFixture[bytes], daemon: RunningDaemon
) -> None:
    side_by_side(capsysbinary, daemon, "rm", "/")
    with Client(str(daemon.socket)) as xs:
        xs.write("/solo/x", b"")
    run_real(daemon, "rm", "-t", "/solo/x")
    with Client(str(daemon.socket)) as xs:
        assert not xs.exists("/solo")
        xs.write("/solo/x", b"")
    assert run_ours(capsysbinary, daemon, "rm", "-t", "/solo/x").status == 0
    with Client(str(daemon.socket)) as xs:
        assert not xs.exists("/solo")
        assert xs.exists("/tool")


CHMOD_CASES = [
    ["{R}/a/b", "n0", "r5"],
    ["-r", "{R}/a", "b0", "r3"],
    ["-u", "{R}/a/b/c", "w0"],
    ["--recurse", "--upto", "{R}/a/b", "r0"],
    ["{R}/a/b", "x1"],
    ["{R}/a/b"],
    ["{R}/a/b", "r"],
    ["{R}/a/b", "n0", "rabc"],
    ["{R}/a/b", "n0x", "r0x10", "r010", "r+3", "r12abc"],
    ["{R}/a/b", "n0", "r4294967296"],
    ["{R}/nonexistent", "n0"],
    ["{R}/a/b", ""],
    [],
    ["-p", "{R}/a", "n0"],
    ["-u", "rel/x", "n0"],
]


def test_chmod(
    capsysbinary: pytest.CaptureFixture[bytes], daemon: RunningDaemon
) -> None:
    with Client(str(daemon.socket)) as xs:
        for root in ("/real", "/ours"):
            xs.write(f"{root}/a/b/c", b"1")
            xs.write(f"{root}/x", b"2")
    for case in CHMOD_CASES:
        twin(capsysbinary, daemon, "chmod", *case)


def test_chmod_real_daemon(
    capsysbinary: pytest.CaptureFixture[bytes], c_xenstored: CDaemon
) -> None:
    with Client(str(c_xenstored.socket)) as xs:
        for root in ("/real", "/ours"):
            xs.write(f"{root}/a/b/c", b"1")
    for case in [*CHMOD_CASES, ["{R}/a/b", "n0", "r-1", "r4294967295"]]:
        twin(capsysbinary, c_xenstored, "chmod", *case)


def test_watch_prints_events(daemon: RunningDaemon) -> None:
    with Client(str(daemon.socket)) as xs:
        xs.write("/real/w", b"")
        xs.write("/ours/w", b"")
    real = subprocess.Popen(
        real_argv("watch", ["-n", "4", "/real/w", "rel/real"]),
        env=daemon.env,
        stdout=subprocess.PIPE,
    )
    ours = subprocess.Popen(
        [*OURS, "watch", "--number", "4", "/ours/w", "rel/ours"],
        env=daemon.env,
        stdout=subprocess.PIPE,
    )
    time.sleep(0.5)  # both registered their watches
    with Client(str(daemon.socket)) as xs:
        for root in ("real", "ours"):
            xs.write(f"/{root}/w/x", b"1")
            xs.write(f"/local/domain/0/rel/{root}", b"1")
            xs.write(f"/{root}/w/not-counted", b"1")
    real_out, _ = real.communicate(timeout=10)
    ours_out, _ = ours.communicate(timeout=10)
    assert (ours.returncode, real.returncode) == (0, 0)
    assert ours_out.replace(b"ours", b"X") == real_out.replace(b"real", b"X")
    assert ours_out == b"/ours/w\nrel/ours\n/ours/w/x\nrel/ours\n"


# -- ours alone: discovery, bad input, broken pipes --


def test_socket_lookup_like_libxenstore(daemon: RunningDaemon) -> None:
    subprocess.run(["xenstore-write", "/found", "it"], env=daemon.env, check=True)
    env = {
        **daemon.env,
        "XENSTORED_PATH": "",
        "XENSTORED_RUNDIR": str(daemon.directory),
    }
    proc = subprocess.run(
        [*OURS, "read", "/found"], env=env, capture_output=True, check=False
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"it\n", b"")
    ours = run_ours_process(daemon, "ls", "-fp", "/found")
    real = run_real(daemon, "ls", "-fp", "/found")
    assert ours == real


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-h"],
        ["frobnicate"],
        ["--socket"],
        ["--bogus", "read", "/a"],
        ["read"],
        ["read", "-x", "/a"],
        ["read", "/nonexistent"],
        ["write", "/a"],
        ["chmod", "/a", "q5"],
        ["chmod", "/nonexistent", "n0"],
        ["rm", "/nonexistent/x"],
        ["list", "/nonexistent"],
        ["ls", "/nonexistent"],
        ["watch", "-n"],
        ["watch", "bad path"],
        ["control", "bogus-command"],
        ["--socket", "/nonexistent/socket", "read", "/a"],
    ],
    ids=" ".join,
)
def test_bad_input_gives_one_line_and_failure(
    capsysbinary: pytest.CaptureFixture[bytes], daemon: RunningDaemon, argv: list[str]
) -> None:
    if argv[:1] != ["--socket"]:
        argv = ["--socket", str(daemon.socket), *argv]
    status = main(argv)
    out, err = capsysbinary.readouterr()
    assert status != 0
    assert out == b""
    lines = err.decode().splitlines()
    if argv[2:3] == ["control"]:  # xenstore-control lists the valid commands
        assert lines[0] == "Command not supported. Valid commands are:"
    else:
        assert len(lines) == 1, lines
        assert lines[0].startswith("pyxenstore: ")
        assert "Traceback" not in lines[0]


def test_no_daemon_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "XENSTORED_PATH": str(tmp_path / "none")}
    proc = subprocess.run([*OURS, "ls"], env=env, capture_output=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr == b"pyxenstore: xs_open: No such file or directory\n"


def test_broken_pipe_is_quiet(daemon: RunningDaemon) -> None:
    with Client(str(daemon.socket)) as xs:
        tx = xs.transaction_start()
        for i in range(2000):
            xs.write(f"/wide/node{i:04d}", b"v" * 60, tx)
        xs.transaction_end(tx)
    proc = subprocess.run(
        f"{' '.join(OURS)} ls /wide | head -n 1",
        shell=True,
        env=daemon.env,
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert proc.stdout.startswith(b"node0000 = ")
    assert proc.stderr == b""
