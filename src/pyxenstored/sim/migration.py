"""Moving a running guest between two hosts, without telling it.

The hypervisor side of EMULATION.md ("Moving a guest between hosts")
plus the toolstacks' sequence of MIGRATION.md a.7, as one function:

1. source toolstack: QUIESCE, read the home subtree and the watches
   (:func:`~pyxenstored.client.migration.save_domain`);
2. hypervisor: pause the guest, copy its ring page to the destination
   (with whatever requests it wrote meanwhile, still unprocessed);
3. the DOMAIN_XENSTORE_DATA records cross as a libxl v2 stream;
4. destination toolstack: validate, WRITE + SET_PERMS, ADD_DOMAIN_WATCHES,
   rewrite its host-specific keys, INTRODUCE;
5. hypervisor: point the guest's event channel at the destination, unpause;
6. source: destroy the domain.

With ``fail_after_quiesce`` the migration is abandoned after step 1 and
the source resumes the domain instead (the rollback path, a.6).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.migration import (
    PreCopy,
    abandon_precopy,
    apply_changes,
    collect_changes,
    precopy,
    read_domain,
    restore_domain,
    resume_domain,
    save_domain,
)
from pyxenstored.migration.records import NodeData
from pyxenstored.migration.snapshot import extract
from pyxenstored.migration.stream import (
    Record,
    RecordType,
    Stream,
    decode_stream,
    encode_stream,
)
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Entry
from pyxenstored.wire.ring import Ring

__all__ = ["Host", "MigrationReport", "migrate_guest"]


@dataclass(frozen=True, slots=True)
class Host:
    """One host: its directory (emulated hypervisor) and daemon socket."""

    name: str
    directory: str
    socket: str

    @property
    def hostdir(self) -> HostDir:
        return HostDir(self.directory)


@dataclass(slots=True)
class MigrationReport:
    nodes: int = 0
    watches: int = 0
    stream_bytes: int = 0
    #: Request bytes the guest had written that the source never read.
    pending_request_bytes: int = 0
    #: Reply bytes waiting in the page for the guest when it was copied.
    pending_reply_bytes: int = 0
    #: Seconds for QUIESCE and reading the state on the source.
    save_seconds: float = 0.0
    #: Seconds to apply the records on the destination (nodes, watches).
    restore_seconds: float = 0.0
    #: Seconds from QUIESCE to the guest running on the destination.
    downtime_seconds: float = 0.0
    resumed_on_source: bool = False
    #: Differences between the restored home subtree and the saved one.
    differences: list[str] = field(default_factory=list)


def _page_backlog(page: bytes) -> tuple[int, int]:
    ring = Ring(memoryview(bytearray(page)))
    try:
        return ring.requests_pending(), 1024 - ring.reply_space()
    finally:
        ring.release()


def _copy_page(
    source: Host, destination: Host, domid: int, report: MigrationReport
) -> None:
    """The hypervisor copies the paused guest's ring page, backlog and all."""
    page = source.hostdir.read_page(domid)
    report.pending_request_bytes, report.pending_reply_bytes = _page_backlog(page)
    destination.hostdir.create_domain(domid, page=page)


def _compare(saved: list[NodeData], restored: list[NodeData]) -> list[str]:
    want = {n.path: n for n in saved}
    have = {n.path: n for n in restored}
    problems = [f"missing {p}" for p in want.keys() - have.keys()]
    problems += [f"unexpected {p}" for p in have.keys() - want.keys()]
    for path in want.keys() & have.keys():
        if want[path] != have[path]:
            problems.append(f"{path}: {want[path]} became {have[path]}")
    return sorted(problems)


async def migrate_guest(
    source: Host,
    destination: Host,
    domid: int,
    ring: GuestRing,
    *,
    fail_after_quiesce: bool = False,
    gfn: int = 0xFEFFF,
    port: int = 1,
    destination_entries: Sequence[Entry] = (),
    verify: bool = True,
    precopy_first: bool = False,
) -> MigrationReport:
    """Migrate domain ``domid`` (served to ``ring``) from one host to the other.

    ``destination_entries`` are nodes the destination toolstack writes for
    the new domain once it exists there (its backends, for instance):
    permissions naming a domain are only honoured if it exists (XSA-322).
    With ``verify`` the restored home subtree is read back and compared
    with the saved one before INTRODUCE (``report.differences``); that
    read is part of the measured downtime, so benchmarks turn it off.

    With ``precopy_first`` the home subtree is copied to the destination
    while the guest runs (the domain exists there from then on, its page
    still empty), and the pause carries only what changed meanwhile
    (:func:`~pyxenstored.client.migration.precopy`).
    """
    if precopy_first:
        return await _migrate_precopy(
            source,
            destination,
            domid,
            ring,
            fail_after_quiesce=fail_after_quiesce,
            gfn=gfn,
            port=port,
            destination_entries=destination_entries,
            verify=verify,
        )
    report = MigrationReport()
    start = time.monotonic()
    async with AsyncClient(source.socket) as src:
        data = await save_domain(src, domid)
        report.save_seconds = time.monotonic() - start
        report.nodes, report.watches = len(data.nodes), len(data.watches)
        if fail_after_quiesce:
            await resume_domain(src, domid, gfn, port)
            report.resumed_on_source = True
            report.downtime_seconds = time.monotonic() - start
            return report
    ring.pause()
    try:
        _copy_page(source, destination, domid, report)
        stream = encode_stream(Stream(items=[*data.records(), Record(RecordType.END)]))
        report.stream_bytes = len(stream)
        received = extract(decode_stream(stream), domid)
        async with AsyncClient(destination.socket) as dst:
            for path, value, perms in destination_entries:
                await dst.write(path, value)
                await dst.set_perms(path, perms)
            restore_start = time.monotonic()
            await restore_domain(dst, received)
            report.restore_seconds = time.monotonic() - restore_start
            if verify:
                restored = await read_domain(dst, domid)
                report.differences = _compare(data.nodes, restored)
            await _introduce(dst, destination, domid, ring, gfn, port)
    finally:
        ring.unpause()
    report.downtime_seconds = time.monotonic() - start
    await _destroy_on_source(source, domid)
    return report


async def _introduce(
    dst: AsyncClient,
    destination: Host,
    domid: int,
    ring: GuestRing,
    gfn: int,
    port: int,
) -> None:
    """The destination's own keys, the event channel, INTRODUCE."""
    home = f"/local/domain/{domid}"
    await dst.write(f"{home}/store/port", str(port).encode())
    await dst.write(f"{home}/store/ring-ref", str(gfn).encode())
    # Re-point the event channel first, so the destination's first kick
    # (it serves the waiting requests at once) reaches the guest.
    ring.move(destination.directory)
    await dst.introduce(domid, gfn, port)


async def _destroy_on_source(source: Host, domid: int) -> None:
    """xenstored removes what the guest owned, the toolstack what it wrote."""
    source.hostdir.kill_domain(domid, remove=True)
    async with AsyncClient(source.socket) as src:
        await src.rm(f"/local/domain/{domid}")


async def _migrate_precopy(
    source: Host,
    destination: Host,
    domid: int,
    ring: GuestRing,
    *,
    fail_after_quiesce: bool,
    gfn: int,
    port: int,
    destination_entries: Sequence[Entry],
    verify: bool,
) -> MigrationReport:
    """:func:`migrate_guest` with a pre-copy phase while the guest runs."""
    report = MigrationReport()
    async with (
        AsyncClient(source.socket) as src,
        AsyncClient(destination.socket) as dst,
    ):
        # The domain is built on the destination first (libxl does so before
        # it copies memory): permissions naming it are honoured there.
        destination.hostdir.create_domain(domid)
        for path, value, perms in destination_entries:
            await dst.write(path, value)
            await dst.set_perms(path, perms)
        pre: PreCopy = await precopy(src, dst, domid)
        start = time.monotonic()
        try:
            changes = await collect_changes(src, pre)
        except BaseException:
            await abandon_precopy(src, dst, pre)
            raise
        report.save_seconds = time.monotonic() - start
        report.watches = len(changes.watches)
        if fail_after_quiesce:
            await abandon_precopy(src, dst, pre)
            destination.hostdir.kill_domain(domid, remove=True)
            await resume_domain(src, domid, gfn, port)
            report.resumed_on_source = True
            report.downtime_seconds = time.monotonic() - start
            return report
        ring.pause()
        try:
            _copy_page(source, destination, domid, report)
            restore_start = time.monotonic()
            await apply_changes(dst, changes)
            report.restore_seconds = time.monotonic() - restore_start
            if verify:
                saved = await read_domain(src, domid)
                restored = await read_domain(dst, domid)
                report.differences = _compare(saved, restored)
            report.nodes = len(pre.copied)
            await _introduce(dst, destination, domid, ring, gfn, port)
        finally:
            ring.unpause()
        report.downtime_seconds = time.monotonic() - start
    await _destroy_on_source(source, domid)
    return report
