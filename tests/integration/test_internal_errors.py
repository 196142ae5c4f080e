"""A bug inside the daemon never costs a client its connection.

The daemon here is the real one with one deliberate bug
(``python -m tests.faulty``): a node whose value is ``boom`` makes the
store raise half way through committing it.  Over a socket and over a
guest's ring the request must be answered EIO, the connection must carry
on, the store must be exactly as before (no half-made parents), CONTROL
``check`` must pass, and the log must hold the traceback once, with the
request.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.errors import InternalError
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from tests.conftest import RunningDaemon

XENSTORE_CONTROL = "/tmp/peers/xenroot/usr/lib/xen-4.17/bin/xenstore-control"
DOMID = 4


@pytest.fixture
def faulty(short_tmp: Path) -> Iterator[RunningDaemon]:
    daemon = RunningDaemon(short_tmp, ["--host-dir", str(short_tmp)], "tests.faulty")
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def tree_of(client: Client, path: str = "/") -> dict[str, tuple[bytes, str]]:
    """Every node below ``path`` with its value and permissions."""
    found: dict[str, tuple[bytes, str]] = {}
    stack = [path]
    while stack:
        current = stack.pop()
        perms = ",".join(str(p) for p in client.get_perms(current))
        found[current] = (client.read(current), perms)
        prefix = current.rstrip("/")
        stack.extend(f"{prefix}/{name}" for name in client.directory(current))
    return found


def check_ok(daemon: RunningDaemon) -> None:
    proc = subprocess.run(
        [XENSTORE_CONTROL, "check"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "OK\n", "")


def logged_failures(daemon: RunningDaemon) -> list[str]:
    return [
        line for line in daemon.log.read_text().splitlines() if "internal error" in line
    ]


def test_over_a_socket(faulty: RunningDaemon) -> None:
    with Client(str(faulty.socket)) as dom0:
        dom0.write("/keep/a", b"1")
        dom0.watch("/", "all")
        assert dom0.wait_watch(timeout=5) == ("/", "all")
        before = tree_of(dom0)
        with pytest.raises(InternalError):
            dom0.write("/new/deep/node", b"boom")
        with pytest.raises(InternalError):
            dom0.write("/keep/a", b"boom")
        # The same connection carries on, and nothing of either write stayed.
        assert tree_of(dom0) == before
        assert dom0.read("/keep/a") == b"1"
        dom0.write("/keep/b", b"2")
        assert dom0.wait_watch(timeout=5) == ("/keep/b", "all")
    check_ok(faulty)
    failures = logged_failures(faulty)
    assert len(failures) == 2, failures
    assert "WRITE" in failures[0]
    assert "/new/deep/node" in failures[0]
    log = faulty.log.read_text()
    assert log.count("Traceback") == 2
    assert "injected failure adding /new/deep/node" in log


def test_in_a_transaction(faulty: RunningDaemon) -> None:
    with Client(str(faulty.socket)) as dom0:
        dom0.write("/keep/a", b"1")
        before = tree_of(dom0)
        tx = dom0.transaction_start()
        dom0.write("/keep/c", b"3", tx=tx)
        dom0.write("/keep/a", b"boom", tx=tx)
        # The commit fails inside the store: EIO, and nothing of it applied.
        with pytest.raises(InternalError):
            dom0.transaction_end(tx, commit=True)
        assert tree_of(dom0) == before
    check_ok(faulty)
    assert len(logged_failures(faulty)) == 1


def test_over_a_ring(faulty: RunningDaemon) -> None:
    with Client(str(faulty.socket)) as dom0:
        Toolstack(dom0, HostDir(str(faulty.directory))).create_domain(DOMID)
        before = tree_of(dom0)
    ring = GuestRing(str(faulty.directory), DOMID, timeout=10)
    with Client(transport=ring) as guest:
        guest.watch("data", "mine")
        assert guest.wait_watch(timeout=5) == ("data", "mine")
        with pytest.raises(InternalError):
            guest.write("data/x/y", b"boom")
        guest.write("data/z", b"fine")
        assert guest.read("data/z") == b"fine"
        assert guest.wait_watch(timeout=5) == ("data/z", "mine")
    with Client(str(faulty.socket)) as dom0:
        after = tree_of(dom0)
        home = f"/local/domain/{DOMID}"
        assert after.pop(f"{home}/data/z")[0] == b"fine"
        if f"{home}/data" not in before:
            after.pop(f"{home}/data")
        assert after == before
    check_ok(faulty)
    assert len(logged_failures(faulty)) == 1
