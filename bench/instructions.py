"""Instructions per request, counted by callgrind: figures that repeat.

``python -m bench.instructions [--daemons null,py,c] [--loads ...] [-n N]``

Each daemon runs under ``valgrind --tool=callgrind``; for each load the
counters are zeroed (``callgrind_control --zero``), ``N`` iterations of the
load are sent, and the counters dumped (``--dump``): the instructions the
whole daemon process executed (interpreter, event loop, C library; not the
kernel) divided by the requests sent.  Unlike a time, that count is the
same on the next run and on the next machine with the same binaries, and
does not move with the machine's load, so it shows what a change to the
request path saves where the timed loads of ``bench.run`` cannot (they
swing by up to 1.5x over a day on a shared VM).  What it cannot show is
what memory and caches cost: a request run cold after each wake-up takes
several times longer per instruction than the same code warm.

Loads (the client is a plain blocking socket here, or our guest on its
ring, and is not counted):

* ``seq``: WRITE then READ of one of 100 small nodes (xsbench's seq);
* ``dir``: DIRECTORY of a node with 1,000 children;
* ``txn``: TRANSACTION_START, 10 WRITEs, TRANSACTION_END (12 requests);
* ``conn``: connect, one READ, close (every ``xenstore-*`` command);
* ``ring``: ``seq`` from a guest on its ring (not the null server, which
  serves no rings).

Daemons: ``null`` (``bench/nullserver.py``, the ceiling), ``py``
(pyxenstored) and ``c`` (Debian's xenstored under the peers' shim).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.daemons import NAMES, PY_EVENT_LOOP, REPO, peers_dir, python_interpreter
from pyxenstored.client import Client
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from pyxenstored.wire.ops import Op

__all__ = ["main"]

DAEMONS = ("null", "py", "c")
LOADS = ("seq", "dir", "txn", "conn", "ring")
#: Requests in one iteration of each load (``conn``: one connection).
REQUESTS = {"seq": 2, "dir": 1, "txn": 12, "conn": 1, "ring": 2}
_HEADER = struct.Struct("<IIII")
_SUMMARY = re.compile(rb"^summary: (\d+)$", re.M)
#: Seconds a daemon may take to answer under valgrind.
_START_TIMEOUT = 180.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        data += chunk
    return data


def _rpc(sock: socket.socket, op: int, payload: bytes, tx_id: int = 0) -> bytes:
    sock.sendall(_HEADER.pack(op, 1, tx_id, len(payload)) + payload)
    reply_op, _, _, length = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    body = _recv_exact(sock, length)
    if reply_op == Op.ERROR:
        raise RuntimeError(f"request {op} failed: {body!r}")
    return body


class _Valgrind:
    """One daemon under callgrind, its counters read per load."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.socket = str(directory / "socket")
        self.dumps = directory / "callgrind"
        self.dumps.mkdir(parents=True)
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.dumps}/out.%p",
        ]
        env = dict(os.environ)
        if kind == "py":
            command += [sys.executable, "-m", "pyxenstored.cli.xenstored", "-N"]
            command += ["--socket", self.socket, "--host-dir", str(directory)]
            command += ["--event-loop", PY_EVENT_LOOP[0]]
        elif kind == "null":
            command += [
                sys.executable,
                "-m",
                "bench.nullserver",
                "--socket",
                self.socket,
            ]
            command += ["--event-loop", PY_EVENT_LOOP[0]]
        else:  # as peers/start-c-xenstored.sh runs it
            bindir = subprocess.run(
                [str(peers_dir() / "get-xen-binaries.sh")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            build = os.environ.get("BUILD", "/tmp/peers/build")
            env.update(
                XS_SHIM_DIR=str(directory),
                XENSTORED_RUNDIR=str(directory),
                XENSTORED_PATH=self.socket,
                LD_PRELOAD=f"{build}/libxenshim.so",
            )
            command += [f"{bindir}/xenstored", "-N"]
        self.log = open(directory / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{kind} exited at start; see {directory}/daemon.log"
                )
            try:
                with self.connect() as sock:
                    _rpc(sock, Op.READ, b"/\0")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not answer in time") from None
                time.sleep(0.5)

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.socket)
        except OSError:
            sock.close()
            raise
        return sock

    def _control(self, what: str) -> None:
        subprocess.run(
            ["callgrind_control", what, str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def count(self, run: Callable[[], None]) -> int:
        """Instructions the daemon executed while ``run`` ran."""
        self._control("--zero")
        run()
        before = set(self.dumps.iterdir())
        self._control("--dump")
        deadline = time.monotonic() + 60
        while True:
            new = sorted(set(self.dumps.iterdir()) - before)
            if new:
                match = _SUMMARY.search(new[-1].read_bytes())
                if match:
                    return int(match.group(1))
            if time.monotonic() > deadline:
                raise RuntimeError("callgrind wrote no dump")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _loads(daemon: _Valgrind, n: int) -> dict[str, Callable[[], None]]:
    """Each load as a function sending ``n`` iterations."""

    def seq() -> None:
        with daemon.connect() as sock:
            for i in range(n):
                key = b"/bench/k%d" % (i % 100)
                _rpc(sock, Op.WRITE, key + b"\0v%08d" % i)
                _rpc(sock, Op.READ, key + b"\0")

    def directory() -> None:
        with daemon.connect() as sock:
            for _ in range(n):
                _rpc(sock, Op.DIRECTORY, b"/bench/dir\0")

    def txn() -> None:
        with daemon.connect() as sock:
            for i in range(n):
                tx = int(_rpc(sock, Op.TRANSACTION_START, b"\0").rstrip(b"\0"))
                for k in range(10):
                    _rpc(sock, Op.WRITE, b"/bench/txn/k%d\0v%08d" % (k, i), tx)
                _rpc(sock, Op.TRANSACTION_END, b"T\0", tx)

    def conn() -> None:
        for _ in range(n):
            with daemon.connect() as sock:
                _rpc(sock, Op.READ, b"/bench/k1\0")

    def ring() -> None:
        with Client(transport=GuestRing(str(daemon.directory), 1)) as guest:
            for i in range(n):
                key = f"data/bench/k{i % 100}"
                guest.write(key, b"v%08d" % i)
                guest.read(key)

    return {"seq": seq, "dir": directory, "txn": txn, "conn": conn, "ring": ring}


def _prepare(daemon: _Valgrind, loads: list[str]) -> None:
    with daemon.connect() as sock:
        for i in range(100):
            _rpc(sock, Op.WRITE, b"/bench/k%d\0" % i)
        if "dir" in loads:
            for i in range(1000):
                _rpc(sock, Op.WRITE, b"/bench/dir/%d\0" % i)
    if "ring" in loads and daemon.kind != "null":
        with Client(daemon.socket) as dom0:
            Toolstack(dom0, HostDir(str(daemon.directory))).create_domain(1)


def measure(
    kinds: list[str], loads: list[str], n: int, keep: bool = False
) -> dict[tuple[str, str], float]:
    """``{(load, kind): instructions per request}``; with ``keep`` the
    directories with callgrind's dumps stay (for ``callgrind_annotate``)."""
    root = Path(tempfile.mkdtemp(prefix="pyxs-instructions-"))
    results: dict[tuple[str, str], float] = {}
    try:
        for kind in kinds:
            daemon = _Valgrind(kind, root / kind)
            try:
                _prepare(daemon, loads)
                warm = _loads(daemon, max(n // 10, 10))
                runs = _loads(daemon, n)
                for load in loads:
                    if load == "ring" and kind == "null":
                        continue
                    warm[load]()  # caches, interned names, first-time paths
                    total = daemon.count(runs[load])
                    results[(load, kind)] = total / (n * REQUESTS[load])
                    print(
                        f"{NAMES[kind]}, {load}: {results[(load, kind)]:,.0f}",
                        file=sys.stderr,
                    )
            finally:
                daemon.stop()
    finally:
        if keep:
            print(f"callgrind's dumps: {root}/*/callgrind/", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def _table(
    kinds: list[str], loads: list[str], results: dict[tuple[str, str], float]
) -> str:
    head = ["load", *(NAMES[k] for k in kinds)]
    ratios = [
        (a, b) for a, b in (("py", "null"), ("py", "c")) if a in kinds and b in kinds
    ]
    head += [f"{a} / {b}" for a, b in ratios]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for load in loads:
        cells = [load]
        for kind in kinds:
            value = results.get((load, kind))
            cells.append("-" if value is None else f"{value:,.0f}")
        for a, b in ratios:
            x, y = results.get((load, a)), results.get((load, b))
            cells.append("-" if x is None or y is None else f"{x / y:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.instructions", description=__doc__)
    parser.add_argument("--daemons", default=",".join(DAEMONS))
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("-n", type=int, default=500, help="iterations per load (500)")
    parser.add_argument(
        "--keep", action="store_true", help="keep callgrind's dumps (one per load)"
    )
    args = parser.parse_args(argv)
    kinds = [k for k in args.daemons.split(",") if k]
    loads = [x for x in args.loads.split(",") if x]
    bad = sorted(set(kinds) - set(DAEMONS)) + sorted(set(loads) - set(LOADS))
    if bad or args.n < 1:
        parser.error(f"unknown daemon or load: {', '.join(bad)}" if bad else "-n >= 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.instructions: valgrind is not installed", file=sys.stderr)
        return 1
    results = measure(kinds, loads, args.n, args.keep)
    print(
        "Instructions per request (callgrind, the whole daemon process; "
        f"{args.n} iterations per load after a warm-up; Python "
        f"{platform.python_version()}, {python_interpreter()})\n"
    )
    print(_table(kinds, loads, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
