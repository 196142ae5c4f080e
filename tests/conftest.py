"""Shared fixtures: short temporary directories and real running daemons."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: ../shared/peers next to the repository (scripts that run the C daemons).
PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"

#: The event loop of the daemons the fixtures start (``--event-loop``).
EVENT_LOOP = ["asyncio"]
#: The hypervisor backend of the daemons that serve guests (``--backend``).
BACKEND = ["emulated"]
#: The peers' shim answering the Xen library calls over a host directory.
SHIM = Path("/tmp/peers/build/libxenshim.so")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of the pyxenstored daemons started by the fixtures "
        "(make test runs the integration tests on both)",
    )
    parser.addoption(
        "--backend",
        choices=("emulated", "xen"),
        default="emulated",
        help="how daemons given a host directory serve guests: the emulation, "
        "or the Xen libraries answered by the peers' shim (make test runs the "
        "guest tests on both)",
    )


def pytest_configure(config: pytest.Config) -> None:
    EVENT_LOOP[0] = config.getoption("--event-loop")
    BACKEND[0] = config.getoption("--backend")


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"pyxenstored daemons on the {EVENT_LOOP[0]} event loop, "
        f"guests through the {BACKEND[0]} backend"
    )


def backend_args(extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """``extra`` and the environment for the backend chosen by ``--backend``.

    With ``xen``, ``--host-dir DIR`` becomes ``--hypervisor xen`` with the
    shim preloaded over DIR: the daemon then calls the real Xen libraries'
    entry points, exactly as C xenstored does under the same shim.
    """
    env = dict(os.environ)
    if BACKEND[0] != "xen" or "--host-dir" not in extra:
        return extra, env
    i = extra.index("--host-dir")
    directory = extra[i + 1]
    env.update(LD_PRELOAD=str(SHIM), XS_SHIM_DIR=directory)
    return [*extra[:i], "--hypervisor", "xen", *extra[i + 2 :]], env


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (AF_UNIX paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="pyxs-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on ``path`` (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing serves {path}")


class RunningDaemon:
    """A pyxenstored process serving ``socket`` in ``directory``."""

    def __init__(
        self,
        directory: Path,
        extra: list[str],
        module: str = "pyxenstored.cli.xenstored",
    ) -> None:
        self.directory = directory
        self.socket = directory / "socket"
        self.log = directory / "daemon.log"
        self.trace = directory / "trace"
        extra, env = backend_args(extra)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "-N",
                "--socket",
                str(self.socket),
                "--log-file",
                str(self.log),
                "--trace-file",
                str(self.trace),
                "--event-loop",
                EVENT_LOOP[0],
                *extra,
            ],
            env=env,
        )
        wait_for_socket(self.socket, self.proc)

    @property
    def env(self) -> dict[str, str]:
        """Environment for real clients (libxenstore tools, pyxs)."""
        return {**os.environ, "XENSTORED_PATH": str(self.socket)}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, SIGKILL after 10 s; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[RunningDaemon]:
    """A fresh pyxenstored on a real Unix socket."""
    running = RunningDaemon(short_tmp, [])
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"daemon exited with {code}; log:\n{running.log.read_text()}"


@pytest.fixture
def host_daemon(short_tmp: Path) -> Iterator[RunningDaemon]:
    """A fresh pyxenstored serving guests through the emulated hypervisor.

    The host directory (EMULATION.md) is the daemon's own directory.
    """
    running = RunningDaemon(short_tmp, ["--host-dir", str(short_tmp)])
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"daemon exited with {code}; log:\n{running.log.read_text()}"


class CDaemon:
    """Debian's C xenstored under the peers' shim (the oracle).

    Its directory is also its host directory for emulated guests.
    """

    script = "start-c-xenstored.sh"

    def __init__(self, directory: Path, extra: list[str]) -> None:
        self.directory = directory
        self.socket = directory / "socket"
        out = subprocess.run(
            ["sh", str(PEERS / self.script), str(self.socket), *extra],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        self.pid = int(out.stdout.strip().splitlines()[-1])

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XENSTORED_PATH": str(self.socket)}

    def stop(self) -> None:
        subprocess.run(
            [
                "sh",
                str(
                    PEERS / "stop-peer.sh",
                ),
                str(self.pid),
            ],
            check=False,
        )


@pytest.fixture
def c_xenstored(short_tmp: Path) -> Iterator[CDaemon]:
    """The real C xenstored, for differential tests."""
    running = CDaemon(short_tmp / "c", [])
    try:
        yield running
    finally:
        running.stop()


class OxDaemon(CDaemon):
    """Debian's oxenstored under the peers' shim."""

    script = "start-oxenstored.sh"


@pytest.fixture
def oxenstored(short_tmp: Path) -> Iterator[OxDaemon]:
    """The real OCaml oxenstored, for differential tests."""
    running = OxDaemon(short_tmp / "ox", [])
    try:
        yield running
    finally:
        running.stop()
