"""CONTROL through Debian's ``xenstore-control``, against pyxenstored and C.

Each command's outcome (exit status, and the error the tool reports) must
be C xenstored 4.17's; what the command does (a report file written, the
request trace switched off and on) is checked on pyxenstored itself.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CDaemon, RunningDaemon

XENSTORE_CONTROL = "/tmp/peers/xenroot/usr/lib/xen-4.17/bin/xenstore-control"

Server = RunningDaemon | CDaemon


def control(server: Server, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [XENSTORE_CONTROL, *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def outcome(server: Server, *args: str) -> str:
    """OK, EINVAL (the tool then lists the commands) or the errno it prints."""
    status, out, err = control(server, *args)
    assert status in (0, 3), (status, out, err)
    if "Command not supported" in err:
        return "EINVAL"
    if err.startswith("Error "):
        return err.split()[1]
    assert err == "", err
    return "OK"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RunningDaemon, CDaemon]]:
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="pyxs-", dir="/tmp"))
    (directory / "py").mkdir()
    ours = RunningDaemon(directory / "py", [])
    try:
        c = CDaemon(directory / "c", [])
        try:
            yield ours, c
        finally:
            c.stop()
    finally:
        ours.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["check", "extra"],
        ["log"],
        ["log", "maybe"],
        ["log", "on", "extra"],
        ["logfile"],
        ["memreport", "a", "b"],
        ["print", "hello"],
        ["print"],
        ["quota", "7"],
        ["quota", "0"],
        ["quota", "set", "nodes", "0"],
        ["quota-soft", "bogus"],
        ["bogus"],
    ],
    ids=" ".join,
)
def test_outcome_as_c(servers: tuple[RunningDaemon, CDaemon], args: list[str]) -> None:
    ours, c = servers
    assert outcome(ours, *args) == outcome(c, *args)


def test_memreport_without_a_trace_is_einval_as_c(
    servers: tuple[RunningDaemon, CDaemon], tmp_path: Path
) -> None:
    # Our fixture daemon traces, C's does not: switch ours off.
    ours = RunningDaemon(tmp_path, [])
    try:
        assert outcome(ours, "log", "off") == "OK"
        assert outcome(ours, "memreport") == outcome(servers[1], "memreport")
        assert outcome(ours, "memreport") == "EINVAL"
    finally:
        ours.stop()


def test_memreport_writes_the_report_to_the_file(
    servers: tuple[RunningDaemon, CDaemon], tmp_path: Path
) -> None:
    ours, _ = servers
    report = tmp_path / "report"
    assert outcome(ours, "memreport", str(report)) == "OK"
    first = report.read_text()
    assert "nodes" in first
    assert "watches" in first
    assert outcome(ours, "memreport", str(report)) == "OK"
    assert report.read_text() == first * 2  # appended, as C does
    assert outcome(ours, "memreport", str(tmp_path / "no" / "such" / "dir")) == (
        "EINVAL"
    )


def test_log_off_stops_the_request_trace_and_on_resumes_it(tmp_path: Path) -> None:
    daemon = RunningDaemon(tmp_path, [])
    try:
        assert outcome(daemon, "log", "off") == "OK"
        size = daemon.trace.stat().st_size
        assert outcome(daemon, "print", "while off") == "OK"
        assert daemon.trace.stat().st_size == size
        assert outcome(daemon, "log", "on") == "OK"
        assert outcome(daemon, "print", "while on") == "OK"
        trace = daemon.trace.read_text()
        assert "while on" in trace
        assert "while off" not in trace
        assert outcome(daemon, "memreport") == "OK"  # into the trace
        assert "watches" in daemon.trace.read_text()[len(trace) :]
        moved = tmp_path / "moved-trace"
        assert outcome(daemon, "logfile", str(moved)) == "OK"
        assert outcome(daemon, "print", "after logfile") == "OK"
        assert "after logfile" in moved.read_text()
        assert "after logfile" not in daemon.trace.read_text()
    finally:
        assert daemon.stop() == 0
