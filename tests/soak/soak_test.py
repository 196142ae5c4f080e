"""Soak: 200 socket clients and 100 guests on one daemon for a minute.

Run by ``make soak`` (``SOAK_SECONDS``, default 60; the whole run takes
about two minutes).  Four load processes (tests/soak/worker.py) each run
50 socket clients (AsyncClient) and 25 guests (AsyncClient over
AsyncGuestRing) with a mixed workload, while the driver

* starts "victim" processes that open transactions, write in them, leave
  200 requests unanswered and half a request in flight, and SIGKILLs
  them;
* destroys ten guest domains (HostDir.kill_domain) while their guests
  are in the middle of requests;
* lets the load processes close connections abruptly, mid-transaction
  and with a request in flight.

Then it checks: no unexpected error in any client; every committed
write is present with its last value and nothing written in an
uncommitted transaction is; the destroyed domains left nothing; CONTROL
``check`` answers OK; the daemon's file descriptors are back where they
were and its RSS grew by less than a stated bound.  Finally it sends
SIGTERM under a fresh load: exit code 0, socket removed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.errors import NoEntry
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from tests.conftest import wait_for_socket
from tests.wiretools import rss_kib

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
WORKERS = 4
CLIENTS = 200
GUESTS = 100
#: Domains destroyed while their guests are busy.
DOOMED = range(91, 101)
VICTIMS = 12
#: What the daemon's resident memory may grow by over the run.  The store
#: ends up a few thousand nodes larger; the rest is what 300 connections
#: leave behind in Python's allocator.
RSS_BOUND_KIB = 64 * 1024
#: File descriptors may differ by this much (none expected).
FD_SLACK = 2


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def worker(
    mode: str, directory: Path, *extra: str, pipe: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.soak.worker",
            mode,
            "--socket",
            str(directory / "socket"),
            "--host-dir",
            str(directory),
            *extra,
        ],
        stdout=subprocess.PIPE if pipe else None,
    )


def kill_victim(directory: Path, rng: random.Random) -> None:
    """A process with transactions and requests in flight, SIGKILLed."""
    proc = worker("victim", directory, "--clients", "5", pipe=True)
    assert proc.stdout is not None
    with proc.stdout:
        try:
            line = proc.stdout.readline()  # bounded: the victim prints at once
            assert line == b"ready\n", line
            time.sleep(rng.uniform(0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


@pytest.mark.timeout(SECONDS * 2 + 300)
def test_soak(short_tmp: Path) -> None:
    rng = random.Random(1)
    log = short_tmp / "daemon.log"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyxenstored.cli.xenstored",
            "-N",
            "--socket",
            str(short_tmp / "socket"),
            "--log-file",
            str(log),
            "--host-dir",
            str(short_tmp),
        ]
    )
    try:
        run(short_tmp, daemon, rng)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def run(directory: Path, daemon: subprocess.Popen[bytes], rng: random.Random) -> None:
    wait_for_socket(directory / "socket", daemon)
    with Client(str(directory / "socket")) as dom0:
        soak(directory, daemon, rng, dom0)


def soak(
    directory: Path,
    daemon: subprocess.Popen[bytes],
    rng: random.Random,
    dom0: Client,
) -> None:
    pid = daemon.pid
    host = HostDir(str(directory))
    toolstack = Toolstack(dom0, host)
    started = time.monotonic()
    for domid in range(1, GUESTS + 1):
        toolstack.create_domain(domid)
    dom0.mkdir("/soak")
    # Every guest says hello once, so that what the daemon keeps per live
    # domain (a kick socket, say) is in the "before" figures too.
    for domid in range(1, GUESTS + 1):
        with Client(transport=GuestRing(str(directory), domid, timeout=10)) as g:
            assert g.read("name") == f"guest{domid}".encode()
    built = time.monotonic() - started
    fds_before, rss_before = fds(pid), rss_kib(pid)

    # -- the load -------------------------------------------------------------
    per_clients, per_guests = CLIENTS // WORKERS, GUESTS // WORKERS
    results = [directory / f"result-{i}.json" for i in range(WORKERS)]
    loads = [
        worker(
            "load",
            directory,
            "--clients",
            str(per_clients),
            "--first-client",
            str(i * per_clients),
            "--guests",
            str(per_guests),
            "--first-guest",
            str(1 + i * per_guests),
            "--seconds",
            str(SECONDS),
            "--seed",
            str(i),
            "--out",
            str(results[i]),
        )
        for i in range(WORKERS)
    ]
    events = [("victim", i) for i in range(VICTIMS)]
    events += [("domain", d) for d in DOOMED]
    rng.shuffle(events)
    gap = SECONDS * 2 / 3 / len(events)
    for kind, which in events:
        time.sleep(gap)
        if kind == "victim":
            kill_victim(directory, rng)
        else:
            host.kill_domain(which, remove=True)
    for proc in loads:
        proc.wait(SECONDS + 120)
        assert proc.returncode == 0, f"a load process exited with {proc.returncode}"
    tallies = [json.loads(path.read_text()) for path in results]
    ops = sum(t["ops"] for t in tallies)
    unexpected = [m for t in tallies for m in t["messages"]]
    assert sum(t["unexpected"] for t in tallies) == 0, unexpected

    # -- what must be there, and what must not ---------------------------------
    assert daemon.poll() is None, "the daemon died under load"
    committed: dict[str, str] = {}
    for t in tallies:
        committed.update(t["committed"])
    doomed_homes = tuple(f"/local/domain/{d}/" for d in DOOMED)
    checked = 0
    for path, value in committed.items():
        if path.startswith(doomed_homes):
            continue
        assert dom0.read(path) == value.encode(), path
        checked += 1
    for path in [p for t in tallies for p in t["absent"]]:
        assert not dom0.exists(path), f"{path}: written in an uncommitted transaction"
    with pytest.raises(NoEntry):
        dom0.directory("/soak/victim")
    for domid in DOOMED:
        assert not dom0.is_domain_introduced(domid)
        assert not dom0.exists(f"/local/domain/{domid}/data")
    for domid in range(1, GUESTS + 1):
        if domid not in DOOMED:
            assert dom0.is_domain_introduced(domid)
    assert dom0.control("check") == b"OK\0"
    deadline = time.monotonic() + 10
    while fds(pid) > fds_before + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.1)
    fds_after, rss_after = fds(pid), rss_kib(pid)

    # -- SIGTERM under load ---------------------------------------------------------
    bursts = [
        worker(
            "burst",
            directory,
            "--clients",
            "50",
            "--first-client",
            "1000",
            "--guests",
            "10",
            "--first-guest",
            "1",
            "--seconds",
            "10",
        ),
        worker(
            "burst",
            directory,
            "--clients",
            "50",
            "--first-client",
            "2000",
            "--seconds",
            "10",
        ),
    ]
    time.sleep(2)
    dom0.close()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(30)
    for proc in bursts:
        proc.wait(60)
    text = (directory / "daemon.log").read_text(errors="replace")

    print(
        f"\nsoak: {SECONDS:g} s of load after {built:.1f} s building {GUESTS} domains"
    )
    print(
        f"  operations: {ops}, transaction retries: "
        f"{sum(t['retries'] for t in tallies)}, abrupt closes: "
        f"{sum(t['abrupt_closes'] for t in tallies)}"
    )
    print(
        f"  victims SIGKILLed: {VICTIMS}, domains destroyed mid-request: "
        f"{len(DOOMED)} ({sum(t['deaths'] for t in tallies)} guests noticed)"
    )
    print(
        f"  committed writes read back: {checked}, unexpected errors: "
        f"{len(unexpected)}, crashes: {int(code != 0)}"
    )
    print(
        f"  fds before/after: {fds_before}/{fds_after}, RSS before/after: "
        f"{rss_before // 1024}/{rss_after // 1024} MiB"
    )
    print(f"  SIGTERM under load: exit code {code}")

    assert code == 0, text[-3000:]
    assert not (directory / "socket").exists(), "socket left behind"
    assert "Traceback" not in text, text[-3000:]
    assert " ERROR " not in text, text[-3000:]
    assert fds_after <= fds_before + FD_SLACK, (fds_before, fds_after)
    assert rss_after - rss_before < RSS_BOUND_KIB, (rss_before, rss_after)
    assert all(proc.returncode == 0 for proc in bursts)
