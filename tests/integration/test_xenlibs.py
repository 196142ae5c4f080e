"""The ctypes bindings to the Xen libraries, run under the peers' shim.

The shim (``../shared/peers/shim/xenshim.c``) answers libxenevtchn,
libxengnttab and libxenctrl calls over a host directory (EMULATION.md), but
only when ``LD_PRELOAD`` is set as a process starts.  So the bindings run
in a child process: this file, run as a script, reads one JSON command a
line (``[op, args]``) and answers one JSON line.  The test side checks the
answers against the host directory, which it reads and writes itself: the
files, the ring pages and the datagram sockets of EMULATION.md.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyxenstored.server import xenlibs
from pyxenstored.server.xenlibs import (
    PAGE_SIZE,
    VIRQ_DOM_EXC,
    EventChannels,
    MappedPage,
    VirqInUse,
    XenLibraries,
    XenUnavailable,
)

#: ../shared/peers next to the repository.
PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers"
BUILD = Path("/tmp/peers/build")
SHIM = BUILD / "libxenshim.so"
#: A kick: the port number, 4 bytes in native byte order (EMULATION.md).
KICK = struct.Struct("=I")
DOMID = 5


# -- the child: the bindings, driven one command at a time -------------------


class Bindings:
    """What the child does for each command (its methods are the ops)."""

    def __init__(self, evtchn_fd: int | None) -> None:
        self.libs: XenLibraries | None = None
        self.events: EventChannels | None = None
        if evtchn_fd is not None:
            self.events = EventChannels.fdopen(evtchn_fd)
        self.pages: dict[int, MappedPage] = {}
        self.dom0 = xenlibs.Dom0Xenbus()
        self.dom0_view: memoryview | None = None

    def _events(self) -> EventChannels:
        assert self.events is not None
        return self.events

    def open(self) -> int:
        self.libs = XenLibraries.open()
        self.events = self.libs.events
        return self.events.fileno()

    def open_inheritable(self) -> int:
        self.events = EventChannels.open(inheritable=True)
        return self.events.fileno()

    def reexec(self) -> None:
        """Live update: exec this script again, which adopts the fd."""
        fd = str(self._events().fileno())
        os.execv(sys.executable, [sys.executable, __file__, "--evtchn-fd", fd])

    def blocking(self) -> bool:
        return os.get_blocking(self._events().fileno())

    def bind_virq(self, virq: int) -> int:
        return self._events().bind_virq(virq)

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        return self._events().bind_interdomain(domid, remote_port)

    def unbind(self, port: int) -> None:
        self._events().unbind(port)

    def notify(self, port: int) -> None:
        self._events().notify(port)

    def pending(self) -> int | None:
        return self._events().pending()

    def unmask(self, port: int) -> None:
        self._events().unmask(port)

    def map_ring(self, domid: int) -> list[Any]:
        assert self.libs is not None
        page = self.libs.grants.map_ring(domid)
        self.pages[domid] = page
        view = page.view
        return [view.format, view.nbytes, view.readonly, view.c_contiguous]

    def write_ring(self, domid: int, offset: int, data: str) -> None:
        raw = bytes.fromhex(data)
        self.pages[domid].view[offset : offset + len(raw)] = raw

    def read_ring(self, domid: int, offset: int, size: int) -> str:
        return self.pages[domid].view[offset : offset + size].hex()

    def unmap_ring(self, domid: int) -> bool:
        page = self.pages.pop(domid)
        page.unmap()
        return page.mapped

    def close_all(self) -> list[bool]:
        """Close the bundle; which pages it left mapped."""
        assert self.libs is not None
        self.libs.close()
        return [page.mapped for page in self.pages.values()]

    def info(self, domid: int) -> dict[str, Any] | None:
        assert self.libs is not None
        found = self.libs.control.info(domid)
        if found is None:
            return None
        return {
            "domid": found.domid,
            "dying": found.dying,
            "crashed": found.crashed,
            "shutdown": found.shutdown,
        }

    def dom0_port(self) -> int:
        return self.dom0.port()

    def dom0_map(self) -> int:
        self.dom0_view = self.dom0.map()
        return self.dom0_view.nbytes

    def dom0_write(self, offset: int, data: str) -> None:
        assert self.dom0_view is not None
        raw = bytes.fromhex(data)
        self.dom0_view[offset : offset + len(raw)] = raw

    def dom0_unmap(self) -> None:
        self.dom0_view = None
        self.dom0.unmap()


def serve(argv: list[str]) -> None:
    """The child's loop: one JSON command in, one JSON answer out."""
    fd = int(argv[argv.index("--evtchn-fd") + 1]) if "--evtchn-fd" in argv else None
    bindings = Bindings(fd)
    if fd is not None:
        print(json.dumps({"ok": fd}), flush=True)  # the answer to "reexec"
    for line in sys.stdin:
        op, args = json.loads(line)
        try:
            answer: dict[str, Any] = {"ok": getattr(bindings, op)(*args)}
        except OSError as error:
            answer = {"error": [type(error).__name__, error.errno, str(error)]}
        print(json.dumps(answer), flush=True)


# -- the test side ------------------------------------------------------------


class ChildFailed(Exception):
    """A command raised OSError in the child."""

    def __init__(self, kind: str, code: int | None, text: str) -> None:
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.errno = code
        self.text = text


class Child:
    """The bindings in a child process that has the shim preloaded."""

    def __init__(self, host: Path) -> None:
        env = {**os.environ, "LD_PRELOAD": str(SHIM), "XS_SHIM_DIR": str(host)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def __call__(self, op: str, *args: Any) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([op, args]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the child died during {op}: {self.stop()}")
        answer = json.loads(line)
        if "error" in answer:
            raise ChildFailed(*answer["error"])
        return answer["ok"]

    def stop(self) -> str:
        """End the child; its stderr."""
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture(scope="session")
def shim() -> Path:
    """The peers' shim, built if needed."""
    if not shutil.which("make") or not shutil.which("gcc"):
        pytest.skip("cannot build the peers' shim: make or gcc is missing")
    built = subprocess.run(
        ["make", "-s", "-C", str(PEERS), f"BUILD={BUILD}", str(SHIM)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0 or not SHIM.exists():
        pytest.skip(f"cannot build the peers' shim: {built.stderr.strip()}")
    return SHIM


@pytest.fixture
def host(short_tmp: Path) -> Path:
    """An empty host directory (EMULATION.md)."""
    return short_tmp


@pytest.fixture
def child(shim: Path, host: Path) -> Iterator[Child]:
    """A child with the three libraries open under the shim."""
    running = Child(host)
    try:
        running("open")
        yield running
    finally:
        err = running.stop()
        assert running.proc.returncode == 0, err


def make_ring(host: Path, domid: int) -> Path:
    """Domain ``domid`` exists: its ring page (EMULATION.md)."""
    path = host / f"ring-{domid}"
    path.write_bytes(bytes(PAGE_SIZE))
    return path


def kick(host: Path, port: int) -> None:
    """Kick the daemon side as a guest does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(KICK.pack(port), str(host / "evtchn"))


def test_open_all_gives_a_non_blocking_fd(child: Child, host: Path) -> None:
    assert (host / "evtchn").is_socket()
    assert child("blocking") is False


def test_bind_virq_writes_virq_port(child: Child, host: Path) -> None:
    port = child("bind_virq", VIRQ_DOM_EXC)
    assert port > 0
    assert (host / "virq-port").read_text() == f"{port}\n"


def test_bind_interdomain_writes_port_files(child: Child, host: Path) -> None:
    ports = [child("bind_interdomain", domid, 7) for domid in (5, 6, 7)]
    assert len(set(ports)) == 3
    for domid, port in zip((5, 6, 7), ports, strict=True):
        assert (host / f"port-{domid}").read_text() == f"{port}\n"


def test_notify_sends_the_port_to_the_guest(child: Child, host: Path) -> None:
    port = child("bind_interdomain", DOMID, 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as guest:
        guest.bind(str(host / f"notify-{DOMID}"))
        guest.settimeout(5)
        child("notify", port)
        assert guest.recv(16) == KICK.pack(port)


def test_pending_returns_a_kicked_port_then_none(child: Child, host: Path) -> None:
    child("bind_interdomain", 4, 1)
    port = child("bind_interdomain", DOMID, 1)
    assert child("pending") is None
    kick(host, port)
    assert child("pending") == port
    child("unmask", port)
    assert child("pending") is None


def test_notify_after_unbind_fails(child: Child) -> None:
    port = child("bind_interdomain", DOMID, 1)
    child("notify", port)
    child("unbind", port)
    with pytest.raises(ChildFailed) as failed:
        child("notify", port)
    assert failed.value.kind == "XenError"
    assert failed.value.errno == errno.EINVAL
    assert failed.value.text == f"xenevtchn_notify({port}): Invalid argument"


def test_map_ring_shares_memory_with_the_page(child: Child, host: Path) -> None:
    ring = make_ring(host, DOMID)
    assert child("map_ring", DOMID) == ["B", PAGE_SIZE, False, True]
    child("write_ring", DOMID, 1000, b"from the daemon".hex())
    assert ring.read_bytes()[1000:1015] == b"from the daemon"
    with ring.open("r+b") as page:
        page.seek(PAGE_SIZE - 9)
        page.write(b"the guest")
    assert bytes.fromhex(child("read_ring", DOMID, PAGE_SIZE - 9, 9)) == b"the guest"
    assert child("unmap_ring", DOMID) is False
    assert ring.stat().st_size == PAGE_SIZE


def test_closing_the_libraries_unmaps_the_pages(child: Child, host: Path) -> None:
    make_ring(host, DOMID)
    make_ring(host, 6)
    child("map_ring", DOMID)
    child("map_ring", 6)
    assert child("close_all") == [False, False]


def test_domain_info(child: Child, host: Path) -> None:
    alive = {"domid": 0, "dying": False, "crashed": False, "shutdown": False}
    assert child("info", 0) == alive
    assert child("info", DOMID) is None
    make_ring(host, DOMID)
    assert child("info", DOMID) == {**alive, "domid": DOMID}
    (host / f"dying-{DOMID}").touch()
    assert child("info", DOMID) == {**alive, "domid": DOMID, "dying": True}
    assert child("info", 9) is None


def test_dom0_xenbus(child: Child, host: Path) -> None:
    assert child("dom0_port") == 1
    assert child("dom0_map") == PAGE_SIZE
    child("dom0_write", 2048, b"dom0".hex())
    assert (host / "ring-0").read_bytes()[2048:2052] == b"dom0"
    child("dom0_unmap")


def test_fdopen_adopts_the_fd_across_exec(shim: Path, host: Path) -> None:
    running = Child(host)
    try:
        fd = running("open_inheritable")
        assert running("reexec") == fd
        assert running("blocking") is False
        port = running("bind_interdomain", DOMID, 1)
        kick(host, port)
        assert running("pending") == port
    finally:
        err = running.stop()
    assert running.proc.returncode == 0, err


# -- without the shim ---------------------------------------------------------


@pytest.mark.skipif(
    os.path.exists(EventChannels.DEVICE), reason="a Xen dom0: the device exists"
)
def test_no_event_channel_device_is_one_clear_line() -> None:
    with pytest.raises(XenUnavailable) as failed:
        EventChannels.open()
    assert failed.value.errno == errno.ENOENT
    assert str(failed.value) == (
        "cannot open the event channel device: xenevtchn_open: No such file or "
        "directory (is the xen-evtchn module loaded? /dev/xen/evtchn)"
    )


def test_a_missing_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EventChannels, "SONAME", "libxenevtchn.so.0")
    with pytest.raises(XenUnavailable) as failed:
        EventChannels.open()
    text = str(failed.value)
    assert "\n" not in text
    assert text.startswith("cannot load the event channel library: ")
    assert "libxenevtchn.so.0" in text


def test_unmap_refuses_while_a_view_is_alive() -> None:
    memory = bytearray(PAGE_SIZE)  # stands in for the mapped page
    holder = (ctypes.c_char * PAGE_SIZE).from_buffer(memory)
    unmapped: list[int] = []
    page = MappedPage(ctypes.addressof(holder), unmapped.append, "a page")
    words = page.view.cast("I")
    words[1] = 0x01020304
    assert memory[4:8] == KICK.pack(0x01020304)
    with pytest.raises(BufferError):
        page.unmap()
    assert unmapped == []  # still mapped
    words.release()
    page.unmap()
    page.unmap()
    assert not page.mapped
    assert unmapped == [page.address]
    with pytest.raises(ValueError, match="released"):
        page.view[0] = 1
    del holder


def fake_events(results: dict[str, list[tuple[int, int]]]) -> EventChannels:
    """EventChannels over scripted C functions: (return value, errno) each call."""
    left, right = socket.socketpair()
    right.close()

    def scripted(name: str) -> Callable[..., int]:
        def function(*args: object) -> int:
            value, code = results[name].pop(0)
            ctypes.set_errno(code)
            return value

        return function

    lib = object.__new__(xenlibs._Library)
    lib._functions = {name: scripted(name) for name in results}
    lib._functions["xenevtchn_fd"] = lambda *args: left.detach()
    lib._functions["xenevtchn_close"] = lambda *args: 0
    return EventChannels(lib, 1)


def test_bind_virq_in_use_is_another_daemon() -> None:
    events = fake_events({"xenevtchn_bind_virq": [(-1, errno.EEXIST), (-1, 22)]})
    try:
        with pytest.raises(VirqInUse) as failed:
            events.bind_virq(VIRQ_DOM_EXC)
        assert failed.value.errno == errno.EEXIST
        assert str(failed.value) == (
            "xenevtchn_bind_virq(3): File exists "
            "(another xenstore daemon runs on this host)"
        )
        with pytest.raises(xenlibs.XenError) as other:
            events.bind_virq(VIRQ_DOM_EXC)
        assert not isinstance(other.value, VirqInUse)
    finally:
        os.close(events.fileno())


def test_pending_retries_eintr_and_ends_on_eagain() -> None:
    script = [(-1, errno.EINTR), (7, 0), (-1, errno.EAGAIN), (-1, errno.EIO)]
    events = fake_events({"xenevtchn_pending": script})
    try:
        assert events.pending() == 7
        assert events.pending() is None
        with pytest.raises(xenlibs.XenError, match="xenevtchn_pending"):
            events.pending()
    finally:
        os.close(events.fileno())


if __name__ == "__main__":
    serve(sys.argv[1:])
