"""Differential test: one guest domain, three daemons, the same answers.

A toolstack (dom0 :class:`~pyxenstored.client.Client` on the socket) builds
domain :data:`DOMID` exactly as :class:`~pyxenstored.sim.toolstack.Toolstack`
does (ring page in the host directory, libxl's skeleton with its
permissions, INTRODUCE).  The guest then talks over its emulated ring
(:class:`~pyxenstored.sim.ring.GuestRing`): relative and absolute paths,
permissions and their hiding, values bigger than the 1 KiB ring, the node
size and node count quotas, watches and their permission filtering,
transactions with a conflict caused by dom0, SET_PERMS, GET_DOMAIN_PATH;
finally the domain dies and dom0 watches the clean-up.

The script runs against pyxenstored, Debian's C xenstored 4.17 and
oxenstored 4.17 (the last two under the peers' LD_PRELOAD shim, which
follows the same host-directory conventions).  Every answer is recorded as
plain data (a value, or the error name) under a unique step name:

* pyxenstored's answers are checked against :data:`EXPECTED`, what
  PROTOCOL.md prescribes for the steps that matter most;
* C must give pyxenstored's answers except in :data:`DELIBERATE`, where
  PROTOCOL.md makes us differ (each entry names its section);
* oxenstored must give pyxenstored's answers except in
  :data:`OX_DEVIATIONS`, its known differences, each with the answer it
  gives and why.  Both lists are checked both ways: a listed step whose
  answers agree after all fails too, so the lists cannot rot.

Events are collected without sleeping: a daemon handles a connection's
requests in order and queues the events a request causes before that
request's reply reaches anyone, so after a cheap *barrier* request
(``GET_DOMAIN_PATH 0``) on the watching connection every event caused so
far has been read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from pyxenstored.client.sync import Client
from pyxenstored.errors import BrokenConnection, RemoteProtocolError, XsError
from pyxenstored.perms import Perm
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack, domain_skeleton
from tests.conftest import CDaemon, OxDaemon, RunningDaemon
from tests.ringtools import drain

DOMID = 5
HOME = f"/local/domain/{DOMID}"
VM = f"/vm/{uuid.UUID(int=DOMID)}"
BACKEND = f"/local/domain/0/backend/vif/{DOMID}/0"
#: The lowered node-count quota given to every daemon at start.
NODE_QUOTA = 64
#: Below this many recorded answers the scenario has lost coverage.
MIN_OPERATIONS = 60
#: A bounded wait for what happens asynchronously (domain death).
EVENT_TIMEOUT = 10.0

Answer = object


# -- recording -------------------------------------------------------------


def _plain(value: object) -> Answer:
    """An answer as comparable, readable data."""
    if value is None:
        return "OK"
    if isinstance(value, bytes) and len(value) > 48:
        digest = hashlib.sha256(value).hexdigest()[:12]
        return f"<{len(value)} bytes {digest}>"
    if isinstance(value, list) and value and isinstance(value[0], Perm):
        return [str(p) for p in value]
    return value


@dataclass
class Record:
    """The answers of one daemon, by step name, in the order taken."""

    answers: dict[str, Answer] = field(default_factory=dict)

    def add(self, name: str, answer: Answer) -> Answer:
        assert name not in self.answers, f"step {name} recorded twice"
        self.answers[name] = answer
        return answer

    def call(self, name: str, func: Callable[[], object]) -> Answer:
        """Run one request; record its value or its error name."""
        try:
            value = func()
        except XsError as error:
            return self.add(name, f"error {error.code}")
        except (BrokenConnection, RemoteProtocolError) as error:
            return self.add(name, f"broken: {error}")
        return self.add(name, _plain(value))


def walk(client: Client, path: str) -> Iterator[str]:
    """Every node at and below ``path`` (children in any order)."""
    yield path
    for child in client.directory(path):
        yield from walk(client, f"{path}/{child}")


# -- the scenario -------------------------------------------------------------


def build_domain(rec: Record, dom0: Client, host: HostDir) -> None:
    """What libxl does, plus a few dom0 nodes for the guest to look at."""
    Toolstack(dom0, host).create_domain(DOMID)
    # In the guest's own area but owned by dom0 and unreadable to the guest.
    dom0.write(f"{HOME}/data/secret", b"s")
    dom0.set_perms(f"{HOME}/data/secret", ["n0"])
    # Nodes dom0 makes directly in the home inherit "n0 r<guest>": the guest
    # reads them and they do not count against its node quota.
    # A value whose READ reply crosses the 1 KiB ring four times.
    huge = bytes(range(256)) * 15 + b"h" * 230
    rec.call("dom0 writes 4070 bytes", lambda: dom0.write(f"{HOME}/huge", huge))
    # 64 children of 63-byte names: a DIRECTORY reply of exactly 4096 bytes.
    for i in range(64):
        dom0.write(f"{HOME}/many/{i:02d}{'c' * 61}", b"")


def run_scenario(socket: Path, host_dir: Path) -> Record:
    """The whole script against one daemon; the answers recorded."""
    rec = Record()
    host = HostDir(str(host_dir))
    with Client(str(socket)) as dom0:
        build_domain(rec, dom0, host)
        ring = GuestRing(str(host_dir), DOMID, timeout=EVENT_TIMEOUT)
        guest = Client(transport=ring)
        try:
            _paths(rec, guest)
            _permissions(rec, guest, dom0)
            _big_values(rec, guest)
            _quotas(rec, guest)
            _watches(rec, guest, dom0)
            _transactions(rec, guest, dom0)
            _set_perms(rec, guest)
            _domain_paths(rec, guest)
            _privileged(rec, guest, dom0, host)
            rec.add("ring server features", ring.ring.server_features)
            _reintroduce(rec, guest, dom0, ring)
            rec.add("ring error field", ring.ring.error)
            _oversized_event(rec, guest)
        finally:
            guest.close()
        _death(rec, dom0, host)
    return rec


def _paths(rec: Record, g: Client) -> None:
    """Relative and absolute paths; reads, writes, mkdir, rm, directory."""
    rec.call("read name (relative)", lambda: g.read("name"))
    rec.call("read name (absolute)", lambda: g.read(f"{HOME}/name"))
    rec.call("read domid", lambda: g.read("domid"))
    rec.call("read vm path", lambda: g.read("vm"))
    rec.call("write data/x relative", lambda: g.write("data/x", b"1"))
    rec.call("read data/x relative", lambda: g.read("data/x"))
    rec.call("read data/x absolute", lambda: g.read(f"{HOME}/data/x"))
    rec.call("write data/y absolute", lambda: g.write(f"{HOME}/data/y", b"abs"))
    rec.call("read data/y relative", lambda: g.read("data/y"))
    rec.call("write empty value", lambda: g.write("data/empty", b""))
    rec.call("read empty value", lambda: g.read("data/empty"))
    rec.call("write binary value", lambda: g.write("data/bin", b"\0\1\xff\0"))
    rec.call("read binary value", lambda: g.read("data/bin"))
    rec.call("mkdir data/dir", lambda: g.mkdir("data/dir"))
    rec.call("mkdir data/dir again", lambda: g.mkdir("data/dir"))
    rec.call("read new dir", lambda: g.read("data/dir"))
    rec.call("write data/dir/a", lambda: g.write("data/dir/a", b"A"))
    rec.call("write data/dir/b", lambda: g.write(f"{HOME}/data/dir/b", b"B"))
    rec.call("write deep, parents made", lambda: g.write("data/p/q/r", b"deep"))
    rec.call("ls data/dir relative", lambda: g.directory("data/dir"))
    rec.call("ls data/dir absolute", lambda: g.directory(f"{HOME}/data/dir"))
    rec.call("ls data/p/q", lambda: g.directory("data/p/q"))
    rec.call("ls empty dir", lambda: g.directory("data/dir/a"))
    rec.call("rm data/dir/a", lambda: g.rm("data/dir/a"))
    rec.call("ls data/dir after rm", lambda: g.directory("data/dir"))
    rec.call("exists removed", lambda: g.exists("data/dir/a"))
    rec.call("rm missing, parent exists", lambda: g.rm("data/missing"))
    rec.call("rm missing, parent missing", lambda: g.rm("data/no/such"))
    rec.call("rm subtree", lambda: g.rm("data/p"))
    rec.call("read removed subtree", lambda: g.read("data/p/q/r"))
    rec.call("perms of own node", lambda: g.get_perms("data/x"))
    rec.call("perms of ro node", lambda: g.get_perms("name"))
    rec.call("perms of frontend", lambda: g.get_perms("device/vif/0"))
    rec.call("perms of own dir", lambda: g.get_perms("data"))
    rec.call("read bad path //", lambda: g.read("data//x"))
    rec.call("read bad path trailing /", lambda: g.read(f"{HOME}/data/"))
    rec.call("read bad char", lambda: g.read("data/x y"))


def _permissions(rec: Record, g: Client, dom0: Client) -> None:
    """Writes outside the guest's permissions; hiding existence (5.4)."""
    rec.call("write ro node", lambda: g.write("name", b"evil"))
    rec.call("write dom0 home", lambda: g.write("/local/domain/0/foo", b"x"))
    rec.call("write at top", lambda: g.write("/toplevel", b"x"))
    rec.call("mkdir in ro home", lambda: g.mkdir("newnode"))
    rec.call("rm ro node", lambda: g.rm("name"))
    rec.call("rm own home", lambda: g.rm(HOME))
    rec.call("write other domain", lambda: g.write("/local/domain/7/x", b"x"))
    rec.call("read backend state", lambda: g.read(f"{BACKEND}/state"))
    rec.call("read backend dir", lambda: g.read("/local/domain/0/backend"))
    rec.call("ls dom0 home", lambda: g.directory("/local/domain/0"))
    rec.call("read vm name", lambda: g.read(f"{VM}/name"))
    rec.call("read libxl type", lambda: g.read(f"/libxl/{DOMID}/type"))
    rec.call("ls root", lambda: g.directory("/"))
    rec.call("read dom0 secret", lambda: g.read(f"{HOME}/data/secret"))
    rec.call("perms dom0 secret", lambda: g.get_perms("data/secret"))
    rec.call("rm dom0 secret", lambda: g.rm("data/secret"))
    rec.call("write dom0 secret", lambda: g.write("data/secret", b"x"))
    # Hiding: missing nodes answer ENOENT only where the nearest existing
    # ancestor grants the same kind of access.
    rec.call("hide: read under dom0 home", lambda: g.read("/local/domain/0/nope"))
    rec.call("hide: read under own home", lambda: g.read("nope"))
    rec.call("hide: read under backend", lambda: g.read(f"{BACKEND}/nope"))
    rec.call("hide: read under libxl", lambda: g.read(f"/libxl/{DOMID}/nope"))
    rec.call("hide: read under secret", lambda: g.read("data/secret/nope"))
    rec.call("hide: ls deep under root", lambda: g.directory("/nope/deeper"))
    rec.call("hide: perms under libxl", lambda: g.get_perms(f"/libxl/{DOMID}/x"))
    rec.call("hide: write under ro", lambda: g.write("control/nope/x", b"x"))
    rec.call("hide: read under ro", lambda: g.read("control/nope"))
    rec.call("hide: rm under dom0", lambda: g.rm("/local/domain/0/nope/x"))
    rec.call("ls data with secret", lambda: sorted(g.directory("data")))
    rec.call("guest reads dom0-made huge value", lambda: g.read("huge"))
    rec.call("ls 4096-byte reply", lambda: g.directory("many"))
    dom0.rm(f"{HOME}/many")


def _big_values(rec: Record, g: Client) -> None:
    """Values that wrap the 1 KiB ring, and a 4096-byte request payload."""
    for size in (1000, 1500, 2000):
        value = bytes((i * 7 + size) & 0xFF for i in range(size))
        rec.call(f"write {size} bytes", partial(g.write, f"data/v{size}", value))
        rec.call(f"read {size} bytes", partial(g.read, f"data/v{size}"))
    # Many medium messages so the free-running indices pass the array end
    # at every possible offset class.
    for i in range(6):
        rec.call(f"write 700 #{i}", partial(g.write, "data/v700", bytes([i]) * 700))
    rec.call("read 700", lambda: g.read("data/v700"))
    # node-size quota (2048 with 16 + 8 * perms + value + children).
    rec.call("quota: 2040-byte value", lambda: g.write("data/q2040", b"q" * 2040))
    rec.call("quota: 3000-byte value", lambda: g.write("data/q3000", b"q" * 3000))
    path = "data/full"
    value = b"f" * (4096 - len(path) - 1)
    rec.call("quota: 4096-byte payload", lambda: g.write(path, value))
    rec.call("after refusals", lambda: g.read("data/v2000"))
    for size in (1000, 1500, 2000):
        rec.call(f"rm {size}", partial(g.rm, f"data/v{size}"))


def _quotas(rec: Record, g: Client) -> None:
    """The node count quota (lowered to NODE_QUOTA at start)."""
    created = 0
    refusal: Answer = "none"
    for i in range(NODE_QUOTA + 1):
        try:
            g.write(f"data/n/{i}", b"")
        except XsError as error:
            refusal = f"error {error.code}"
            break
        created += 1
    rec.add("quota: nodes created", created)
    rec.add("quota: node refusal", refusal)
    rec.call("quota: write existing ok", lambda: g.write("data/x", b"1"))
    rec.call("quota: rm frees", lambda: g.rm("data/n"))
    rec.call("quota: create after rm", lambda: g.write("data/n2", b""))


def _watches(rec: Record, g: Client, dom0: Client) -> None:
    """Relative/absolute watches; events filtered by permissions (6.6)."""
    rec.call("watch relative", lambda: g.watch("data", "rel"))
    rec.call("watch absolute", lambda: g.watch(f"{HOME}/data", "abs"))
    rec.call("watch same again", lambda: g.watch("data", "rel"))
    rec.call("watch dom0 backend", lambda: g.watch("/local/domain/0/backend", "be"))
    rec.call("watch unreadable", lambda: g.watch("/libxl", "libxl"))
    rec.add("initial events", drain(g))
    g.write("data/w", b"1")
    rec.add("events: own write", drain(g))
    g.mkdir("data/wdir")
    g.mkdir("data/wdir")
    rec.add("events: mkdir twice", drain(g))
    dom0.write("/local/domain/0/backend/hidden", b"x")
    dom0.write(f"/libxl/{DOMID}/type", b"pv")
    rec.add("events: unreadable writes", drain(g))
    dom0.write(f"{BACKEND}/state", b"2")
    rec.add("events: readable backend write", drain(g))
    dom0.write(f"{HOME}/data/secret", b"t")
    rec.add("events: unreadable node, readable parent", drain(g))
    dom0.write(f"{HOME}/data/secret/inner", b"t")
    rec.add("events: unreadable node and parent", drain(g))
    g.write("data/wdir/leaf", b"1")
    g.watch("data/wdir/leaf", "leaf")
    g.watch("data/wdir/none", "none")
    drain(g)
    g.rm("data/wdir")
    rec.add("events: rm subtree", drain(g))
    rec.call("unwatch relative", lambda: g.unwatch("data", "rel"))
    rec.call("unwatch again", lambda: g.unwatch("data", "rel"))
    rec.call("unwatch unknown", lambda: g.unwatch("data", "nobody"))
    g.write("data/w", b"3")
    rec.add("events: after unwatch", drain(g))


def _transactions(rec: Record, g: Client, dom0: Client) -> None:
    """A conflict caused by dom0 (EAGAIN), abort, retry, commit events."""
    tx = g.transaction_start()
    rec.call("tx: read", lambda: g.read("data/x", tx))
    rec.call("tx: write", lambda: g.write("data/t1", b"in tx", tx))
    rec.call("tx: read own write", lambda: g.read("data/t1", tx))
    rec.call("tx: invisible outside", lambda: g.read("data/t1"))
    rec.add("events: tx write", drain(g))
    dom0.write(f"{HOME}/data/x", b"1")  # same value: still a conflict
    rec.add("events: dom0 conflicting write", drain(g))
    rec.call("tx: commit conflict", lambda: g.transaction_end(tx))
    rec.call("tx: nothing applied", lambda: g.read("data/t1"))
    rec.call("tx: end again", lambda: g.transaction_end(tx))
    rec.add("events: failed commit", drain(g))
    tx = g.transaction_start()
    g.write("data/t2", b"x", tx)
    rec.call("tx: abort", lambda: g.transaction_end(tx, commit=False))
    rec.call("tx: aborted invisible", lambda: g.read("data/t2"))
    rec.call("tx: unknown id read", lambda: g.read("data/x", 0x7777))
    rec.call("tx: unknown id end", lambda: g.transaction_end(0x7777))
    attempts: list[int] = []

    def body(tx: int) -> bytes:
        attempts.append(tx)
        value = g.read("data/x", tx)
        if len(attempts) == 1:
            dom0.write(f"{HOME}/data/x", b"2")
        g.write("data/t1", value + b"+", tx)
        g.write("data/t3", b"three", tx)
        return value

    rec.call("tx: retried body", lambda: g.transaction(body, attempts=5))
    rec.add("tx: attempts", len(attempts))
    rec.call("tx: committed t1", lambda: g.read("data/t1"))
    rec.call("tx: committed t3", lambda: g.read("data/t3"))
    rec.add("events: commit", sorted(drain(g)))


def _set_perms(rec: Record, g: Client) -> None:
    """SET_PERMS by the guest on its own node and others' (5.3)."""
    rec.call("perms: share read", lambda: g.set_perms("data/x", ["n5", "r0"]))
    rec.call("perms: shared", lambda: g.get_perms("data/x"))
    rec.call("perms: owner letter", lambda: g.set_perms("data/x", ["b5"]))
    rec.call("perms: owner letter kept", lambda: g.get_perms("data/x"))
    rec.call("perms: give away", lambda: g.set_perms("data/x", ["n0"]))
    rec.call("perms: give away, keep read", lambda: g.set_perms("data/x", ["n0", "r5"]))
    rec.call("perms: unchanged", lambda: g.get_perms("data/x"))
    rec.call("perms: not owner", lambda: g.set_perms("name", ["n5"]))
    rec.call("perms: unreadable", lambda: g.set_perms("data/secret", ["n5"]))
    rec.call("perms: missing", lambda: g.set_perms("data/missing", ["n5"]))
    rec.call("perms: absent domain", lambda: g.set_perms("data/y", ["n5", "r7"]))
    rec.call("perms: absent domain kept", lambda: g.get_perms("data/y"))
    six = ["n5", "r0", "w0", "b0", "r0", "r0"]
    rec.call("perms: over node-permissions", lambda: g.set_perms("data/y", six))
    rec.call("perms: five", lambda: g.set_perms("data/y", six[:5]))


def _oversized_event(rec: Record, g: Client) -> None:
    """A 4096-byte WATCH payload: its initial event fits exactly; an event
    on a longer path would not, and is dropped (PROTOCOL.md 1.1).  Last of
    the guest's steps: oxenstored breaks the connection here."""
    token = "T" * (4096 - len("data\0") - 1)
    drain(g)

    def events() -> list[tuple[str, int]]:
        return [(p, len(t)) for p, t in drain(g)]

    # A watch with a short token beside it must still get its event.
    rec.call("watch short token", lambda: g.watch("data", "small"))
    rec.call("watch 4096-byte payload", lambda: g.watch("data", token))
    rec.call("events: 4096 initial", events)
    rec.call("write under big watch", lambda: g.write("data/w", b"2"))
    rec.call("events: too big dropped", events)
    rec.call("unwatch big token", lambda: g.unwatch("data", token))


def _privileged(rec: Record, g: Client, dom0: Client, host: HostDir) -> None:
    """Domain management is dom0's; special watches are filtered (6.5)."""
    drain(g)
    rec.call("guest introduce", lambda: g.introduce(7, 1, 1))
    rec.call("guest release self", lambda: g.release(DOMID))
    rec.call("guest resume self", lambda: g.resume(DOMID))
    rec.call("guest is introduced", lambda: g.is_domain_introduced(DOMID))
    rec.call("guest set target", lambda: g.set_target(DOMID, 0))
    rec.call("guest control", lambda: g.control("print", "hello"))
    rec.call("guest get feature", lambda: g.get_feature())
    rec.call("guest get quota", lambda: g.get_quota("nodes"))
    rec.call("watch @introduceDomain", lambda: g.watch("@introduceDomain", "in"))
    rec.call("watch @releaseDomain", lambda: g.watch("@releaseDomain", "out"))
    rec.add("special initial events", drain(g))
    # Another domain comes and goes; only dom0 may read the special nodes.
    Toolstack(dom0, host).create_domain(DOMID + 1, skeleton=False)
    rec.call("dom0 releases other", lambda: dom0.release(DOMID + 1))
    os.unlink(host.path(f"ring-{DOMID + 1}"))
    rec.add("special events", drain(g))
    g.unwatch("@introduceDomain", "in")
    g.unwatch("@releaseDomain", "out")


def _reintroduce(rec: Record, g: Client, dom0: Client, ring: GuestRing) -> None:
    """dom0 introduces the running domain again (PROTOCOL.md 8.1)."""
    g.watch("data", "re")
    tx = g.transaction_start()
    g.write("data/re-tx", b"1", tx)
    drain(g)
    rec.add("re-introduce: indices before", ring.ring.indexes() != (0, 0, 0, 0))
    rec.call("re-introduce", lambda: dom0.introduce(DOMID, 0xFEFFF, 1))
    rec.add("re-introduce: indices zero", ring.ring.indexes() == (0, 0, 0, 0))
    rec.call("re-introduce: guest served", lambda: g.read("name"))
    dom0.write(f"{HOME}/data/re", b"1")
    rec.add("re-introduce: watches dropped", drain(g))
    rec.call("re-introduce: tx dropped", lambda: g.transaction_end(tx))
    rec.call("re-introduce: watch again", lambda: g.watch("data", "re"))
    rec.add("re-introduce: events again", drain(g))
    g.unwatch("data", "re")


def _domain_paths(rec: Record, g: Client) -> None:
    rec.call("domain path self", lambda: g.get_domain_path(DOMID))
    rec.call("domain path dom0", lambda: g.get_domain_path(0))
    rec.call("domain path unknown", lambda: g.get_domain_path(7))
    rec.call("domain path max", lambda: g.get_domain_path(65535))


def _death(rec: Record, dom0: Client, host: HostDir) -> None:
    """The domain dies: @releaseDomain for dom0, the guest's nodes go."""
    dom0.watch("@releaseDomain", "gone")
    dom0.watch(f"{HOME}/data", "d0")
    drain(dom0)
    rec.call("introduced before", lambda: dom0.is_domain_introduced(DOMID))
    host.kill_domain(DOMID)
    events: list[tuple[str, str]] = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    while ("@releaseDomain", "gone") not in events:
        left = deadline - time.monotonic()
        assert left > 0, f"no @releaseDomain within {EVENT_TIMEOUT} s: {events}"
        event = dom0.wait_watch(timeout=left)
        events.append((event.path, event.token))
    events += drain(dom0)
    rec.add("death: release event", events.count(("@releaseDomain", "gone")))
    rec.add("death: removal events", sorted(e for e in events if e[1] == "d0"))
    rec.call("death: introduced after", lambda: dom0.is_domain_introduced(DOMID))
    rec.call("death: own dir gone", lambda: dom0.exists(f"{HOME}/data"))
    rec.call("death: frontend gone", lambda: dom0.exists(f"{HOME}/device/vif/0"))
    rec.call("death: dom0 nodes kept", lambda: dom0.read(f"{HOME}/name"))
    rec.call("death: backend kept", lambda: dom0.read(f"{BACKEND}/state"))
    rec.call("death: dom0 node in data", lambda: dom0.exists(f"{HOME}/data/secret"))
    rec.call("death: home now", lambda: sorted(dom0.directory(HOME)))
    rec.call("death: control now", lambda: sorted(dom0.directory(f"{HOME}/control")))
    rec.call("death: every node left", lambda: sorted(walk(dom0, HOME)))
    rec.call("death: release dead", lambda: dom0.release(DOMID))


# -- what each answer must be ------------------------------------------------

#: What is left under the home after the death (PROTOCOL.md 8.2): the
#: skeleton's nodes dom0 owns, and dom0's huge value; everything the guest
#: owned went, with whatever was below it.
_LEFT_AFTER_DEATH = sorted(
    [
        path
        for path, _value, perms in domain_skeleton(DOMID)
        if path.startswith(HOME) and perms[0] == "n0"
    ]
    + [f"{HOME}/huge"]
)
_HOME_AFTER_DEATH = sorted(
    {p[len(HOME) + 1 :].split("/")[0] for p in _LEFT_AFTER_DEATH if p != HOME}
)

#: pyxenstored's answers to the steps PROTOCOL.md pins down.
EXPECTED: dict[str, Answer] = {
    "read name (relative)": f"guest{DOMID}".encode(),
    "read data/x absolute": b"1",
    "read binary value": b"\0\1\xff\0",
    "mkdir data/dir again": "OK",
    "ls data/dir after rm": ["b"],
    "rm missing, parent exists": "OK",
    "rm missing, parent missing": "error ENOENT",
    "perms of own node": [f"n{DOMID}"],
    "perms of ro node": ["n0", f"r{DOMID}"],
    "write ro node": "error EACCES",
    "write at top": "error EACCES",
    "rm own home": "error EACCES",
    "read backend state": b"1",
    "read dom0 secret": "error EACCES",
    "rm dom0 secret": "error EACCES",
    # PROTOCOL.md 5.4
    "hide: read under dom0 home": "error EACCES",
    "hide: read under own home": "error ENOENT",
    "hide: read under backend": "error ENOENT",
    "hide: read under secret": "error EACCES",
    "hide: write under ro": "error EACCES",
    "hide: read under ro": "error ENOENT",
    # PROTOCOL.md 10 (node-size) and the at-most-N count rule
    "quota: 2040-byte value": "error ENOSPC",
    "quota: 3000-byte value": "error ENOSPC",
    "quota: 4096-byte payload": "error ENOSPC",
    # The guest owns 22 nodes when it starts: 15 of libxl's skeleton and 7
    # it made; the first write also creates data/n.  At most N: 22+1+41.
    "quota: nodes created": NODE_QUOTA - 23,
    "quota: node refusal": "error ENOSPC",
    "quota: write existing ok": "OK",
    "quota: create after rm": "OK",
    "watch same again": "error EEXIST",
    "initial events": [
        ("data", "rel"),
        (f"{HOME}/data", "abs"),
        ("/local/domain/0/backend", "be"),
        ("/libxl", "libxl"),
    ],
    "events: own write": [("data/w", "rel"), (f"{HOME}/data/w", "abs")],
    "events: mkdir twice": [("data/wdir", "rel"), (f"{HOME}/data/wdir", "abs")],
    # PROTOCOL.md 6.6
    "events: unreadable writes": [],
    "events: readable backend write": [(f"{BACKEND}/state", "be")],
    "events: unreadable node, readable parent": [
        ("data/secret", "rel"),
        (f"{HOME}/data/secret", "abs"),
    ],
    "events: unreadable node and parent": [],
    "events: 4096 initial": [("data", 5), ("data", 4090)],
    "events: too big dropped": [("data/w", 5)],
    "unwatch again": "error ENOENT",
    "events: after unwatch": [(f"{HOME}/data/w", "abs")],
    "tx: invisible outside": "error ENOENT",
    "events: tx write": [],
    "tx: commit conflict": "error EAGAIN",
    "tx: nothing applied": "error ENOENT",
    "tx: end again": "error ENOENT",
    "tx: aborted invisible": "error ENOENT",
    "tx: unknown id end": "error ENOENT",
    "tx: attempts": 2,
    "tx: committed t1": b"2+",
    # PROTOCOL.md 5.3
    "perms: give away": "error EPERM",
    "perms: give away, keep read": "error EPERM",
    "perms: not owner": "error EACCES",
    "perms: over node-permissions": "error ENOSPC",
    "perms: five": "OK",
    "domain path unknown": "/local/domain/7",
    "guest control": "error EACCES",
    "guest get feature": 3,
    "guest get quota": "error EACCES",
    "special initial events": [("@introduceDomain", "in"), ("@releaseDomain", "out")],
    "special events": [],
    "ring server features": 3,
    "ring error field": 0,
    # PROTOCOL.md 8.1: the connection is reset, the ring indices kept
    "re-introduce": "OK",
    "re-introduce: indices zero": False,
    "re-introduce: guest served": f"guest{DOMID}".encode(),
    "re-introduce: watches dropped": [],
    "re-introduce: tx dropped": "error ENOENT",
    "re-introduce: events again": [("data", "re")],
    # PROTOCOL.md 8.2
    "death: release event": 1,
    "death: introduced after": False,
    "death: own dir gone": False,
    "death: frontend gone": False,
    "death: dom0 nodes kept": f"guest{DOMID}".encode(),
    "death: home now": _HOME_AFTER_DEATH,
    "death: every node left": _LEFT_AFTER_DEATH,
    "death: dom0 node in data": False,
    "death: release dead": "error ENOENT",
}

#: Where pyxenstored answers the guest differently from C 4.17 on purpose:
#: step -> (C's answer, the section of PROTOCOL.md we follow instead).
DELIBERATE: dict[str, tuple[Answer, str]] = {
    "re-introduce: indices zero": (
        True,
        "MIGRATION.md a.6 (PROTOCOL.md 8.1): INTRODUCE never writes the ring "
        "indices, so RELEASE + INTRODUCE is neutral for the page and requests "
        "in a migrated page survive; the connection is still reset as in C. "
        "C 4.17 zeroes all four indices",
    ),
    "guest get feature": (
        "error ENOSYS",
        "PROTOCOL.md 8.3: GET_FEATURE without a domid returns the caller's "
        "own features (3 = RECONNECTION | ERROR for a guest); C has the "
        "operation from 4.21 only and 4.17 answers ENOSYS",
    ),
    "guest get quota": (
        "error ENOSYS",
        "PROTOCOL.md 1.2 + 8.3: GET_QUOTA is a privileged operation, so a "
        "guest gets EACCES; C has it from 4.22 only and 4.17 answers ENOSYS",
    ),
    "ring server features": (
        0,
        "RING.md 5: we implement ring reconnection (bit 0) and the error "
        "field (bit 1) and advertise both in server_features; C 4.17 "
        "advertises nothing",
    ),
}


_OX_HIDING = (
    "oxenstored does not hide existence (PROTOCOL.md 5.4): a missing node "
    "under an ancestor the guest may not read is ENOENT, not EACCES"
)
_OX_MAXSIZE = (
    "oxenstored's quota-maxsize (2048) bounds the value alone and applies "
    "to dom0 too; over it the answer is E2BIG (peers README), where C "
    "counts 16 + 8 per permission + value + children and answers ENOSPC"
)
_OX_HUGE = "dom0's 4070-byte value was refused with E2BIG (see that step)"
_OX_WATCH_ORDER = (
    "oxenstored queues the events of one change for one connection in the "
    "reverse order of watch registration; C and we use registration order"
)
_OX_BROKEN = (
    "oxenstored sends an unsolicited ERROR E2BIG with req_id 0 in place of "
    "a watch event over 4096 bytes, which no client can match to a "
    "request; C and we drop the event (PROTOCOL.md 1.1).  The connection "
    "is then unusable, which is why this is the guest's last section"
)
_OX_TX_EIO = (
    "oxenstored answers EIO for a transaction id that is not open; C and "
    "we answer ENOENT (PROTOCOL.md 1.2 step 3, 7.1)"
)
_OX_REINTRODUCE = (
    "oxenstored does not reset the connection when an introduced domain "
    "is introduced again: its watches and transactions survive (C and we "
    "drop them, PROTOCOL.md 8.1)"
)
_OX_MERGE = (
    "oxenstored merges a transaction whose reads were rewritten with the "
    "same value (PROTOCOL.md 7.2, last paragraph) where C fails it with "
    "EAGAIN; so the transaction commits and its write shows"
)

#: oxenstored's known deviations from pyxenstored (and C): step -> (its
#: answer, why).  Checked exactly, so a change in oxenstored shows up.
OX_DEVIATIONS: dict[str, tuple[Answer, str]] = {
    "dom0 writes 4070 bytes": ("error E2BIG", _OX_MAXSIZE),
    "hide: read under dom0 home": ("error ENOENT", _OX_HIDING),
    "hide: read under libxl": ("error ENOENT", _OX_HIDING),
    "hide: read under secret": ("error ENOENT", _OX_HIDING),
    "hide: ls deep under root": ("error ENOENT", _OX_HIDING),
    "hide: perms under libxl": ("error ENOENT", _OX_HIDING),
    "hide: rm under dom0": ("error ENOENT", _OX_HIDING),
    "guest reads dom0-made huge value": ("error ENOENT", _OX_HUGE),
    "quota: 2040-byte value": ("OK", _OX_MAXSIZE),
    "quota: 3000-byte value": ("error E2BIG", _OX_MAXSIZE),
    "quota: 4096-byte payload": ("error E2BIG", _OX_MAXSIZE),
    "quota: nodes created": (
        NODE_QUOTA - 24,
        "oxenstored refuses the node that would make the count reach "
        "quota-maxentity (PROTOCOL.md 10's 4.22 reading), one creation "
        "earlier than C 4.17 and our default at-most-N rule",
    ),
    "quota: node refusal": (
        "error EINVAL",
        "oxenstored's over-quota error (its internal EQUOTA) is not in "
        "xsd_errors[], so it reaches the wire as EINVAL; C says ENOSPC",
    ),
    "events: own write": (
        [(f"{HOME}/data/w", "abs"), ("data/w", "rel")],
        _OX_WATCH_ORDER,
    ),
    "events: mkdir twice": (
        [(f"{HOME}/data/wdir", "abs"), ("data/wdir", "rel")],
        _OX_WATCH_ORDER,
    ),
    "events: unreadable node, readable parent": (
        [(f"{HOME}/data/secret", "abs"), ("data/secret", "rel")],
        _OX_WATCH_ORDER,
    ),
    "events: rm subtree": (
        [
            (f"{HOME}/data/wdir", "abs"),
            ("data/wdir", "rel"),
            ("data/wdir/leaf", "leaf"),
            ("data/wdir/none", "none"),
        ],
        _OX_WATCH_ORDER + "; and oxenstored also fires a watch on a path "
        "that never existed below the removed node (PROTOCOL.md 6.3 says C "
        "does not)",
    ),
    "tx: commit conflict": ("OK", _OX_MERGE),
    "tx: nothing applied": (b"in tx", _OX_MERGE),
    "tx: end again": ("error EIO", _OX_TX_EIO),
    "events: failed commit": ([(f"{HOME}/data/t1", "abs")], _OX_MERGE),
    "tx: unknown id read": ("error EIO", _OX_TX_EIO),
    "tx: unknown id end": ("error EIO", _OX_TX_EIO),
    "perms: give away": (
        "error EACCES",
        "oxenstored refuses an owner change by a guest with EACCES; C (and "
        "PROTOCOL.md 5.3) say EPERM",
    ),
    "perms: give away, keep read": ("error EACCES", "as 'perms: give away'"),
    "perms: over node-permissions": (
        "OK",
        "oxenstored has no node-permissions quota (C -A, default 5)",
    ),
    "guest control": (
        b"OK\0",
        "oxenstored lets an unprivileged domain send CONTROL (answering "
        "OK); C and we refuse it with EACCES (PROTOCOL.md 5.3)",
    ),
    "guest get feature": ("error ENOSYS", "oxenstored 4.17 has no GET_FEATURE"),
    "guest get quota": ("error ENOSYS", "oxenstored 4.17 has no GET_QUOTA"),
    "ring server features": (
        1,
        "oxenstored advertises only RECONNECTION (RING.md 5)",
    ),
    "write under big watch": ("broken: reply to unknown request 0", _OX_BROKEN),
    "events: too big dropped": (
        "broken: protocol error from xenstored: reply to unknown request 0",
        _OX_BROKEN,
    ),
    "unwatch big token": (
        "broken: protocol error from xenstored: reply to unknown request 0",
        _OX_BROKEN,
    ),
    "re-introduce: watches dropped": (
        [("data/re", "re"), (f"{HOME}/data/re", "abs")],
        _OX_REINTRODUCE,
    ),
    "re-introduce: tx dropped": ("OK", _OX_REINTRODUCE),
    "re-introduce: watch again": ("error EEXIST", _OX_REINTRODUCE),
    "re-introduce: events again": (
        [("data/re-tx", "re"), (f"{HOME}/data/re-tx", "abs")],
        _OX_REINTRODUCE + " (here: the commit's events)",
    ),
    "death: removal events": (
        [],
        "oxenstored removes a dead domain's nodes without firing the watches "
        "on them (C fires ordinary events for other watchers, PROTOCOL.md "
        "8.2 step 3)",
    ),
    "death: home now": ([p for p in _HOME_AFTER_DEATH if p != "huge"], _OX_HUGE),
    "death: every node left": (
        [p for p in _LEFT_AFTER_DEATH if p != f"{HOME}/huge"],
        _OX_HUGE,
    ),
    "death: release dead": (
        "error EINVAL",
        "RELEASE of a domain already cleaned up: oxenstored EINVAL, C and we "
        "ENOENT (peers README; PROTOCOL.md 8.2)",
    ),
}


# -- running the daemons -------------------------------------------------------

#: The lines start-oxenstored.sh writes to its config file; repeated in
#: ours because oxenstored takes its quotas only from a config file (the
#: last ``--config-file`` given wins).
_OX_CONF = """\
pid-file = {d}/oxenstored.pid
xenstored-kva = {d}/ring-0
xenstored-port = {d}/xsd_port
xenstored-log-file = {d}/xenstored.log
access-log-file = {d}/access.log
persistent = false
quota-maxentity = {nodes}
"""


def _run_pyxenstored(directory: Path) -> Record:
    directory.mkdir(parents=True, exist_ok=True)
    daemon = RunningDaemon(
        directory, ["--host-dir", str(directory), "-E", str(NODE_QUOTA)]
    )
    try:
        record = run_scenario(daemon.socket, directory)
        assert daemon.alive(), "pyxenstored died"
    finally:
        code = daemon.stop()
    assert code == 0, f"pyxenstored exited with {code}:\n{daemon.log.read_text()}"
    # The client falls back to DIRECTORY_PART on E2BIG, which would hide a
    # 4096-byte DIRECTORY reply refused as too big: the trace shows it.
    trace = daemon.trace.read_text()
    assert f"dom{DOMID} IN  DIRECTORY " in trace
    assert f"dom{DOMID} IN  DIRECTORY_PART" not in trace
    assert "Traceback" not in daemon.log.read_text()
    return record


def _run_c(directory: Path) -> Record:
    daemon = CDaemon(directory, ["-E", str(NODE_QUOTA)])
    try:
        return run_scenario(daemon.socket, directory)
    finally:
        daemon.stop()


def _run_ox(directory: Path) -> Record:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "quota.conf"
    conf.write_text(_OX_CONF.format(d=directory, nodes=NODE_QUOTA))
    daemon = OxDaemon(directory, ["--config-file", str(conf)])
    try:
        return run_scenario(daemon.socket, directory)
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def reference() -> Iterator[Record]:
    """pyxenstored's answers, recorded once for all three comparisons."""
    directory = Path(tempfile.mkdtemp(prefix="pyxs-gd-", dir="/tmp"))
    try:
        yield _run_pyxenstored(directory / "py")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _same(a: object, b: object) -> bool:
    """Equal answers; a value (bytes) never equals an error text (str)."""
    return type(a) is type(b) and a == b


def _differences(
    ours: Record, theirs: Record, listed: dict[str, tuple[Answer, str]]
) -> list[str]:
    """Every step where the answers disagree other than as listed."""
    assert list(ours.answers) == list(theirs.answers), "the scripts diverged"
    problems = [
        f"{name}: listed but not a step" for name in listed if name not in ours.answers
    ]
    for name, mine in ours.answers.items():
        other = theirs.answers[name]
        if name in listed:
            expected, _why = listed[name]
            if other != expected:
                problems.append(f"{name}: listed as {expected!r}, got {other!r}")
            elif _same(other, mine):
                problems.append(f"{name}: listed as a difference but now agrees")
        elif not _same(other, mine):
            problems.append(f"{name}: pyxenstored {mine!r}, other {other!r}")
    return problems


@pytest.mark.parametrize("kind", ["pyxenstored", "c_xenstored", "oxenstored"])
def test_guest_scenario(kind: str, reference: Record, short_tmp: Path) -> None:
    if kind == "pyxenstored":
        answers = reference.answers
        assert len(answers) >= MIN_OPERATIONS, len(answers)
        assert set(EXPECTED) <= set(answers), set(EXPECTED) - set(answers)
        wrong = [
            f"{name}: expected {want!r}, got {answers.get(name, '<missing>')!r}"
            for name, want in EXPECTED.items()
            if answers.get(name, "<missing>") != want
        ]
        assert not wrong, "\n".join(wrong)
        return
    if kind == "c_xenstored":
        record = _run_c(short_tmp / "c")
        problems = _differences(reference, record, DELIBERATE)
    else:
        record = _run_ox(short_tmp / "ox")
        problems = _differences(reference, record, OX_DEVIATIONS)
    assert not problems, "\n".join(problems)
