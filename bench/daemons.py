"""Start, watch and stop the three daemons under test, and the ceiling.

* ``py``: pyxenstored, ``python -m pyxenstored.cli.xenstored -N --socket
  DIR/socket --host-dir DIR`` (this interpreter, so the editable install);
* ``c``: Debian's C xenstored 4.17 under the peers' shim
  (``start-c-xenstored.sh``);
* ``ox``: Debian's oxenstored 4.17 under the same shim
  (``start-oxenstored.sh``);
* ``null``: the ceiling, ``python -m bench.nullserver --socket
  DIR/socket`` (a do-nothing Python server on pyxenstored's event loop;
  socket clients only, no rings).

Each gets its own directory, which is also its host directory for
emulated guests (EMULATION.md): the same :class:`~pyxenstored.sim.ring.
GuestRing` reaches the three daemons under test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CEILING",
    "KINDS",
    "MICRO_KINDS",
    "PY_EVENT_LOOP",
    "NAMES",
    "Daemon",
    "DaemonDied",
    "peers_dir",
    "pin",
    "pinned",
    "python_interpreter",
    "start",
]

#: The daemons under test, in the order tables list them.
KINDS = ("py", "c", "ox")
#: The do-nothing Python server (``bench/nullserver.py``): the small-tree
#: tables' ceiling, on socket clients only.
CEILING = "null"
#: Everything the small-tree phase runs, the ceiling first.
MICRO_KINDS = (CEILING, *KINDS)
NAMES = {
    "null": "null Python server",
    "py": "pyxenstored",
    "c": "C xenstored",
    "ox": "oxenstored",
}
REPO = Path(__file__).resolve().parents[1]


class DaemonDied(RuntimeError):
    """A daemon under test exited (or stopped answering) during a load."""


def peers_dir() -> Path:
    """``../shared/peers`` beside the repository (``$PEERS`` overrides)."""
    env = os.environ.get("PEERS")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "shared" / "peers"


def python_interpreter() -> str:
    """The interpreter behind the virtualenv (its build sets the speed:
    Debian's runs the daemon with 9-13% less CPU than a default source
    build)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


@dataclass
class Daemon:
    """One running daemon."""

    kind: str
    directory: Path
    pid: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    stopped: bool = field(default=False, init=False)

    @property
    def name(self) -> str:
        return NAMES[self.kind]

    @property
    def socket(self) -> Path:
        return self.directory / "socket"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def check(self, during: str) -> None:
        """Raise :class:`DaemonDied` if the daemon is gone."""
        if not self.alive():
            raise DaemonDied(f"{self.name} (pid {self.pid}) died during {during}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by all its threads (``schedstat``, in ns)."""
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{self.pid}/task/{tid}/schedstat", encoding="ascii") as f,
            ):
                total += int(f.read().split()[0])
        return total / 1e9

    def cpu_split(self) -> tuple[float, float]:
        """User and kernel CPU seconds so far (``/proc/PID/stat``, all threads).

        Clock-tick accounting (sampled, 10 ms ticks here), so only good
        over loads of many requests; :meth:`cpu_seconds` is the exact
        total.
        """
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def memory(self) -> dict[str, int]:
        """VmRSS, RssAnon, RssFile and VmHWM from /proc/PID/status, in kB."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(rest.split()[0])
        return out

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); idempotent."""
        if self.stopped:
            return
        self.stopped = True
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            return
        subprocess.run(
            ["sh", str(peers_dir() / "stop-peer.sh"), str(self.pid)],
            check=False,
            timeout=30,
        )


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of process ``pid``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def pinned(daemon: Daemon, cpu: int | None) -> Iterator[Callable[[], None] | None]:
    """Put the daemon on CPU ``cpu`` for the block (``None``: leave it).

    Yields the ``preexec_fn`` that puts a client process on the same CPU
    (``None`` when not pinning).  The daemon gets every CPU back after.
    """
    if cpu is None:
        yield None
        return
    everywhere = os.sched_getaffinity(0)
    pin(daemon.pid, {cpu})
    try:
        yield lambda: os.sched_setaffinity(0, {cpu})
    finally:
        if daemon.alive():
            pin(daemon.pid, everywhere)


def _wait_for_socket(path: Path, daemon: Daemon) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        daemon.check("start-up")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.02)
    daemon.stop()
    raise DaemonDied(f"{daemon.name} does not answer on {path}")


#: ``--event-loop`` for the ``py`` daemon and the null server (``bench.run
#: --py-event-loop``).
PY_EVENT_LOOP = ["auto"]


def start(kind: str, directory: Path) -> Daemon:
    """Start a daemon of ``kind`` in the fresh ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "socket"
    if kind == "py":
        log = directory / "pyxenstored.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxenstored.cli.xenstored",
                "-N",
                "--socket",
                str(sock),
                "--host-dir",
                str(directory),
                "--log-file",
                str(log),
                "--event-loop",
                PY_EVENT_LOOP[0],
            ],
            stdin=subprocess.DEVNULL,
        )
        daemon = Daemon(kind, directory, proc.pid, proc, log)
        _wait_for_socket(sock, daemon)
        return daemon
    if kind == CEILING:
        log = directory / "nullserver.log"
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.nullserver",
                    "--socket",
                    str(sock),
                    "--event-loop",
                    PY_EVENT_LOOP[0],
                ],
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                cwd=REPO,
            )
        daemon = Daemon(kind, directory, proc.pid, proc, log)
        _wait_for_socket(sock, daemon)
        return daemon
    script = {"c": "start-c-xenstored.sh", "ox": "start-oxenstored.sh"}[kind]
    out = subprocess.run(
        ["sh", str(peers_dir() / script), str(sock)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    pid = int(out.stdout.strip().splitlines()[-1])
    log = directory / ("xenstored.log" if kind == "c" else "oxenstored.out")
    return Daemon(kind, directory, pid, None, log)
