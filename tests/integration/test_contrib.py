"""The files under contrib/: they parse, and start the daemon as on a Debian host.

Debian 12's ``/etc/init.d/xen`` (xen-utils-common 4.17) starts the
xenstore daemon with ``start-stop-daemon`` and ``choom``; that exact
command line runs here with the real tools, so the fork, the exit status,
the pid file and the OOM score are what the init script will see.  Only
the hypervisor is missing: the daemon serves its socket alone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.cli.xenstored import build_parser, config_from_args
from tests.integration.test_startup import running, wait_gone

DIST = Path(__file__).resolve().parents[2] / "contrib"
UNIT = DIST / "pyxenstored.service"
DEFAULTS = DIST / "default-xen.example"

#: The installed command, as $XENSTORED names it.
PYXENSTORED = Path(sys.executable).parent / "pyxenstored"


def defaults() -> dict[str, str]:
    """The variables contrib/default-xen.example sets, as sh reads them."""
    out = subprocess.run(
        [
            "sh",
            "-c",
            f'. "{DEFAULTS}"; printf "%s\\n%s" "$XENSTORED" "$XENSTORED_ARGS"',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    xenstored, args = out.split("\n", 1)
    return {"XENSTORED": xenstored, "XENSTORED_ARGS": args}


def exec_start() -> list[str]:
    """The unit's ExecStart, with $XENSTORED_ARGS from the defaults example."""
    line = re.search(r"^ExecStart=(.*)$", UNIT.read_text(), re.MULTILINE)
    assert line is not None
    argv = shlex.split(line.group(1))
    i = argv.index("$XENSTORED_ARGS")
    argv[i : i + 1] = shlex.split(defaults()["XENSTORED_ARGS"])
    return argv


def test_the_unit_and_the_defaults_use_options_the_daemon_takes() -> None:
    assert defaults()["XENSTORED"] == "/usr/bin/pyxenstored"
    argv = exec_start()
    assert argv[0] == "/usr/bin/pyxenstored"
    args = build_parser().parse_args(argv[1:])
    config = config_from_args(args)
    assert args.no_fork
    assert config.socket_path == "/run/xenstored/socket"
    assert config.pid_file == "/run/xenstore.pid"
    assert config.hypervisor == "xen"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd")
def test_systemd_finds_nothing_wrong_in_the_unit(short_tmp: Path) -> None:
    # verify wants ExecStart's program to exist: point it at ours.
    unit = short_tmp / "pyxenstored.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/pyxenstored", str(PYXENSTORED)))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stderr) == (0, "")


def oom_score() -> str:
    """The script's ``choom -n -1000`` where allowed (not in every sandbox)."""
    probe = subprocess.run(
        ["/usr/bin/choom", "-n", "-1000", "true"], capture_output=True, timeout=10
    )
    return "-1000" if probe.returncode == 0 else "0"


@pytest.fixture
def init_script_start(short_tmp: Path) -> Iterator[list[str]]:
    """/etc/init.d/xen's start command line, aimed at ``short_tmp``."""
    pid_file = short_tmp / "xenstore.pid"
    args = ["--hypervisor", "none", "--socket", str(short_tmp / "socket"),
            "--log-file", str(short_tmp / "log")]  # fmt: skip
    # As in the script: $XENSTORED_ARGS is unquoted, then --pid-file.
    yield [
        "start-stop-daemon", "--start", "--quiet", "--pidfile", str(pid_file),
        "--exec", "/usr/bin/choom", "--", "-n", oom_score(), str(PYXENSTORED), "--",
        *args, "--pid-file", str(pid_file),
    ]  # fmt: skip
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if running(pid):
            os.kill(pid, 15)
            assert wait_gone(pid)


@pytest.mark.skipif(
    shutil.which("start-stop-daemon") is None or not Path("/usr/bin/choom").exists(),
    reason="needs Debian's start-stop-daemon and util-linux's choom",
)
def test_the_init_script_s_command_starts_it_once(
    short_tmp: Path, init_script_start: list[str]
) -> None:
    first = subprocess.run(init_script_start, capture_output=True, timeout=60)
    assert first.returncode == 0, first
    pid = int((short_tmp / "xenstore.pid").read_text())
    assert running(pid)
    score = init_script_start[init_script_start.index("-n") + 1]
    assert Path(f"/proc/{pid}/oom_score_adj").read_text() == f"{score}\n"
    env = {**os.environ, "XENSTORED_PATH": str(short_tmp / "socket")}
    read = subprocess.run(["xenstore-read", "-s", "/"], env=env, timeout=10)
    assert read.returncode == 0  # what the script waits for
    # /etc/init.d/xen start again: the pid file is held, nothing changes.
    again = subprocess.run(init_script_start, capture_output=True, timeout=60)
    assert again.returncode == 0, again
    assert int((short_tmp / "xenstore.pid").read_text()) == pid
    assert running(pid)
