"""The daemon starts, answers Debian's xenstore tools and stops cleanly."""

from __future__ import annotations

import subprocess

from tests.conftest import RunningDaemon


def run(daemon: RunningDaemon, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=daemon.env, capture_output=True, text=True, timeout=10
    )


def test_write_then_read_with_debian_tools(daemon: RunningDaemon) -> None:
    assert run(daemon, "xenstore-write", "/smoke/a", "hello").returncode == 0
    out = run(daemon, "xenstore-read", "/smoke/a")
    assert (out.returncode, out.stdout) == (0, "hello\n")
    assert daemon.socket.stat().st_mode & 0o777 == 0o600


def test_stale_socket_is_replaced_and_live_one_refused(daemon: RunningDaemon) -> None:
    import sys

    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxenstored.cli.xenstored",
            "-N",
            "--socket",
            str(daemon.socket),
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert second.returncode == 1
    assert "another xenstored is serving" in second.stderr
    assert daemon.alive()
