"""Start-up as C xenstored does it: pid file, fork, readiness.

C's order (``xenstored_core.c: main``) is: fork and ``setsid`` unless
``-N``; lock and write the pid file; bind the socket; initialise the
master domain's ring; point stdin, stdout and stderr at ``/dev/null``.
We keep that order and do one thing better: the parent does not exit as
soon as it has forked, it waits for the child to report over a pipe.  So
its exit status tells whoever started it (Debian's init script, a test)
whether the daemon really serves, and a failure comes back as the
child's one-line message.

systemd's ``Type=notify`` is served without libsystemd: ``READY=1`` is
one datagram to ``$NOTIFY_SOCKET`` (``sd_notify(3)``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Launch",
    "Outcome",
    "PidFile",
    "PidFileHeld",
    "Report",
    "Reporter",
    "detach_stdio",
    "fork",
    "notify_address",
    "notify_systemd",
]


class PidFileHeld(Exception):
    """Another live process holds the pid file's lock."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = "another daemon" if pid is None else f"another daemon (pid {pid})"
        super().__init__(f"{holder} holds the pid file {path}")
        self.path = path
        self.pid = pid


class PidFile:
    """A pid file locked with ``lockf`` for as long as the daemon runs.

    The lock, not the file's existence, says that a daemon runs: a file
    left behind by a killed daemon is simply taken over.  C xenstored
    4.17 closes the file right after writing it, which drops its lock,
    so there the lock only keeps two daemons from starting at once; held
    for the daemon's life it also answers "is one running?".  POSIX
    record locks belong to the process and are dropped when *any*
    descriptor of the file is closed, so nothing else in the process may
    open this file while it is held.
    """

    def __init__(self, path: str, fd: int, created: bool) -> None:
        self.path = path
        self._fd: int | None = fd
        self._created = created
        self._written = False

    @classmethod
    def acquire(cls, path: str) -> PidFile:
        """Lock ``path``, created if need be; its content is not touched yet.

        Raises:
            PidFileHeld: another process holds the lock.
            OSError: the file cannot be opened.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd, created = os.open(path, flags | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(path, flags, 0o644), False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(fd)
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise PidFileHeld(path, holder) from None
        return cls(path, fd, created)

    def write(self) -> None:
        """Write our pid, replacing what the file held.

        Raises:
            OSError: the file cannot be written.
        """
        assert self._fd is not None, "released"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._written = True

    def release(self) -> None:
        """Remove the file if it is ours, then drop the lock.

        It is ours once our pid is in it, or if we created it.  A file
        that named another daemon before a failed start is left as it
        was.  Removed before the lock is dropped: a daemon starting
        meanwhile either finds the file still locked (and leaves), or
        creates a new one that our unlink cannot touch.
        """
        if self._fd is None:
            return
        if self._written or self._created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    """The pid written in a pid file, if it holds one."""
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError):
        return None


class Outcome(enum.Enum):
    """How start-up ended, as the child reports it to the parent."""

    #: The daemon serves its socket.
    READY = "ready"
    #: Another daemon holds the pid file: nothing to do (C exits 0).
    HELD = "held"
    #: Start-up failed; the message says why.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Report:
    """One line from the forked child to the waiting parent."""

    outcome: Outcome
    message: str = ""

    def encode(self) -> bytes:
        text = " ".join(self.message.split())  # one line, whatever it said
        return f"{self.outcome.value} {text}".rstrip().encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Report | None:
        """The report in ``data``; None if it holds none (the child died)."""
        line = data.split(b"\n", 1)[0].decode(errors="replace")
        word, _, message = line.partition(" ")
        try:
            return cls(Outcome(word), message)
        except ValueError:
            return None


class Reporter:
    """The child's end of the start-up pipe: says once how start-up went.

    ``Reporter(None)`` is the foreground daemon's: nobody waits for it.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @property
    def waiting(self) -> bool:
        """Whether a parent still waits for the report."""
        return self._fd is not None

    def report(self, report: Report) -> bool:
        """Send ``report`` and close the pipe; False if nobody waits."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        try:
            os.write(fd, report.encode())
        except OSError:
            return False  # the parent was killed: nobody to tell
        finally:
            os.close(fd)
        return True


class Launch:
    """The parent's view of the daemon it forked."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd

    def wait(self) -> Report:
        """Block until the child reports (or dies before it does)."""
        data = b""
        try:
            while b"\n" not in data:
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._fd)
        report = Report.decode(data)
        if report is not None:
            return report
        _, status = os.waitpid(self.pid, 0)
        return Report(Outcome.FAILED, f"{_describe(status)} during start-up")


def _describe(status: int) -> str:
    """A ``waitpid`` status in words."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"the daemon was killed by {name}"
    return f"the daemon exited with status {os.waitstatus_to_exitcode(status)}"


def fork() -> Launch | Reporter:
    """Fork the daemon off (C: ``daemonize``).

    The parent gets a :class:`Launch` to wait on; the child, now leading
    its own session with ``/`` as its working directory, gets the
    :class:`Reporter` to answer it with.  Call this before any event loop
    or thread exists.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or both processes would write what is buffered
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return Launch(pid, read_fd)
    os.close(read_fd)
    os.setsid()
    os.chdir("/")
    return Reporter(write_fd)


def detach_stdio() -> None:
    """Point stdin, stdout and stderr at ``/dev/null`` (C: ``finish_daemonize``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    if null > 2:
        os.close(null)


def notify_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as an ``AF_UNIX`` address.

    A leading ``@`` names a socket in the abstract namespace.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify_systemd(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (such as ``READY=1``) to systemd, as ``sd_notify`` does.

    Returns:
        Whether it was sent: False when ``$NOTIFY_SOCKET`` is not set.

    Raises:
        OSError: the notification socket cannot be reached.
    """
    env = os.environ if env is None else env
    value = env.get("NOTIFY_SOCKET")
    if not value:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(notify_address(value))
        s.send(state.encode())
    return True
