"""The state stream codec against Debian's C xenstored 4.17, both ways.

C to us: state is built on a running C xenstored (nodes with an empty, a
text and a binary value, permissions naming existing and missing domains,
a watch held by a live connection), C is made to live-update through the
peers' capture script, and its real ``state_dump`` is decoded record for
record and re-encoded byte for byte.

Us to C: C live-updates into a wrapper that swaps its ``state_dump`` for
our re-encoding of it, with one node added; the same process then serves
that node, every original node, and our connection with its watch, so C
has read every record our writer produced.

C 4.17 writes the special nodes ``@releaseDomain`` and ``@introduceDomain``
*before* the tree, not after it as MIGRATION.md b.6 (from 4.22) says, and
writes neither GLOBAL_QUOTA_DATA nor DOMAIN_DATA.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxenstored.client import Client
from pyxenstored.migration.xsstate import (
    DOMID_INVALID,
    ConnectionData,
    ConnType,
    GlobalData,
    NodeData,
    StateStream,
    WatchData,
    decode_state,
    encode_state,
)
from pyxenstored.perms import Access, Perm
from pyxenstored.wire import HEADER
from tests.conftest import PEERS, CDaemon
from tests.integration.scenario import XENSTORE_CONTROL
from tests.wiretools import wait_until

#: The real daemon, next to xenstore-control in the unpacked Debian package.
XENSTORED = XENSTORE_CONTROL.parent / "xenstored"
TOKEN = "golden-token"
N, R, W, B = Access.NONE, Access.READ, Access.WRITE, Access.BOTH
#: Every node the tests write, and the permissions (owner first) they set.
#: Domain 3 exists (its ring file is there); 2 and 7 do not, so C marks
#: their entries stale.  Dom0 owns them all: C 4.17 writes a node owned by
#: a domain that exists but was never introduced, and then fails to read
#: it back ("FATAL: write node error restoring node").
NODES: dict[str, tuple[bytes, tuple[Perm, ...]]] = {
    "/golden": (b"", (Perm(N, 0),)),
    "/golden/empty": (b"", (Perm(N, 0),)),
    "/golden/text": (b"hello, world", (Perm(R, 0),)),
    "/golden/binary": (bytes([0, 1, 2, 0xFF, 0x0A, 0]), (Perm(N, 0),)),
    "/golden/perms": (
        b"p",
        (Perm(B, 0), Perm(R, 3), Perm(W, 7, stale=True), Perm(N, 2, stale=True)),
    ),
}
#: C xenstored's CONTROL type (PROTOCOL.md 2).
CONTROL = 0
TIMEOUT = 20.0

Tree = list[tuple[str, bytes, list[str]]]


def tree(daemon: CDaemon) -> Tree:
    """Every node in pre-order from ``/``, in the daemon's child order."""
    out: Tree = []
    with Client(str(daemon.socket)) as xs:

        def walk(path: str) -> None:
            perms = [str(p) for p in xs.get_perms(path)]
            out.append((path, xs.read(path), perms))
            for name in xs.directory(path):
                walk(f"{path.rstrip('/')}/{name}")

        walk("/")
    return out


def build_state(daemon: CDaemon) -> Client:
    """Write :data:`NODES`; returns a client watching ``/golden``.

    The caller keeps the client open: its connection and watch are part of
    the state C writes.
    """
    (daemon.directory / "ring-3").write_bytes(bytes(4096))
    with Client(str(daemon.socket)) as xs:
        for path, (value, _) in NODES.items():
            xs.write(path, value)
    for path, (_, perms) in NODES.items():
        # Debian's tool, as a toolstack would do it.
        subprocess.run(
            ["xenstore-chmod", path, *(str(p) for p in perms)],
            env=daemon.env,
            check=True,
            timeout=TIMEOUT,
        )
    watcher = Client(str(daemon.socket))
    watcher.watch("/golden", TOKEN)
    assert watcher.wait_watch(TIMEOUT) == ("/golden", TOKEN)  # the initial event
    return watcher


def capture(daemon: CDaemon, out: Path) -> bytes:
    """C's ``state_dump``, through a live update (peers/capture-lu-state.sh)."""
    proc = subprocess.run(
        ["sh", str(PEERS / "capture-lu-state.sh"), str(daemon.socket), str(out)],
        env=daemon.env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def watcher(c_xenstored: CDaemon) -> Iterator[Client]:
    client = build_state(c_xenstored)
    try:
        yield client
    finally:
        client.close()


def check_watch_fires(watcher: Client, daemon: CDaemon, path: str) -> None:
    with Client(str(daemon.socket)) as xs:
        xs.write(path, b"after")
    assert watcher.wait_watch(TIMEOUT) == (path, TOKEN)


def watcher_connection(stream: StateStream) -> tuple[int, ConnectionData]:
    """The index and record of the connection holding our watch."""
    found = [
        (i, r)
        for i, r in enumerate(stream.records[:-1])
        if isinstance(r, ConnectionData)
        and stream.records[i + 1] == WatchData(r.conn_id, "/golden", TOKEN)
    ]
    assert len(found) == 1, stream.records
    return found[0]


# -- C to us -------------------------------------------------------------------


def test_c_stream_record_for_record(
    c_xenstored: CDaemon, watcher: Client, short_tmp: Path
) -> None:
    before = tree(c_xenstored)
    data = capture(c_xenstored, short_tmp / "c.state")
    stream = decode_state(data)
    records = stream.records
    assert stream.version == 1
    assert not stream.big_endian
    assert data[-8:] == bytes(8)  # END, type 0 and len 0
    assert stream.offsets[0] == 16

    # GLOBAL_DATA first: the listening socket and the event channel device.
    first = records[0]
    assert isinstance(first, GlobalData)
    assert 0 <= first.socket_fd < 1024
    assert 0 <= first.evtchn_fd < 1024
    assert first.socket_fd != first.evtchn_fd

    # dom0's ring, then one record per socket connection: ours (with its
    # watch right after it) and xenstore-control's (with the OK reply to
    # its live-update command queued).
    conns = [r for r in records if isinstance(r, ConnectionData)]
    assert conns[0] == ConnectionData(
        conns[0].conn_id, ConnType.RING, domid=0, tdomid=DOMID_INVALID, evtchn=2
    )
    sockets = [c for c in conns if c.conn_type == ConnType.SOCKET]
    assert len(sockets) == 2
    assert len({c.conn_id for c in conns}) == len(conns)
    fds = {c.socket_fd for c in sockets}
    assert len(fds) == 2
    assert not fds & {first.socket_fd, first.evtchn_fd}
    index, ours = watcher_connection(stream)
    assert (ours.in_data, ours.out_data, ours.unique_id) == (b"", b"", None)
    assert [r for r in records if isinstance(r, WatchData)] == [records[index + 1]]
    (control,) = [c for c in sockets if c is not ours]
    kind, _, tx_id, length = HEADER.unpack_from(control.out_data)
    assert (kind, tx_id, length) == (CONTROL, 0, 3)
    assert control.out_data[HEADER.size :] == b"OK\0"
    assert control.out_resp_len == 0

    # Every node, committed, with its value and permissions.  C 4.17: the
    # two special nodes, then the tree in pre-order from "/".
    nodes = [r for r in records if isinstance(r, NodeData)]
    assert records[-len(nodes) :] == tuple(nodes)
    assert all((n.conn_id, n.tx_id, n.access) == (0, 0, 0) for n in nodes)
    assert [n.path for n in nodes[:2]] == ["@releaseDomain", "@introduceDomain"]
    assert [(n.path, n.value, [str(p) for p in n.perms]) for n in nodes[2:]] == (before)
    by_path = {n.path: n for n in nodes}
    for path, (value, perms) in NODES.items():
        assert by_path[path] == NodeData(path, value, perms)

    # Our encoder writes exactly what C wrote.
    assert encode_state(records, 1) == data

    # The capture re-exec'd C: it still answers, our watch still fires.
    assert alive(c_xenstored.pid)
    check_watch_fires(watcher, c_xenstored, "/golden/after")
    assert tree(c_xenstored)[: len(before)] == before


# -- us to C -------------------------------------------------------------------


def swap_wrapper(directory: Path) -> tuple[Path, Path, Path]:
    """A live-update target that hands C's dump out and takes ours back.

    Returns the wrapper, where C's dump appears and where ours is expected.
    Without ours within the timeout, C restarts from its own dump.
    """
    theirs, ours = directory / "c.state", directory / "py.state"
    wrapper = directory / "swap-wrapper.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'cp "$XENSTORED_RUNDIR/state_dump" "{theirs}.tmp"\n'
        f'mv "{theirs}.tmp" "{theirs}"\n'
        "i=0\n"
        f'while [ ! -e "{ours}" ] && [ $i -lt 300 ]; do\n'
        "    sleep 0.05\n"
        "    i=$((i + 1))\n"
        "done\n"
        f'[ -e "{ours}" ] && cp "{ours}" "$XENSTORED_RUNDIR/state_dump"\n'
        f'exec "{XENSTORED}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, theirs, ours


def wait_until_answering(daemon: CDaemon) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with Client(str(daemon.socket)) as xs:
                xs.exists("/")
            return
        except OSError:
            assert time.monotonic() < deadline, "C xenstored not answering"
            time.sleep(0.05)


EXTRA = NodeData("/golden/extra", b"from python", (Perm(N, 0), Perm(R, 3)))


def test_c_reads_our_stream(
    c_xenstored: CDaemon, watcher: Client, short_tmp: Path
) -> None:
    before = tree(c_xenstored)
    wrapper, theirs, ours = swap_wrapper(short_tmp)
    update = subprocess.Popen(
        [str(XENSTORE_CONTROL), "live-update", "-t", "10", str(wrapper)],
        env=c_xenstored.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(theirs.exists, f"{theirs} written", TIMEOUT)
        data = theirs.read_bytes()
        stream = decode_state(data)
        assert encode_state(stream.records, 1) == data
        # The extra node goes right after the last node of the tree.
        records = list(stream.records)
        last = max(
            i
            for i, r in enumerate(records)
            if isinstance(r, NodeData) and r.path.startswith("/")
        )
        records.insert(last + 1, EXTRA)
        encoded = encode_state(records, 1)
        tmp = ours.with_suffix(".tmp")
        tmp.write_bytes(encoded)
        tmp.rename(ours)
        out, err = update.communicate(timeout=60)
    finally:
        if update.poll() is None:
            update.kill()
            update.wait()
    assert update.returncode == 0, (out, err)
    wait_until_answering(c_xenstored)
    assert alive(c_xenstored.pid)
    assert not (c_xenstored.directory / "state_dump").exists()  # C read it

    after = tree(c_xenstored)
    extra = ("/golden/extra", b"from python", ["n0", "r3"])
    assert extra in after
    assert [node for node in after if node != extra] == before
    # Our connection record: C re-attached our socket, with its watch.
    check_watch_fires(watcher, c_xenstored, "/golden/after")
