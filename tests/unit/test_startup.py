"""The pieces of start-up one by one: report pipe, pid file, sd_notify, options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pyxenstored.cli.xenstored import build_parser, config_from_args
from pyxenstored.server import startup
from pyxenstored.server.startup import (
    Launch,
    Outcome,
    PidFile,
    PidFileHeld,
    Report,
    Reporter,
)

# -- the report pipe -----------------------------------------------------------


@pytest.mark.parametrize(
    "report",
    [
        Report(Outcome.READY),
        Report(Outcome.HELD, "another daemon (pid 7) holds the pid file /run/x"),
        Report(Outcome.FAILED, "/run/xenstored/socket exists and is not a socket"),
    ],
)
def test_a_report_survives_the_pipe(report: Report) -> None:
    assert Report.decode(report.encode()) == report


def test_a_report_is_one_line_whatever_the_message() -> None:
    data = Report(Outcome.FAILED, "two\nlines\n").encode()
    assert data == b"failed two lines\n"


@pytest.mark.parametrize("data", [b"", b"nonsense\n", b"\n"])
def test_no_report_decodes_as_none(data: bytes) -> None:
    assert Report.decode(data) is None


def _child(code: str) -> Launch:
    """A child process holding the write end of a report pipe, as a Launch."""
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    argv = [sys.executable, "-c", code, str(write_fd)]
    pid = os.posix_spawn(sys.executable, argv, os.environ)
    os.close(write_fd)
    return Launch(pid, read_fd)


def test_the_parent_reads_what_the_child_reports() -> None:
    launch = _child("import os, sys; os.write(int(sys.argv[1]), b'ready \\n')")
    assert launch.wait() == Report(Outcome.READY)
    os.waitpid(launch.pid, 0)


def test_a_child_that_exits_without_a_report_is_a_failure() -> None:
    launch = _child("import os; os._exit(3)")
    assert launch.wait() == Report(
        Outcome.FAILED, "the daemon exited with status 3 during start-up"
    )


def test_a_child_killed_before_reporting_is_a_failure() -> None:
    launch = _child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert launch.wait() == Report(
        Outcome.FAILED, "the daemon was killed by SIGKILL during start-up"
    )


def test_a_foreground_reporter_has_nobody_to_tell() -> None:
    reporter = Reporter(None)
    assert not reporter.waiting
    assert not reporter.report(Report(Outcome.READY))


def test_a_reporter_reports_once() -> None:
    read_fd, write_fd = os.pipe()
    reporter = Reporter(write_fd)
    assert reporter.waiting
    assert reporter.report(Report(Outcome.READY))
    assert not reporter.report(Report(Outcome.FAILED, "late"))
    assert os.read(read_fd, 100) == b"ready\n"
    assert os.read(read_fd, 100) == b""  # closed after the one report
    os.close(read_fd)


# -- the pid file ---------------------------------------------------------------

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_pid_file_locked_elsewhere_is_held(tmp_path: Path) -> None:
    path = tmp_path / "pid"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(PidFileHeld) as held:
            PidFile.acquire(str(path))
        assert held.value.pid == holder.pid
        assert str(held.value) == (
            f"another daemon (pid {holder.pid}) holds the pid file {path}"
        )
        holder.communicate(b"")
    pid_file = PidFile.acquire(str(path))  # free once the holder is gone
    pid_file.release()


def test_a_pid_file_is_written_then_removed(tmp_path: Path) -> None:
    path = tmp_path / "pid"
    pid_file = PidFile.acquire(str(path))
    assert path.read_text() == ""
    pid_file.write()
    assert path.read_text() == f"{os.getpid()}\n"
    pid_file.release()
    assert not path.exists()
    pid_file.release()  # twice is harmless


def test_a_pid_file_we_neither_created_nor_wrote_is_left(tmp_path: Path) -> None:
    path = tmp_path / "pid"
    path.write_text("99\n")
    PidFile.acquire(str(path)).release()
    assert path.read_text() == "99\n"


def test_a_pid_file_that_cannot_be_opened_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PidFile.acquire(str(tmp_path / "no" / "pid"))


# -- sd_notify ------------------------------------------------------------------


def test_notify_addresses() -> None:
    assert startup.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert startup.notify_address("@sd/notify") == b"\0sd/notify"


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not startup.notify_systemd("READY=1", {})
    assert not startup.notify_systemd("READY=1", {"NOTIFY_SOCKET": ""})


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(short_tmp: Path, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"pyxs-unit-{uuid.uuid4().hex}"
            sock.bind(b"\0" + name.encode())
            address = "@" + name
        else:
            address = str(short_tmp / "notify")
            sock.bind(address)
        assert startup.notify_systemd("READY=1", {"NOTIFY_SOCKET": address})
        assert sock.recv(100) == b"READY=1"


def test_an_unreachable_notify_socket_is_an_os_error(short_tmp: Path) -> None:
    with pytest.raises(FileNotFoundError):
        startup.notify_systemd("READY=1", {"NOTIFY_SOCKET": str(short_tmp / "none")})


# -- the options C's command lines use -------------------------------------------


def test_defaults_of_the_new_options() -> None:
    args = build_parser().parse_args([])
    config = config_from_args(args)
    assert (args.no_fork, args.output_pid, args.keep_orphans) == (False,) * 3
    assert config.domain_init
    assert config.master_domid is None
    assert not config.live_update
    assert config.hypervisor == "auto"


def test_c_options_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["-D", "--master-domid", "7", "-U", "--hypervisor", "emulated", "-F", "/p"]
    )
    config = config_from_args(args)
    assert not config.domain_init
    assert config.master_domid == 7
    assert config.live_update
    assert config.hypervisor == "emulated"
    assert config.pid_file == "/p"


@pytest.mark.parametrize(
    ("argv", "value"),
    [([], None), (["-I"], "on"), (["-I", "off"], "off"), (["--internal-db=on"], "on")],
)
def test_internal_db_takes_an_optional_on_or_off(
    argv: list[str], value: str | None
) -> None:
    assert build_parser().parse_args(argv).internal_db == value


def test_help_answers_to_c_s_capital_h(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["-H"])
    assert exit_.value.code == 0
    assert "--no-fork" in capsys.readouterr().out
