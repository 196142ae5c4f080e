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

from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.commands import Request, encode_args, parse_perms, parse_strings
from pyxenstored.errors import NoEntry, TooBig, TransactionConflict, XsError
from pyxenstored.migration.records import NodeData, WatchData
from pyxenstored.migration.snapshot import DomainData, absolute, relative, watch_batches
from pyxenstored.paths import domain_home
from pyxenstored.perms import parse_perm
from pyxenstored.wire.ops import Op

__all__ = ["read_domain", "restore_domain", "resume_domain", "save_domain"]

log = logging.getLogger(__name__)


#: Requests per pipelined write: small enough that the requests always fit
#: the socket buffer while the daemon's replies wait to be read.
_BATCH = 512


async def _pipeline(
    client: AsyncClient, requests: list[Request], tx: int
) -> list[bytes | XsError]:
    results: list[bytes | XsError] = []
    for start in range(0, len(requests), _BATCH):
        results += await client.pipeline(requests[start : start + _BATCH], tx)
    return results


def _ok(reply: bytes | XsError) -> bytes:
    if isinstance(reply, XsError):
        raise reply
    return reply


async def _read_level(
    client: AsyncClient, paths: list[str], tx: int
) -> list[tuple[str, bytes, list[str], list[str]]]:
    """Value, permissions and children of every path, pipelined."""
    requests = []
    for path in paths:
        arg = encode_args(path)
        requests += [
            Request(Op.READ, arg),
            Request(Op.GET_PERMS, arg),
            Request(Op.DIRECTORY, arg),
        ]
    replies = await _pipeline(client, requests, tx)
    found = []
    for i, path in enumerate(paths):
        value, perms, listing = replies[3 * i : 3 * i + 3]
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

    async def walk(tx: int) -> list[NodeData]:
        nodes: list[NodeData] = []
        level = [domain_home(domid)]
        while level:
            found = await _read_level(client, level, tx)
            level = []
            for path, value, perms, children in found:
                nodes.append(NodeData(relative(domid, path), value, tuple(perms)))
                level.extend(f"{path}/{name}" for name in children)
        return nodes

    return await client.transaction(walk)


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
        raise XsError.from_code("EEXIST", f"domain {domid} is already introduced")
    try:
        await client.get_domain_watches(domid, 0)
    except NoEntry:
        pass
    else:
        # A second restore would add every watch twice (MIGRATION.md c.17).
        raise XsError.from_code("EEXIST", f"domain {domid} was already restored")
    perms = await _applicable_perms(client, data)

    async def write_nodes(tx: int) -> None:
        # One connection's requests are handled in order, so pipelining
        # WRITE then SET_PERMS per node (parents first) keeps that order.
        requests = []
        for node in data.nodes:
            path = absolute(domid, node.path)
            requests.append(Request(Op.WRITE, encode_args(path) + node.value))
            requests.append(Request(Op.SET_PERMS, encode_args(path, *perms[node.path])))
        for reply in await _pipeline(client, requests, tx):
            _ok(reply)

    tx = await client.transaction_start()
    try:
        await write_nodes(tx)
        for batch in watch_batches(domid, data.watches):
            await client.add_domain_watches(domid, [(w.path, w.token) for w in batch])
    except BaseException:
        with contextlib.suppress(XsError):
            await client.transaction_end(tx, commit=False)
        raise
    try:
        await client.transaction_end(tx, commit=True)
    except TransactionConflict:
        # Someone wrote under the home meanwhile; the watches are staged
        # already, so only the nodes are written again.
        await client.transaction(write_nodes)
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
            raise XsError.from_code(
                "EINVAL", f"give --gfn and --port: cannot read {home}/store ({error})"
            ) from None
    await client.introduce(domid, gfn, port)
