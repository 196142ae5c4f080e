"""The toolstack's side of non-cooperative migration (MIGRATION.md a.7).

:func:`save_domain` runs on the source host: QUIESCE the domain, read its
home subtree with permissions (parents first) and its watches.
:func:`restore_domain` runs on the destination: apply nodes and
permissions all or nothing, stage the watches, optionally INTRODUCE.
:func:`resume_domain` is the rollback on the source after a failure.

Requests are pipelined on an :class:`~pyxenstored.client.aio.AsyncClient`
(one level of the tree at a time), so the time a migration adds to the
guest's pause is dominated by the daemon, not by round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.commands import Request, encode_args, parse_perms, parse_strings
from pyxenstored.errors import (
    AlreadyExists,
    InvalidArgument,
    NoEntry,
    TooBig,
    TransactionConflict,
    XsError,
)
from pyxenstored.migration.records import NodeData, WatchData
from pyxenstored.migration.snapshot import DomainData, absolute, relative, watch_batches
from pyxenstored.paths import domain_home
from pyxenstored.perms import parse_perm
from pyxenstored.wire.ops import Op

__all__ = [
    "Changes",
    "PreCopy",
    "abandon_precopy",
    "apply_changes",
    "collect_changes",
    "precopy",
    "read_domain",
    "restore_domain",
    "resume_domain",
    "save_domain",
]

log = logging.getLogger(__name__)


#: Requests per pipelined write: small enough that the requests always fit
#: the socket buffer while the daemon's replies wait to be read.
_BATCH = 512
#: Requests per pipelined write to a daemon serving a running guest (the
#: pre-copy): the guest's requests wait behind each batch.
_LIVE_BATCH = 64


async def _pipeline(
    client: AsyncClient, requests: list[Request], tx: int, batch: int = _BATCH
) -> list[bytes | XsError]:
    results: list[bytes | XsError] = []
    for start in range(0, len(requests), batch):
        results += await client.pipeline(requests[start : start + batch], tx)
    return results


def _ok(reply: bytes | XsError) -> bytes:
    if isinstance(reply, XsError):
        raise reply
    return reply


async def _read_level(
    client: AsyncClient,
    paths: list[str],
    tx: int,
    *,
    skip_missing: bool = False,
    batch: int = _BATCH,
) -> list[tuple[str, bytes, list[str], list[str]]]:
    """Value, permissions and children of every path, pipelined.

    ``skip_missing``: a node gone meanwhile is left out (pre-copy, where its
    removal is carried later) instead of failing the read.
    """
    requests = []
    for path in paths:
        arg = encode_args(path)
        requests += [
            Request(Op.READ, arg),
            Request(Op.GET_PERMS, arg),
            Request(Op.DIRECTORY, arg),
        ]
    replies = await _pipeline(client, requests, tx, batch)
    found = []
    for i, path in enumerate(paths):
        value, perms, listing = replies[3 * i : 3 * i + 3]
        if skip_missing and any(
            isinstance(r, NoEntry) for r in replies[3 * i : 3 * i + 3]
        ):
            continue
        if isinstance(listing, TooBig):
            # Over 4096 bytes of names: page with DIRECTORY_PART instead.
            children = await client.directory(path, tx)
        else:
            children = parse_strings(_ok(listing))
        found.append(
            (path, _ok(value), [str(p) for p in parse_perms(_ok(perms))], children)
        )
    return found


async def read_domain(client: AsyncClient, domid: int) -> list[NodeData]:
    """The domain's home subtree, parents before children.

    Read inside one transaction (retried on EAGAIN), so the nodes form a
    consistent picture even if dom0 writes under the home meanwhile.
    """

    return await client.transaction(lambda tx: _walk(client, domid, tx))


async def _walk(
    client: AsyncClient,
    domid: int,
    tx: int,
    *,
    skip_missing: bool = False,
    batch: int = _BATCH,
) -> list[NodeData]:
    """The home subtree level by level, parents first (see :func:`_read_level`)."""
    nodes: list[NodeData] = []
    level = [domain_home(domid)]
    while level:
        found = await _read_level(
            client, level, tx, skip_missing=skip_missing, batch=batch
        )
        level = []
        for path, value, perms, children in found:
            nodes.append(NodeData(relative(domid, path), value, tuple(perms)))
            level.extend(f"{path}/{name}" for name in children)
    return nodes


async def read_watches(client: AsyncClient, domid: int) -> list[WatchData]:
    """Page through GET_DOMAIN_WATCHES (the loop of MIGRATION.md a.5)."""
    while True:
        first_gen: int | None = None
        watches: list[WatchData] = []
        index = 0
        while True:
            gen, pairs = await client.get_domain_watches(domid, index)
            if first_gen is None:
                first_gen = gen
            elif gen != first_gen:
                break  # the list changed under us: start again
            if not pairs:
                return watches
            watches.extend(WatchData(p, t) for p, t in pairs)
            index += len(pairs)


async def save_domain(client: AsyncClient, domid: int) -> DomainData:
    """QUIESCE the domain, then read its nodes and watches.

    Raises:
        Busy: QUIESCE timed out (the domain stays quiesced; retry, or
            :func:`resume_domain`).
    """
    await client.quiesce(domid)
    nodes = await read_domain(client, domid)
    watches = await read_watches(client, domid)
    return DomainData(domid, nodes, watches)


async def _exists(client: AsyncClient, domid: int) -> bool:
    """Whether a domain exists on this host, introduced or not (c.4).

    GET_FEATURE with a domid answers ENOENT exactly for a domain that does
    not exist; a daemon that does not offer it (another error) is asked
    IS_DOMAIN_INTRODUCED instead, which errs on the side of dropping.
    """
    try:
        await client.get_feature(domid)
    except NoEntry:
        return False
    except XsError:
        return await client.is_domain_introduced(domid)
    return True


async def _live_domains(client: AsyncClient, domids: set[int]) -> set[int]:
    ordered = sorted(domids)
    answers = await asyncio.gather(*(_exists(client, d) for d in ordered))
    return {d for d, alive in zip(ordered, answers, strict=True) if alive}


async def _applicable_perms(
    client: AsyncClient, data: DomainData
) -> dict[str, tuple[str, ...]]:
    """Permissions to apply, per node path (MIGRATION.md c.4).

    Entries naming a domain that is not on this host are dropped (a domain
    created later with that domid must not inherit access); a node whose
    owner is not on this host gets the privileged domain as owner.
    """
    named = {parse_perm(p).domid for n in data.nodes for p in n.perms}
    named.discard(data.domid)
    live = await _live_domains(client, named) | {data.domid}
    result: dict[str, tuple[str, ...]] = {}
    for node in data.nodes:
        perms = [parse_perm(p) for p in node.perms]
        owner = perms[0] if perms[0].domid in live else perms[0]._replace(domid=0)
        if owner is not perms[0]:
            log.warning(
                "%s: owner dom%d absent here, dom0 owns it", node.path, perms[0].domid
            )
        rest = [p for p in perms[1:] if p.domid in live]
        if len(rest) != len(perms) - 1:
            log.warning("%s: permissions for absent domains dropped", node.path)
        result[node.path] = tuple(str(p) for p in (owner, *rest))
    return result


async def restore_domain(
    client: AsyncClient,
    data: DomainData,
    introduce: tuple[int, int] | None = None,
) -> None:
    """Rebuild a domain's nodes and watches on the destination.

    Nodes and permissions are written in one transaction, which commits
    only after the watches were staged: if a request fails, no node is
    applied.  Watches go in ADD_DOMAIN_WATCHES requests of at most 4096
    bytes, checked beforehand, so in practice they all succeed or the
    first one fails (the protocol has no way to take a staged watch back;
    they go with the domain if the restore is abandoned).  An empty
    request marks the domain as restored.

    Args:
        client: a privileged client of the destination daemon.
        data: what :func:`save_domain` read (or a decoded stream).
        introduce: ``(gfn, port)`` to INTRODUCE the domain afterwards.

    Raises:
        XsError: a request failed; nothing was applied.
    """
    domid = data.domid
    if await client.is_domain_introduced(domid):
        raise AlreadyExists(f"domain {domid} is already introduced")
    try:
        await client.get_domain_watches(domid, 0)
    except NoEntry:
        pass
    else:
        # A second restore would add every watch twice (MIGRATION.md c.17).
        raise AlreadyExists(f"domain {domid} was already restored")
    perms = await _applicable_perms(client, data)

    async def write_nodes(tx: int) -> None:
        # One connection's requests are handled in order, so pipelining
        # WRITE then SET_PERMS per node (parents first) keeps that order.
        await _write_nodes(client, domid, data.nodes, perms, tx)

    await _apply_with_watches(client, domid, write_nodes, data.watches, introduce)


async def _apply_with_watches(
    client: AsyncClient,
    domid: int,
    apply: Callable[[int], Awaitable[None]],
    watches: list[WatchData],
    introduce: tuple[int, int] | None,
) -> None:
    """``apply`` in a transaction that commits once the watches are staged.

    If a request fails, nothing ``apply`` did is kept.  On a conflict (dom0
    wrote under the home meanwhile) the watches are staged already, so
    only ``apply`` runs again.  Then INTRODUCE if asked.
    """
    tx = await client.transaction_start()
    try:
        await apply(tx)
        for batch in watch_batches(domid, watches):
            await client.add_domain_watches(domid, [(w.path, w.token) for w in batch])
    except BaseException:
        with contextlib.suppress(XsError):
            await client.transaction_end(tx, commit=False)
        raise
    try:
        await client.transaction_end(tx, commit=True)
    except TransactionConflict:
        await client.transaction(apply)
    if introduce is not None:
        await client.introduce(domid, *introduce)


async def resume_domain(
    client: AsyncClient, domid: int, gfn: int | None = None, port: int | None = None
) -> None:
    """Roll back a failed migration: INTRODUCE the quiesced domain again.

    ``gfn`` and ``port`` default to the domain's ``store/ring-ref`` and
    ``store/port`` nodes, which libxl writes.
    """
    home = domain_home(domid)
    if gfn is None or port is None:
        try:
            gfn = (
                int(await client.read(f"{home}/store/ring-ref")) if gfn is None else gfn
            )
            port = (
                int(await client.read(f"{home}/store/port")) if port is None else port
            )
        except (NoEntry, ValueError) as error:
            raise InvalidArgument(
                f"give --gfn and --port: cannot read {home}/store ({error})"
            ) from None
    await client.introduce(domid, gfn, port)


# -- pre-copy: the pause holds only what changed ------------------------------


@dataclass(slots=True)
class PreCopy:
    """A domain's home subtree copied to the destination while it runs."""

    domid: int
    #: The token of the source watch that tracks what changes meanwhile.
    token: str
    #: Nodes copied, by relative path (to tell new nodes from known ones).
    copied: set[str] = field(default_factory=set)


async def precopy(src: AsyncClient, dst: AsyncClient, domid: int) -> PreCopy:
    """Copy the home subtree to the destination while the guest runs.

    An optional first phase of MIGRATION.md a.7, done by the toolstacks
    with the protocol's ordinary requests (the daemons do nothing new), as
    Xen copies a guest's memory while it runs: a watch on the home on the
    source records every change from now on, the whole subtree is read
    and written on the destination (nodes only: no watches, no
    INTRODUCE).  :func:`collect_changes` then quiesces the domain and
    :func:`apply_changes` carries only what changed, so the guest's pause
    no longer grows with the size of its subtree.  Undo with
    :func:`abandon_precopy`.
    """
    home = domain_home(domid)
    token = f"pyxenstored-precopy-{domid}"
    await src.watch(home, token)
    # Not in a transaction: the guest keeps writing, and a transaction over
    # its whole subtree would fail (EAGAIN) for as long as it does.  Nothing
    # needs to be consistent here: whatever changes meanwhile fires the
    # watch, and is read again once the domain is quiesced.
    nodes = await _walk(src, domid, 0, skip_missing=True, batch=_LIVE_BATCH)
    data = DomainData(domid, nodes, [])
    perms = await _applicable_perms(dst, data)
    await dst.transaction(lambda tx: _write_nodes(dst, domid, nodes, perms, tx))
    return PreCopy(domid, token, {n.path for n in nodes})


async def abandon_precopy(src: AsyncClient, dst: AsyncClient, pre: PreCopy) -> None:
    """The migration is off: stop tracking, remove the copy."""
    with contextlib.suppress(XsError):
        await src.unwatch(domain_home(pre.domid), pre.token)
    with contextlib.suppress(NoEntry):
        await dst.rm(domain_home(pre.domid))


@dataclass(slots=True)
class Changes:
    """What changed under a home since :func:`precopy`, and the watches."""

    domid: int
    #: Nodes to write, parents first (relative paths, as in DomainData).
    nodes: list[NodeData]
    #: Absolute paths to remove on the destination.
    removed: list[str]
    watches: list[WatchData]


async def collect_changes(src: AsyncClient, pre: PreCopy) -> Changes:
    """QUIESCE, then read what changed since :func:`precopy`, and the watches.

    Every change under the home before QUIESCE answered fired the source
    watch, and this connection received those events before the QUIESCE
    reply: each changed path is read again (absent: it was removed).

    Raises:
        Busy: QUIESCE timed out (the domain stays quiesced).
    """
    domid = pre.domid
    home = domain_home(domid)
    await src.quiesce(domid)
    dirty = {
        event.path
        for event in src.received_events()
        if event.token == pre.token
        and (event.path == home or event.path.startswith(home + "/"))
    }
    with contextlib.suppress(XsError):
        await src.unwatch(home, pre.token)
    ordered = sorted(dirty, key=lambda p: (p.count("/"), p))
    changed = await _read_level(src, ordered, 0, skip_missing=True)
    present = {p for p, _, _, _ in changed}
    removed = [p for p in ordered if p not in present]
    # A node removed with its parent fires no event of its own: a changed
    # node that no longer lists a child the copy has loses it there too.
    copied = {absolute(domid, p) for p in pre.copied}
    for path, _, _, children in changed:
        listed = {f"{path}/{c}" for c in children}
        removed += sorted(
            c for c in copied if c.rpartition("/")[0] == path and c not in listed
        )
    nodes = [NodeData(relative(domid, p), v, tuple(ps)) for p, v, ps, _ in changed]
    return Changes(domid, nodes, removed, await read_watches(src, domid))


async def apply_changes(
    dst: AsyncClient, changes: Changes, introduce: tuple[int, int] | None = None
) -> None:
    """Apply :func:`collect_changes` on the destination, as :func:`restore_domain`:
    removals and writes in one transaction that commits after the watches
    are staged; then INTRODUCE if ``introduce`` is ``(gfn, port)``."""
    domid = changes.domid
    perms = await _applicable_perms(
        dst, DomainData(domid, changes.nodes, changes.watches)
    )

    async def apply(tx: int) -> None:
        requests = [Request(Op.RM, encode_args(p)) for p in changes.removed]
        for reply in await _pipeline(dst, requests, tx):
            if not isinstance(reply, NoEntry):
                _ok(reply)
        await _write_nodes(dst, domid, changes.nodes, perms, tx)

    await _apply_with_watches(dst, domid, apply, changes.watches, introduce)


async def _write_nodes(
    client: AsyncClient,
    domid: int,
    nodes: list[NodeData],
    perms: dict[str, tuple[str, ...]],
    tx: int,
) -> None:
    """WRITE then SET_PERMS per node, parents first, pipelined in ``tx``."""
    requests = []
    for node in nodes:
        path = absolute(domid, node.path)
        requests.append(Request(Op.WRITE, encode_args(path) + node.value))
        requests.append(Request(Op.SET_PERMS, encode_args(path, *perms[node.path])))
    for reply in await _pipeline(client, requests, tx):
        _ok(reply)
