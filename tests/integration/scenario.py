"""Real clients for the differential test, and the recorder of their answers.

The differential test (``test_differential.py``) runs one script of
requests against two daemons and compares the answers.  This module holds
what the script is written with:

* :class:`Recorder` runs each step through one client and keeps its answer
  as plain data (tuples, strings, bytes), so two runs compare with ``==``
  and a mismatch prints readably;
* Debian's ``xenstore-*`` tools, run as subprocesses (:meth:`Recorder.tool`,
  :class:`ToolWatch` for ``xenstore-watch``);
* pyxs (:meth:`Recorder.pyxs`, :func:`drain_monitor`);
* :class:`RawClient`, a minimal client on the socket for what neither can
  send: malformed payloads, unknown types, and the order of watch events
  relative to replies.

Nothing here knows which daemon it talks to, and nothing is imported from
the daemon: the message numbers below come from ``xs_wire.h``.

Collecting events without sleeping: both daemons handle a connection's
requests in order and queue the events a request causes before its reply.
So after a request, a second cheap request (the *barrier*,
``GET_DOMAIN_PATH 0``) on a watching connection returns only once every
event caused so far has been queued to it; whatever arrives before the
barrier's reply is the complete, ordered list of those events.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple

import pyxs

__all__ = [
    "HEADER",
    "XENSTORE_CONTROL",
    "Op",
    "Recorder",
    "RawClient",
    "Reply",
    "Step",
    "ToolWatch",
    "drain_monitor",
    "payload",
]

#: ``struct xsd_sockmsg``: type, req_id, tx_id, len (PROTOCOL.md 1.1).
HEADER = struct.Struct("<IIII")


class Op(IntEnum):
    """``enum xsd_sockmsg_type`` (PROTOCOL.md 2), as C 4.17 numbers it."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26


_KNOWN_OPS = frozenset(int(op) for op in Op)
#: The unpacked Debian binary (/usr/bin/xenstore-control is a dangling link).
XENSTORE_CONTROL = Path("/tmp/peers/xenroot/usr/lib/xen-4.17/bin/xenstore-control")
#: Upper bound for any single wait; answers normally take milliseconds.
TIMEOUT = 5.0


class Reply(NamedTuple):
    """One message from the daemon, as recorded."""

    op: str
    req_id: int
    tx_id: int
    payload: bytes


class Step(NamedTuple):
    """One compared operation: what was done and what came back."""

    label: str
    answer: object


class ConnectionClosed(Exception):
    """The daemon closed the raw connection."""


class RawClient:
    """A blocking socket client that sends exactly the bytes it is given."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self.buffer = bytearray()
        # Deterministic request ids, so both runs can record them.
        self.next_req_id = 1

    def close(self) -> None:
        self.sock.close()

    def send(
        self, op: int, payload: bytes, tx_id: int = 0, length: int | None = None
    ) -> int:
        """Send one message; ``length`` overrides the header's ``len``."""
        req_id = self.next_req_id
        self.next_req_id += 1
        size = len(payload) if length is None else length
        self.sock.sendall(HEADER.pack(op, req_id, tx_id, size) + payload)
        return req_id

    def receive(self) -> Reply:
        """The next message (waits at most :data:`TIMEOUT`)."""
        while True:
            if len(self.buffer) >= HEADER.size:
                op, req_id, tx_id, size = HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= HEADER.size + size:
                    payload = bytes(self.buffer[HEADER.size : HEADER.size + size])
                    del self.buffer[: HEADER.size + size]
                    name = Op(op).name if op in _KNOWN_OPS else str(op)
                    return Reply(name, req_id, tx_id, payload)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionClosed()
            self.buffer += chunk

    def exchange(self, op: int, payload: bytes, tx_id: int = 0) -> list[Reply]:
        """Send a request; return everything up to and after its reply.

        The result holds the events queued before the reply, the reply,
        and the events queued right after it (a barrier request collects
        them; its own reply is left out).
        """
        self.send(op, payload, tx_id)
        return self.collect()

    def collect(self) -> list[Reply]:
        """Everything the daemon queued for this connection so far."""
        barrier = self.send(Op.GET_DOMAIN_PATH, b"0\0")
        got: list[Reply] = []
        while True:
            reply = self.receive()
            if reply.req_id == barrier and reply.op != "WATCH_EVENT":
                return got
            got.append(reply)


def error_name(exc: BaseException) -> str:
    """``ENOENT`` for a pyxs error carrying errno 2, else the repr."""
    code = exc.args[0] if exc.args else None
    if isinstance(code, int):
        return errno.errorcode.get(code, str(code))
    return repr(exc)


def drain_monitor(client: Any, monitor: Any) -> list[tuple[bytes, bytes]]:
    """The events a pyxs monitor received so far, in order (via a barrier).

    pyxs's router thread puts events on ``monitor.events`` in arrival order
    before it hands over the reply that follows them, so once the barrier
    request returns every earlier event is in the queue.
    """
    client.get_domain_path(0)
    events: list[tuple[bytes, bytes]] = []
    while True:
        try:
            path, token = monitor.events.get_nowait()
        except queue.Empty:
            return events
        events.append((path, token))


class ToolWatch:
    """``xenstore-watch -n COUNT PATH`` running in the background."""

    def __init__(self, env: dict[str, str], path: str, count: int) -> None:
        self.proc = subprocess.Popen(
            ["xenstore-watch", "-n", str(count), path],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = b""

    def wait_lines(self, count: int) -> list[str]:
        """The first ``count`` lines of output (fewer if it times out)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while self.out.count(b"\n") < count:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                self.out += chunk
        return self.out.decode(errors="backslashreplace").splitlines()[:count]

    def finish(self) -> tuple[int | str, str, str]:
        """Exit status (or ``timeout``), all of stdout, and stderr."""
        try:
            rest, err = self.proc.communicate(timeout=TIMEOUT)
            status: int | str = self.proc.returncode
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, err = self.proc.communicate()
            status = "timeout"
        text = (self.out + rest).decode(errors="backslashreplace")
        return status, text, err.decode(errors="backslashreplace")


class Recorder:
    """Runs the scenario's steps against one daemon and records answers."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path
        self.env = {**os.environ, "XENSTORED_PATH": str(socket_path)}
        self.steps: list[Step] = []
        self._labels: set[str] = set()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def record(self, label: str, answer: object) -> object:
        assert label not in self._labels, f"duplicate step label {label!r}"
        self._labels.add(label)
        self.steps.append(Step(label, answer))
        return answer

    # -- clients --------------------------------------------------------------

    def raw_client(self) -> RawClient:
        client = RawClient(self.socket)
        self._stack.callback(client.close)
        return client

    def pyxs_client(self) -> Any:
        pyxs.Client.SU = True
        client = pyxs.Client(unix_socket_path=str(self.socket))
        client.connect()
        self._stack.callback(client.close)
        return client

    # -- steps ----------------------------------------------------------------

    def tool(self, label: str, *argv: str) -> tuple[int, str, str]:
        """Run a command-line client; record (status, stdout, stderr)."""
        out = subprocess.run(
            [str(a) for a in argv], env=self.env, capture_output=True, timeout=TIMEOUT
        )
        answer = (
            out.returncode,
            out.stdout.decode(errors="backslashreplace"),
            out.stderr.decode(errors="backslashreplace"),
        )
        self.record(label, answer)
        return answer

    def control(self, label: str, *args: str) -> tuple[int, str, str]:
        return self.tool(label, str(XENSTORE_CONTROL), *args)

    def pyxs(self, label: str, call: Callable[[], object]) -> tuple[str, object]:
        """Run a pyxs call; record ("ok", result) or ("error", ERRNO name)."""
        try:
            answer: tuple[str, object] = ("ok", call())
        except pyxs.PyXSError as exc:
            answer = ("error", error_name(exc))
        self.record(label, answer)
        return answer

    def raw(
        self, label: str, client: RawClient, op: int, payload: bytes, tx_id: int = 0
    ) -> list[Reply]:
        """Send one raw request; record every message it brought, in order."""
        try:
            replies = client.exchange(op, payload, tx_id)
        except TimeoutError:
            self.record(label, "timeout")
            return []
        except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
            self.record(label, "connection closed")
            return []
        self.record(label, replies)
        return replies

    def events(self, label: str, client: RawClient) -> list[Reply]:
        """Record the watch events a raw connection has been sent so far."""
        replies = client.collect()
        self.record(label, replies)
        return replies

    def monitor_events(self, label: str, client: Any, monitor: Any) -> None:
        self.record(label, drain_monitor(client, monitor))

    def tool_watch(
        self, label: str, path: str, count: int, actions: Sequence[Callable[[], object]]
    ) -> None:
        """Run ``xenstore-watch``, wait for its initial event, act, record.

        The initial event proves the watch is registered before the actions
        that should fire it run.
        """
        watch = ToolWatch(self.env, path, count)
        first = watch.wait_lines(1)
        for action in actions:
            action()
        self.record(label, (first, *watch.finish()))


def payload(*args: str | bytes) -> bytes:
    """NUL-terminated strings, as most requests carry them."""
    return b"".join((a if isinstance(a, bytes) else a.encode()) + b"\0" for a in args)
