"""The big-tree loads: a host with 10, 1,000 and 10,000 domains.

Each domain gets the nodes libxl writes
(:func:`~pyxenstored.sim.toolstack.domain_skeleton`: its
``/local/domain/N`` tree, ``/vm/<uuid>``, ``/libxl/N`` and the backend
entries under dom0, 47 nodes with the implicit
``/local/domain/0/backend/vif/N``), each node with libxl's permissions.
They are written **directly by dom0 clients, without INTRODUCE** (only the
tree's size and shape matter here): WRITE then SET_PERMS per node,
pipelined over two connections with :class:`~pyxenstored.client.aio.
AsyncClient`.  Each domain's ring page file is created first (sparse) so
that the daemons accept permissions naming it (EMULATION.md: ``ring-N``
means "domain N exists"; C xenstored and pyxenstored refuse to name a
domain that does not exist).

Population of each daemon is bounded by a time budget; a daemon that runs
out of it is measured at the size it reached, and the run says so.

At each size: the daemon's resident memory (``/proc/PID/status``), and the
latency of single requests measured with ``bench/xslat.c`` (libxenstore):
read, write, directory, get_perms and a small transaction, spread over all
domains.  Each is measured in turn with a second daemon of the same kind
that holds the smallest tree for the whole phase, so that the growth with
the tree's size is a ratio of figures taken seconds apart, not minutes.
At the largest size reached: 10 and 10,000 watches registered by one dom0
connection, the two counts in turn, and the cost of a write firing one of
them or none.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.daemons import Daemon, DaemonDied, pinned, start
from pyxenstored.client.aio import AsyncClient
from pyxenstored.sim.toolstack import domain_skeleton

__all__ = ["LAT_TESTS", "ScaleConfig", "build_xslat", "node_counts", "scale_daemon"]

LAT_TESTS = ("read", "write", "dir", "perms", "txn")
REPO = Path(__file__).resolve().parents[1]
#: Domains per population chunk (the budget is checked between chunks).
CHUNK = 250
#: Outstanding requests per connection while populating.
WINDOW = 512
CONNECTIONS = 2

Record = dict[str, object]


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def node_counts() -> tuple[int, int]:
    """(nodes per domain, nodes shared by all domains) of the skeleton."""

    def all_nodes(domid: int) -> set[str]:
        out: set[str] = set()
        for path, _, _ in domain_skeleton(domid):
            out.update(_ancestors(path))
        return out

    a, b = all_nodes(1001), all_nodes(2002)
    shared = a & b
    return len(a - shared), len(shared)


def build_xslat(out_dir: Path) -> Path:
    """Compile bench/xslat.c against libxenstore (when it changed)."""
    source = REPO / "bench" / "xslat.c"
    binary = out_dir / "xslat"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["cc", "-O2", "-Wall", "-o", str(binary), str(source), "-lxenstore"],
            check=True,
        )
    return binary


def _make_rings(directory: Path, first: int, last: int) -> None:
    """Sparse 4096-byte ring pages: the domains exist for the daemons."""
    for domid in range(first, last + 1):
        fd = os.open(directory / f"ring-{domid}", os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.ftruncate(fd, 4096)
        finally:
            os.close(fd)


async def _fill(client: AsyncClient, domids: Sequence[int]) -> int:
    """Write the skeletons of ``domids`` on one connection, pipelined."""
    window = asyncio.Semaphore(WINDOW)
    pending: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []
    sent = 0

    def finished(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        window.release()
        if not task.cancelled() and task.exception() is not None:
            errors.append(task.exception())  # type: ignore[arg-type]

    def submit(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        pending.add(task)
        task.add_done_callback(finished)

    for domid in domids:
        for path, value, perms in domain_skeleton(domid):
            # One connection's requests are handled in order, so the
            # SET_PERMS never overtakes the WRITE that creates the node.
            await window.acquire()
            submit(client.write(path, value))
            await window.acquire()
            submit(client.set_perms(path, perms))
            sent += 2
        if errors:
            break
    if pending:
        await asyncio.wait(set(pending))
    if errors:
        raise RuntimeError(f"population failed: {errors[0]!r}")
    return sent


async def _populate(
    socket: Path,
    first: int,
    last: int,
    deadline: float,
    progress: Callable[[int], None],
) -> tuple[int, int]:
    """Domains ``first..last`` in chunks until done or past ``deadline``.

    Returns (the last domain written, requests sent).
    """
    clients = [AsyncClient(str(socket)) for _ in range(CONNECTIONS)]
    done = first - 1
    sent = 0
    try:
        for client in clients:
            await client.connect()
        while done < last and time.monotonic() < deadline:
            chunk = list(range(done + 1, min(last, done + CHUNK) + 1))
            counts = await asyncio.gather(
                *(
                    _fill(client, chunk[i::CONNECTIONS])
                    for i, client in enumerate(clients)
                )
            )
            sent += sum(counts)
            done = chunk[-1]
            progress(done)
    finally:
        for client in clients:
            await client.aclose()
    return done, sent


class ScaleConfig:
    """What the scale phase does (full or quick)."""

    def __init__(
        self,
        sizes: Sequence[int],
        budget: float,
        lat_secs: float,
        reps: int,
        watch_counts: Sequence[int],
        pin_cpu: int | None,
    ) -> None:
        self.sizes = list(sizes)
        self.budget = budget
        self.lat_secs = lat_secs
        self.reps = reps
        self.watch_counts = list(watch_counts)
        #: Measure the latencies again with the daemon and the latency
        #: client on this one CPU (None: only unpinned, wherever the
        #: scheduler puts them).
        self.pin_cpu = pin_cpu


def _xslat(
    xslat: Path,
    daemon: Daemon,
    args: list[str],
    tag: Record,
    cpu: int | None,
    timeout: float = 300,
) -> list[Record]:
    """Run xslat; with ``cpu``, it and the daemon share that one CPU."""
    with pinned(daemon, cpu) as preexec:
        proc = subprocess.run(
            [str(xslat), "-s", str(daemon.socket), "-l", daemon.kind, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=preexec,
        )
    records = [
        {**json.loads(line), **tag}
        for line in proc.stdout.splitlines()
        if line.startswith("{")
    ]
    if proc.returncode != 0:
        daemon.check(f"xslat {' '.join(args)}")
        records.append(
            {
                **tag,
                "test": "*",
                "error": f"xslat exit {proc.returncode}: "
                + " | ".join(proc.stderr.strip().splitlines()[-3:]),
            }
        )
    return records


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def scale_daemon(
    kind: str, directory: Path, config: ScaleConfig, xslat: Path
) -> list[Record]:
    """Start a fresh daemon, grow its tree, measure at each size, stop it."""
    per_domain, shared = node_counts()
    records: list[Record] = []
    tag: Record = {"phase": "scale", "daemon": kind, "client": "libxenstore"}
    reference = _reference(kind, directory / "reference", config.sizes[0])
    try:
        daemon = start(kind, directory)
    except BaseException:
        reference[0].stop()
        raise
    try:
        mem0 = daemon.memory()
        records.append({**tag, "test": "memory", "domains": 0, "nodes": 0, **mem0})
        reached = 0
        spent = 0.0
        for size in config.sizes:
            if reached >= size:
                continue
            _make_rings(directory, reached + 1, size)
            t0 = time.monotonic()
            deadline = t0 + max(0.0, config.budget - spent)

            def progress(done: int, t0: float = t0, before: float = spent) -> None:
                _log(
                    f"  [{kind}] {done} domains "
                    f"({time.monotonic() - t0 + before:.1f} s of population)"
                )

            last, sent = asyncio.run(
                _populate(daemon.socket, reached + 1, size, deadline, progress)
            )
            secs = time.monotonic() - t0
            spent += secs
            daemon.check("population")
            added = last - reached
            records.append(
                {
                    **tag,
                    "test": "populate",
                    "domains": last,
                    "target": size,
                    "added_domains": added,
                    "requests": sent,
                    "seconds": round(secs, 3),
                    "rate": round(sent / secs, 1) if secs else None,
                    "capped": last < size,
                }
            )
            reached = last
            if added == 0:
                break
            nodes = reached * per_domain + shared
            mem = daemon.memory()
            records.append(
                {
                    **tag,
                    "test": "memory",
                    "domains": reached,
                    "nodes": nodes,
                    **mem,
                    "bytes_per_node": round(
                        (mem["VmRSS"] - mem0["VmRSS"]) * 1024 / nodes, 1
                    ),
                    "anon_bytes_per_node": round(
                        (mem["RssAnon"] - mem0["RssAnon"]) * 1024 / nodes, 1
                    ),
                }
            )
            _log(
                f"  [{kind}] {reached} domains, {nodes} nodes: "
                f"RSS {mem['VmRSS']} kB; measuring latency"
            )
            records += _latencies(xslat, daemon, reached, reference, config, tag)
            if last < size:
                _log(f"  [{kind}] population budget spent: capped at {reached}")
                break
        counts = ", ".join(f"{count:,}" for count in config.watch_counts)
        _log(f"  [{kind}] {counts} watches in turn at {reached} domains")
        records += _watch_costs(xslat, daemon, reached, config, tag)
        daemon.check("the scale loads")
    except DaemonDied as exc:
        records.append({**tag, "test": "*", "error": str(exc)})
    finally:
        daemon.stop()
        reference[0].stop()
    return records


def _watch_costs(
    xslat: Path, daemon: Daemon, domains: int, config: ScaleConfig, tag: Record
) -> list[Record]:
    """A write firing one watch, and one firing none, with each count of
    watches registered, the counts measured in turn (the order alternating
    between repetitions) as the latencies are: one after the other, the
    two read the machine's drift as much as the watches.  Each xslat run
    registers its watches on a connection of its own; they go when it
    exits."""
    records: list[Record] = []
    for rep in range(config.reps):
        counts = list(config.watch_counts)
        if rep % 2:
            counts.reverse()
        for count in counts:
            records += _xslat(
                xslat,
                daemon,
                [
                    *("-n", str(domains), "-d", str(config.lat_secs)),
                    *("-W", str(count), "watch1", "nowatch"),
                ],
                {**tag, "rep": rep, "domains": domains, "watches": count},
                None,
            )
    return records


def _reference(kind: str, directory: Path, domains: int) -> tuple[Daemon, int]:
    """A second daemon of ``kind`` holding the smallest tree, for the whole
    phase: every latency is measured alternately with it (see
    :func:`_latencies`)."""
    directory.mkdir(parents=True, exist_ok=True)
    daemon = start(kind, directory)
    try:
        _make_rings(directory, 1, domains)
        last, _ = asyncio.run(
            _populate(daemon.socket, 1, domains, math.inf, lambda done: None)
        )
        daemon.check("population of the reference tree")
    except BaseException:
        daemon.stop()
        raise
    return daemon, last


def _latencies(
    xslat: Path,
    daemon: Daemon,
    domains: int,
    reference: tuple[Daemon, int],
    config: ScaleConfig,
    tag: Record,
) -> list[Record]:
    """Each request's latency on the grown daemon and, just before or
    after it, on the reference daemon with the smallest tree.

    Measured minutes apart, the two sizes drift with the machine (the same
    code's growth read 0.7 in one run and 1.6 in another); measured in
    turns, each repetition gives a ratio of figures taken within a second
    of each other.  The order alternates between repetitions so that
    neither side is always the first after a pause.  At the smallest size
    the two daemons hold the same tree and the ratio shows the method's
    own noise.
    """
    ref, ref_domains = reference
    ref_tag = {**tag, "phase": "scale_reference", "alongside": domains}
    records: list[Record] = []
    cpus = [None] if config.pin_cpu is None else [None, config.pin_cpu]
    for cpu in cpus:
        for rep in range(config.reps):
            for test in LAT_TESTS:
                turns = [(daemon, domains, tag), (ref, ref_domains, ref_tag)]
                if rep % 2:
                    turns.reverse()
                for which, size, base in turns:
                    records += _xslat(
                        xslat,
                        which,
                        ["-n", str(size), "-d", str(config.lat_secs), test],
                        {
                            **base,
                            "rep": rep,
                            "domains": size,
                            "pinned": cpu is not None,
                        },
                        cpu,
                    )
    return records
