"""``pyxenstore migrate dump`` on a state stream C xenstored really wrote.

The stream is captured once from Debian's C xenstored 4.17 through a live
update (peers/capture-lu-state.sh); the command runs as a process, on the
file, on standard input, and on broken copies of the file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client import Client
from tests.conftest import PEERS, CDaemon

PYXENSTORE = [sys.executable, "-m", "pyxenstored"]


@pytest.fixture(scope="module")
def captured() -> Iterator[Path]:
    """A file holding C's ``state_dump`` with a few nodes and a watch."""
    directory = Path(tempfile.mkdtemp(prefix="pyxs-", dir="/tmp"))
    try:
        daemon = CDaemon(directory / "c", [])
        try:
            with Client(str(daemon.socket)) as xs:
                xs.write("/dump/text", b"it's")
                xs.write("/dump/bytes", b"\x00\x01\xff")
                xs.set_perms("/dump/text", ["n0", "r0"])
                xs.watch("/dump", "tok")
                out = directory / "c.state"
                script = str(PEERS / "capture-lu-state.sh")
                subprocess.run(
                    ["sh", script, str(daemon.socket), str(out)],
                    env=daemon.env,
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
        finally:
            daemon.stop()
        yield out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def dump(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYXENSTORE, "migrate", "dump", *args],
        input=None if stdin is None else stdin.decode("latin-1"),
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=30,
        check=False,
    )


def test_dump_lists_every_record(captured: Path) -> None:
    out = dump(str(captured))
    assert (out.returncode, out.stderr) == (0, "")
    lines = out.stdout.splitlines()
    assert re.fullmatch(
        r"xenstore state stream, version 1, little-endian, \d+ records", lines[0]
    )
    assert re.fullmatch(r"@16 global: socket fd \d+, event channel fd \d+", lines[1])
    assert re.fullmatch(
        r"@32 connection \d+: ring dom0 \(target none\), port \d+, in 0 bytes, "
        r"out 0 bytes \(partial response 0\)",
        lines[2],
    )
    watch = next(i for i, line in enumerate(lines) if " watch " in line)
    assert re.fullmatch(r"@\d+ connection \d+: socket fd \d+, .*", lines[watch - 1])
    assert lines[watch].endswith(": '/dump' token 'tok'")
    nodes = [line.split(" ", 1)[1] for line in lines if " node " in line]
    assert nodes[:3] == [
        "node @releaseDomain = '' (n0)",
        "node @introduceDomain = '' (n0)",
        "node / = '' (n0)",
    ]
    assert "node /dump/text = 'it\\'s' (n0,r0)" in nodes
    assert "node /dump/bytes = '\\x00\\x01\\xff' (n0)" in nodes
    assert dump(stdin=captured.read_bytes()).stdout == out.stdout
    assert dump("-", stdin=captured.read_bytes()).stdout == out.stdout


def broken(captured: Path, directory: Path) -> tuple[Path, int]:
    """A copy of the stream whose /dump/text owner letter is 'x'; its offset."""
    data = bytearray(captured.read_bytes())
    path = data.index(b"/dump/text\0")
    # NODE_DATA: 16 fixed bytes, 4 per permission, then the path (b.5);
    # /dump/text has two permissions.
    letter = path - 8
    assert data[letter : letter + 1] == b"n"
    data[letter] = ord("x")
    bad = directory / "bad.state"
    bad.write_bytes(bytes(data))
    return bad, letter


def test_dump_of_a_bad_stream_is_one_line(captured: Path, short_tmp: Path) -> None:
    bad, offset = broken(captured, short_tmp)
    out = dump(str(bad))
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"pyxenstore: {bad}: bad xenstore state stream: "
        f"at byte {offset}: unknown permission 'x'\n"
    )
    truncated = short_tmp / "cut.state"
    data = captured.read_bytes()
    truncated.write_bytes(data[:-8])
    out = dump(str(truncated))
    assert out.returncode == 1
    assert out.stderr == (
        f"pyxenstore: {truncated}: bad xenstore state stream: "
        f"at byte {len(data) - 8}: no END record\n"
    )
    out = dump(stdin=b"libxl stream")
    assert out.stderr == (
        "pyxenstore: stdin: bad xenstore state stream: "
        "at byte 0: 12 bytes, shorter than the header\n"
    )


def test_dump_of_a_missing_file(short_tmp: Path) -> None:
    out = dump(str(short_tmp / "nothing"))
    assert out.returncode == 1
    assert out.stderr == (
        f"pyxenstore: {short_tmp / 'nothing'}: No such file or directory\n"
    )
