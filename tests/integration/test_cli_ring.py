"""``pyxenstore --ring DIR --domid N``: the CLI acting as a guest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.sim.ring import HostDir
from pyxenstored.sim.toolstack import Toolstack
from tests.conftest import RunningDaemon

DOMID = 9


@pytest.fixture
def guest_host(host_daemon: RunningDaemon) -> RunningDaemon:
    with Client(str(host_daemon.socket)) as dom0:
        Toolstack(dom0, HostDir(str(host_daemon.directory))).create_domain(DOMID)
    return host_daemon


def guest(
    host: RunningDaemon, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pyxenstored", "--ring", str(host.directory)]
    return subprocess.run(
        [*argv, "--domid", str(DOMID), *args],
        capture_output=True,
        text=True,
        timeout=30,
        input=stdin,
    )


def test_guest_reads_relative_and_absolute(guest_host: RunningDaemon) -> None:
    out = guest(guest_host, "read", "name", f"/local/domain/{DOMID}/domid")
    assert (out.returncode, out.stdout) == (0, f"guest{DOMID}\n{DOMID}\n")


def test_guest_writes_only_where_allowed(guest_host: RunningDaemon) -> None:
    assert guest(guest_host, "write", "data/x", "hello").returncode == 0
    with Client(str(guest_host.socket)) as dom0:
        assert dom0.read(f"/local/domain/{DOMID}/data/x") == b"hello"
        assert dom0.get_perms(f"/local/domain/{DOMID}/data/x")[0].domid == DOMID
    refused = guest(guest_host, "write", "/local/domain/0/x", "evil")
    assert refused.returncode == 1
    assert "EACCES" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_guest_ls_list_exists_rm(guest_host: RunningDaemon) -> None:
    listing = guest(guest_host, "list", "device/vif/0")
    assert listing.stdout.split() == ["backend", "backend-id", "state", "mac"]
    assert guest(guest_host, "exists", "control/shutdown").returncode == 0
    assert guest(guest_host, "exists", "nope").returncode == 1
    assert guest(guest_host, "write", "data/gone", "1").returncode == 0
    assert guest(guest_host, "rm", "data/gone").returncode == 0
    assert guest(guest_host, "exists", "data/gone").returncode == 1
    tree = guest(guest_host, "ls", "-f", f"/local/domain/{DOMID}/cpu")
    assert tree.stdout == f'/local/domain/{DOMID}/cpu/0 = ""\n' + (
        f'/local/domain/{DOMID}/cpu/0/availability = "online"\n'
    )


def test_guest_watch_sees_dom0_write(guest_host: RunningDaemon) -> None:
    argv = [sys.executable, "-m", "pyxenstored", "--ring", str(guest_host.directory)]
    with subprocess.Popen(
        [*argv, "--domid", str(DOMID), "watch", "-n", "2", "control/shutdown"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "control/shutdown\n"  # the initial event
        with Client(str(guest_host.socket)) as dom0:
            dom0.write(f"/local/domain/{DOMID}/control/shutdown", b"poweroff")
        assert proc.stdout.readline() == "control/shutdown\n"
        assert proc.wait(10) == 0


def test_ring_options_are_checked(guest_host: RunningDaemon) -> None:
    alone = subprocess.run(
        [sys.executable, "-m", "pyxenstored", "--ring", "/tmp", "read", "x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert alone.returncode == 1
    assert "--ring and --domid go together" in alone.stderr


@pytest.mark.parametrize("domid", ["x", "-1", "1.0", "\u00b2"])
def test_domid_must_be_a_plain_number(guest_host: RunningDaemon, domid: str) -> None:
    # "²" passes str.isdigit() but not int(): one line, not a traceback.
    argv = [sys.executable, "-m", "pyxenstored", "--ring", str(guest_host.directory)]
    bad = subprocess.run(
        [*argv, "--domid", domid, "read", "name"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"pyxenstore: --domid takes a number, not {domid!r}"
    ]
