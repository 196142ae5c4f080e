"""pyxenstored and C xenstored side by side, with the same domains, resettable.

Each daemon gets its own host directory (EMULATION.md): ``ring-1`` ..
``ring-3`` make domains 1-3 exist on both (C refuses permissions whose
owner names a domain that does not exist), and dom0 introduces 1 and 2.
Domain 7 never exists.  Domain 1 is also a client: a guest on its ring
(the simulator's :class:`~pyxenstored.sim.ring.GuestRing`, test
scaffolding used as a byte transport only; the framing is ours).

Starting both daemons takes about 0.4 s, too much for every replay of the
shrinker; :meth:`Daemons.reset` takes about 4 ms.  It has the guest drop
its watches and transactions (RESET_WATCHES), closes the previous play's
sockets and, on a fresh one, removes everything a play can create (``/x``,
``/r``, ``/local``), gives the guest its home (``/local/domain/1``, owned
by it) and the special nodes their start-up permissions.  Watches and
transactions of sockets die with them.  A daemon that died is started
again; a guest ring that broke or timed out is replaced (RELEASE, a fresh
page, INTRODUCE).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from pyxenstored.errors import BrokenConnection, ConnectionClosed
from pyxenstored.sim.ring import GuestRing, HostDir
from tests.conftest import CDaemon, RunningDaemon
from tests.difffuzz.model import EXISTING, GUEST, GUEST_HOME, INTRODUCED, SOCKETS
from tests.difffuzz.runner import TIMEOUT, SocketTransport, Transport, Wire
from tests.integration.scenario import Op

__all__ = ["Daemons", "internal_errors"]

#: What a play may create or change, removed or restored by a reset.
SUBTREES = (b"/x", b"/r", b"/local")
RESTORE = (
    (Op.WRITE, GUEST_HOME.encode() + b"\0"),
    (Op.SET_PERMS, GUEST_HOME.encode() + f"\0n{GUEST}\0".encode()),
    (Op.SET_PERMS, b"@introduceDomain\0n0\0"),
    (Op.SET_PERMS, b"@releaseDomain\0n0\0"),
)
#: Lines of pyxenstored's log that betray a bug in the daemon itself.
INTERNAL = re.compile(r"internal error|traceback|fatal error", re.IGNORECASE)
#: Object addresses and file descriptors, which differ from record to record.
ADDRESS = re.compile(r"(?<=0x)[0-9a-f]+|(?<=fd=)\d+")
#: The start of a log record: "2026-01-02 10:11:12,345 pyxenstored[123] ".
STAMP = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ \S+\[\d+\] ")


class DaemonError(Exception):
    """A daemon refused the set-up or the reset."""


class RingTransport:
    """The guest's ring as a :class:`~tests.difffuzz.runner.Transport`."""

    def __init__(self, directory: Path) -> None:
        self.ring = GuestRing(str(directory), GUEST, timeout=TIMEOUT)
        #: Set once the ring failed: the daemon must be given a new one.
        self.broken = False

    def sendall(self, data: bytes) -> None:
        try:
            self.ring.send_all(data)
        except (BrokenConnection, ConnectionClosed):
            self.broken = True
            raise ConnectionResetError("guest ring broken") from None

    def recv(self) -> bytes:
        try:
            return self.ring.receive_some(65536, TIMEOUT)
        except (BrokenConnection, ConnectionClosed):
            self.broken = True
            return b""
        except TimeoutError:
            self.broken = True
            raise

    def close(self) -> None:
        self.ring.close()


def _request(socket: Path, requests: tuple[tuple[Op, bytes], ...]) -> list[bytes]:
    """Send requests on a fresh dom0 connection; each one's error or b""."""
    transport = SocketTransport(socket)
    errors = []
    try:
        wire = Wire(transport)
        for op, payload in requests:
            kind, body = wire.request(op, payload)
            errors.append(b"" if kind == op else body)
    finally:
        transport.close()
    return errors


class Side:
    """One daemon: its process, directory and guest ring."""

    def __init__(self, directory: Path, c: bool) -> None:
        self.directory = directory
        self.c = c
        self.host = HostDir(str(directory))
        self.ours: RunningDaemon | None = None
        self.oracle: CDaemon | None = None
        self.guest: RingTransport | None = None
        self.restarts = 0
        #: Logs of pyxenstored processes that died and were replaced.
        self.old_logs: list[str] = []
        self.start()

    @property
    def socket(self) -> Path:
        return self.directory / "socket"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for domid in (*INTRODUCED, *EXISTING):
            self.host.create_domain(domid)
        if self.c:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
            self.oracle = CDaemon(self.directory, [])
        else:
            self.ours = RunningDaemon(
                self.directory, ["--host-dir", str(self.directory)]
            )
        for domid in INTRODUCED:
            self._introduce(domid)
        self.guest = RingTransport(self.directory)

    def _introduce(self, domid: int) -> None:
        payload = f"{domid}\0{0xFEFFF}\0{1}\0".encode()
        (error,) = _request(self.socket, ((Op.INTRODUCE, payload),))
        if error:
            raise DaemonError(f"INTRODUCE {domid} on {self.socket}: {error!r}")

    def alive(self) -> bool:
        if self.ours is not None:
            return self.ours.alive()
        assert self.oracle is not None
        try:
            with open(f"/proc/{self.oracle.pid}/stat", encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def stop(self) -> int:
        if self.guest is not None:
            self.guest.close()
            self.guest = None
        if self.oracle is not None:
            self.oracle.stop()
        if self.ours is not None:
            return self.ours.stop()
        return 0

    def log(self) -> str:
        if self.ours is None:
            return ""
        try:
            current = self.ours.log.read_text(errors="backslashreplace")
        except FileNotFoundError:
            current = ""
        return "".join([*self.old_logs, current])

    def reset(self) -> None:
        if not self.alive():
            self.restarts += 1
            log = self.log()
            self.stop()
            self.old_logs.append(log)
            self.start()
        assert self.guest is not None
        if not self.guest.broken:
            try:
                kind, _ = Wire(self.guest).request(Op.RESET_WATCHES, b"\0")
                self.guest.broken = kind != Op.RESET_WATCHES
            except (OSError, TimeoutError):
                self.guest.broken = True
        if self.guest.broken:
            self._replace_guest()
        errors = _request(self.socket, tuple((Op.RM, p + b"\0") for p in SUBTREES))
        if any(e not in (b"", b"ENOENT\0") for e in errors):
            raise DaemonError(f"reset: RM on {self.socket}: {errors}")
        errors = _request(self.socket, RESTORE)
        if any(errors):
            raise DaemonError(f"reset on {self.socket}: {errors}")

    def _replace_guest(self) -> None:
        assert self.guest is not None
        self.guest.close()
        _request(self.socket, ((Op.RELEASE, f"{GUEST}\0".encode()),))
        self.host.create_domain(GUEST)
        self._introduce(GUEST)
        self.guest = RingTransport(self.directory)

    def transports(self) -> list[Transport]:
        """New sockets, then the guest's ring, for one play."""
        assert self.guest is not None
        return [*(SocketTransport(self.socket) for _ in range(SOCKETS)), self.guest]


class Daemons:
    """The two daemons of a run, in ``root/c`` and ``root/py``."""

    def __init__(self, root: Path) -> None:
        self.c = Side(root / "c", c=True)
        self.ours = Side(root / "py", c=False)

    @property
    def restarts(self) -> int:
        return self.c.restarts + self.ours.restarts

    def reset(self) -> None:
        """Back to the state right after start-up (as far as plays can tell)."""
        self.c.reset()
        self.ours.reset()

    def log(self) -> str:
        """pyxenstored's log so far (of every process, if it was restarted)."""
        return self.ours.log()

    def stop(self) -> int:
        """Stop both; pyxenstored's exit status."""
        self.c.stop()
        return self.ours.stop()


def internal_errors(log: str) -> list[str]:
    """The records of a pyxenstored log that show a bug of the daemon itself.

    A record is a line with a time stamp and the lines after it without one
    (a traceback).  Each distinct record is given once, time stamp, pid and
    object addresses left out, with the number of times it was logged.
    """
    records: list[list[str]] = []
    for line in log.splitlines():
        if STAMP.match(line) or not records:
            records.append([STAMP.sub("", line)])
        else:
            records[-1].append(line)
    counts: dict[str, int] = {}
    for record in records:
        text = ADDRESS.sub("…", "\n".join(record))
        if INTERNAL.search(text):
            counts[text] = counts.get(text, 0) + 1
    return [f"({n}x) {text}" for text, n in counts.items()]
