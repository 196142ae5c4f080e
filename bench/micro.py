"""The small-tree loads: xsbench (libxenstore), pyclient (our client), rings.

Every load is a separate client process printing JSON lines; each line
becomes one record, tagged with the phase, the daemon and the repetition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from bench.daemons import Daemon, pinned
from pyxenstored.client.sync import Client
from pyxenstored.sim.ring import HostDir
from pyxenstored.sim.toolstack import Toolstack

__all__ = ["GUESTS", "CLIENT_COUNTS", "prepare_guests", "run_load", "xsbench_path"]

#: Concurrent-client counts (xsbench's default).
CLIENT_COUNTS = (1, 4, 16)
#: Guest domains built on every daemon for the ring loads.
GUESTS = max(CLIENT_COUNTS)
REPO = Path(__file__).resolve().parents[1]
#: A load that takes longer than this is killed and reported as failed.
LOAD_TIMEOUT = 180


def xsbench_path() -> Path:
    return Path(os.environ.get("BUILD", "/tmp/peers/build")) / "xsbench"


def prepare_guests(daemon: Daemon) -> None:
    """Build and introduce domains 1..GUESTS on the daemon, as libxl does."""
    with Client(str(daemon.socket)) as dom0:
        toolstack = Toolstack(dom0, HostDir(str(daemon.directory)))
        for domid in range(1, GUESTS + 1):
            toolstack.create_domain(domid)


#: The single-client tests (``--pin`` runs them again on one CPU).
SINGLE = ("seq", "dir", "txn", "watch")


def _command(
    client: str, daemon: Daemon, duration: float, tests: Sequence[str]
) -> list[str]:
    counts = ",".join(str(n) for n in CLIENT_COUNTS)
    if client == "libxenstore":
        return [
            str(xsbench_path()),
            "-s",
            str(daemon.socket),
            "-d",
            str(duration),
            "-n",
            counts,
            "-l",
            daemon.kind,
            *tests,
        ]
    cmd = [
        sys.executable,
        "-m",
        "bench.pyclient",
        "-s",
        str(daemon.socket),
        "-d",
        str(duration),
        "-n",
        counts,
        "-l",
        daemon.kind,
    ]
    if client == "ring":
        cmd += ["--ring", str(daemon.directory)]
    return [*cmd, *tests]


def run_load(
    client: str, daemon: Daemon, duration: float, rep: int, pin_cpu: int | None
) -> list[dict[str, object]]:
    """Run one client's whole test list against one daemon.

    ``client`` is ``libxenstore`` (xsbench), ``pyxenstored`` (our blocking
    client on the socket) or ``ring`` (our client as guests on rings).
    Every test runs unpinned, on every CPU: those are the headline
    figures.  With ``pin_cpu`` (not ``None``) the single-client tests then
    run again with the client and the daemon on that CPU, in records
    tagged ``"pinned": true``.  Returns the records; a failure becomes a
    record with ``error``.
    """
    # Connection open+close: our socket client only (xsbench has no such
    # test, and a guest keeps its ring for life).
    tests = (*SINGLE, "conc", *(("conn",) if client == "pyxenstored" else ()))
    records = _run(client, daemon, duration, rep, tests, None)
    if pin_cpu is not None:
        records += _run(client, daemon, duration, rep, SINGLE, pin_cpu)
    return records


def _run(
    client: str,
    daemon: Daemon,
    duration: float,
    rep: int,
    tests: Sequence[str],
    cpu: int | None,
) -> list[dict[str, object]]:
    tag = {
        "phase": "micro",
        "daemon": daemon.kind,
        "rep": rep,
        "client": client,
        "pinned": cpu is not None,
    }
    records: list[dict[str, object]] = []
    with (
        tempfile.TemporaryFile("w+") as stderr,
        pinned(daemon, cpu) as preexec,
    ):
        proc = subprocess.Popen(
            _command(client, daemon, duration, tests),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            preexec_fn=preexec,
        )
        watchdog = threading.Timer(LOAD_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            # The clients print each test's line as soon as it ends, so the
            # daemon's CPU time between two lines is that test's (the next
            # test's set-up, such as DIRECTORY's 1,000 writes, included).
            cpu_before = daemon.cpu_seconds()
            split_before = daemon.cpu_split()
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                cpu_now = daemon.cpu_seconds()
                split_now = daemon.cpu_split()
                record: dict[str, object] = {**json.loads(line), **tag}
                requests = _requests(record)
                if requests:
                    used = cpu_now - cpu_before
                    record["daemon_cpu_s"] = round(used, 4)
                    record["daemon_cpu_us_per_req"] = round(used * 1e6 / requests, 2)
                    user, kernel = (
                        (now - before) * 1e6 / requests
                        for now, before in zip(split_now, split_before, strict=True)
                    )
                    record["daemon_user_us_per_req"] = round(user, 2)
                    record["daemon_sys_us_per_req"] = round(kernel, 2)
                cpu_before = cpu_now
                split_before = split_now
                records.append(record)
            code = proc.wait()
        finally:
            killed = not watchdog.is_alive() and proc.returncode != 0
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if killed:
            records.append(
                {**tag, "test": "*", "error": f"killed after {LOAD_TIMEOUT} s"}
            )
        elif code != 0:
            stderr.seek(0)
            err = stderr.read().strip().splitlines()[-3:]
            records.append(
                {**tag, "test": "*", "error": f"exit {code}: {' | '.join(err)}"}
            )
    return records


def _requests(record: dict[str, object]) -> float | None:
    """How many requests a test's record stands for."""
    rate, secs = record.get("requests_per_s"), record.get("seconds")
    if isinstance(rate, int | float) and isinstance(secs, int | float):
        return rate * secs
    return None
