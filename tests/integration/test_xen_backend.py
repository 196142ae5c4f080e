"""``pyxenstored --hypervisor xen``: the real Xen libraries' entry points.

The daemon is started as the peers' script starts C xenstored: the shim
preloaded over a host directory (REALXEN.md 6), ``-N``.  Whatever the
``--backend`` of the run, these tests use the Xen backend; the guest,
hostile-ring and migration tests run on it too with ``--backend xen``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.errors import NoEntry
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from tests.conftest import RunningDaemon


def start(directory: Path, *extra: str) -> RunningDaemon:
    return RunningDaemon(directory, ["--host-dir", str(directory), *extra])


@pytest.fixture
def xen_daemon(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningDaemon]:
    monkeypatch.setattr("tests.conftest.BACKEND", ["xen"])
    daemon = start(short_tmp)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def test_the_daemon_runs_on_the_xen_libraries(xen_daemon: RunningDaemon) -> None:
    # An answer means start-up is over (the socket accepts connections
    # from the moment it listens, before the backend is opened).
    with Client(str(xen_daemon.socket)) as dom0:
        dom0.read("/")
    log = xen_daemon.log.read_text()
    assert "Xen (libxenevtchn, libxengnttab, libxenctrl)" in log
    # The shim's files: the VIRQ_DOM_EXC binding and dom0's own port.
    assert (xen_daemon.directory / "virq-port").read_text().strip().isdigit()
    assert (xen_daemon.directory / "port-0").exists()


def test_dom0s_own_ring_answers_at_start_up(xen_daemon: RunningDaemon) -> None:
    # dom0's kernel side of /proc/xen/xsd_kva (ring-0 under the shim).  The
    # page exists once the backend is open: an answer on the socket first.
    with Client(str(xen_daemon.socket)) as dom0:
        dom0.read("/")
    with Client(transport=GuestRing(str(xen_daemon.directory), 0, timeout=10)) as k:
        k.write("/local/domain/0/name", b"Domain-0")
        assert k.read("/tool/xenstored") == b""
    with Client(str(xen_daemon.socket)) as dom0:
        assert dom0.read("/local/domain/0/name") == b"Domain-0"


def test_no_domain_init_skips_dom0s_ring(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.conftest.BACKEND", ["xen"])
    daemon = start(short_tmp, "-D")
    try:
        with Client(str(daemon.socket)) as dom0:
            dom0.read("/")  # start-up is over
        assert not (short_tmp / "port-0").exists()
    finally:
        assert daemon.stop() == 0


def test_a_guest_over_its_granted_ring(xen_daemon: RunningDaemon) -> None:
    with Client(str(xen_daemon.socket)) as dom0:
        Toolstack(dom0, HostDir(str(xen_daemon.directory))).create_domain(3)
        dom0.watch("@releaseDomain", "gone")
        assert dom0.wait_watch(timeout=5) == ("@releaseDomain", "gone")
        with Client(transport=GuestRing(str(xen_daemon.directory), 3)) as guest:
            guest.write("data/x", b"1")
            assert guest.read("name") == b"guest3"
        HostDir(str(xen_daemon.directory)).kill_domain(3, remove=True)
        assert dom0.wait_watch(timeout=5) == ("@releaseDomain", "gone")
        assert not dom0.is_domain_introduced(3)


def test_introduce_of_a_missing_domain_leaves_nothing(
    xen_daemon: RunningDaemon,
) -> None:
    with Client(str(xen_daemon.socket)) as dom0:
        with pytest.raises(NoEntry):
            dom0.introduce(9, 4095, 5)
        assert not dom0.is_domain_introduced(9)
    # The shim would have made a page for it had the daemon asked.
    assert not (xen_daemon.directory / "ring-9").exists()
    assert not (xen_daemon.directory / "port-9").exists()


def test_without_the_libraries_one_line_and_exit_1(short_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxenstored.cli.xenstored",
            "-N",
            "--hypervisor",
            "xen",
            "--socket",
            str(short_tmp / "socket"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    ours = [line for line in proc.stderr.splitlines() if line.startswith("pyxenstored")]
    assert len(ours) == 1, proc.stderr
    # The first interface C opens, named with its device.
    assert "/dev/xen/privcmd" in ours[0]
    assert "Traceback" not in proc.stderr
