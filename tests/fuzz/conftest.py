"""One pyxenstored for the whole fuzzing session, and its figures."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon
from tests.fuzz.harness import QUIESCE_TIMEOUT, Harness, Stats

#: Figures of the session's harness, for the terminal summary.
_RESULTS: list[Stats] = []


@pytest.fixture(scope="session")
def fuzz_harness() -> Iterator[Harness]:
    """A daemon serving sockets and two guest rings, started once."""
    directory = Path(tempfile.mkdtemp(prefix="pyxs-fuzz-", dir="/tmp"))
    daemon = RunningDaemon(
        directory,
        [
            "--host-dir",
            str(directory),
            "--quiesce-timeout",
            str(QUIESCE_TIMEOUT),
        ],
    )
    harness: Harness | None = None
    try:
        harness = Harness(daemon)
        _RESULTS.append(harness.stats)
        yield harness
        harness.check("at the end of the session")
    finally:
        if harness is not None:
            harness.close()
        code = daemon.stop()
        log = daemon.log.read_text(errors="replace")
        shutil.rmtree(directory, ignore_errors=True)
    assert code == 0, f"the daemon exited with {code}; log:\n{log[-5000:]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for stats in _RESULTS:
        terminalreporter.section("protocol fuzzer")
        for line in stats.lines():
            terminalreporter.write_line(line)
