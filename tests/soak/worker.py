"""A soak-test load process: many clients of one daemon in one event loop.

Run by tests/soak/soak_test.py as ``python -m tests.soak.worker``.  Modes:

``load``
    ``--clients`` socket clients and ``--guests`` ring guests run a mixed
    workload for ``--seconds``: writes, reads, directories, permissions,
    watches, transactions (with EAGAIN retries), and now and then a client
    that closes its connection in the middle of a transaction.  Every
    write whose reply said OK is recorded with its value; writes made in a
    transaction that was never committed are recorded as "must not exist".
    A guest whose domain the driver destroyed (its ring page is gone)
    stops without complaint; any other failure is "unexpected".  The
    figures go to ``--out`` as JSON.
``victim``
    Socket clients that open transactions, write in them, leave requests
    unanswered and half a request in flight, then wait to be SIGKILLed.
``burst``
    Like ``load`` but tolerant: for the SIGTERM at the end, when every
    client loses its connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from pyxenstored.client.aio import AsyncClient
from pyxenstored.errors import TransactionConflict, XenstoreError
from pyxenstored.sim.ring import AsyncGuestRing
from pyxenstored.wire import HEADER, Op
from tests.wiretools import frame

#: Bound on every request of the workload.
OP_TIMEOUT = 10.0
KEYS = 16
T = TypeVar("T")


@dataclass
class Tally:
    ops: int = 0
    retries: int = 0
    abrupt_closes: int = 0
    deaths: int = 0
    unexpected: int = 0
    messages: list[str] = field(default_factory=list)
    committed: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)

    def fail(self, who: str, error: BaseException) -> None:
        self.unexpected += 1
        if len(self.messages) < 20:
            self.messages.append(f"{who}: {type(error).__name__}: {error}")


async def bounded(request: Awaitable[T]) -> T:
    async with asyncio.timeout(OP_TIMEOUT):
        return await request


async def socket_client(
    n: int, path: str, deadline: float, tally: Tally, rng: random.Random
) -> None:
    """One dom0 client: its own subtree /soak/c<n>, group counters."""
    base = f"/soak/c{n}"
    group = f"/soak/g{n % 50}/counter"  # four clients share each
    client = AsyncClient(path)
    step = 0
    try:
        while time.monotonic() < deadline:
            step += 1
            choice = rng.random()
            key = f"{base}/k{rng.randrange(KEYS)}"
            if choice < 0.35:
                value = f"{n}-{step}"
                await bounded(client.write(key, value.encode()))
                tally.committed[key] = value
            elif choice < 0.5:
                if key in tally.committed:
                    got = await bounded(client.read(key))
                    if got != tally.committed[key].encode():
                        raise AssertionError(f"{key}: read {got!r}")
            elif choice < 0.6:
                await bounded(client.directory("/soak"))
            elif choice < 0.68:
                await bounded(client.mkdir(f"{base}/perm"))
                await bounded(client.set_perms(f"{base}/perm", ["n0", "r1"]))
                await bounded(client.get_perms(f"{base}/perm"))
            elif choice < 0.75:
                await bounded(client.watch(base, f"w{step}"))
                await bounded(client.unwatch(base, f"w{step}"))
            elif choice < 0.93:
                await transaction(client, base, group, step, tally, rng)
            elif choice < 0.97:
                # Abandoned mid-transaction: the connection just goes.
                tx = await bounded(client.transaction_start())
                gone = f"/soak/aborted/c{n}-{step}"
                await bounded(client.write(gone, b"never", tx))
                tally.absent.append(gone)
                await client.aclose()
                tally.abrupt_closes += 1
                client = AsyncClient(path)
            else:
                # Closed with a request in flight.
                await bounded(client.connect())
                task = asyncio.create_task(client.write(f"{base}/inflight", b"x"))
                await asyncio.sleep(0)
                await client.aclose()
                with contextlib.suppress(XenstoreError, asyncio.CancelledError):
                    await task
                tally.abrupt_closes += 1
                client = AsyncClient(path)
            tally.ops += 1
    except Exception as error:  # reported, not swallowed
        tally.fail(f"socket client {n}", error)
    finally:
        await client.aclose()


async def transaction(
    client: AsyncClient,
    base: str,
    group: str,
    step: int,
    tally: Tally,
    rng: random.Random,
) -> None:
    """Read-modify-write of a shared counter plus an own key, retried."""
    key = f"{base}/tx"
    value = f"tx-{step}"
    for attempt in range(100):
        if attempt:
            await asyncio.sleep(rng.uniform(0, 0.002 * attempt))
        tx = await bounded(client.transaction_start())
        try:
            try:
                current = await bounded(client.read(group, tx))
                count = int(current or b"0")
            except XenstoreError:
                count = 0
            await bounded(client.write(group, str(count + 1).encode(), tx))
            await bounded(client.write(key, value.encode(), tx))
            await bounded(client.transaction_end(tx))
        except TransactionConflict:
            tally.retries += 1
            continue
        tally.committed[key] = value
        return
    raise AssertionError("100 conflicts in a row")


async def guest(
    domid: int, directory: str, deadline: float, tally: Tally, rng: random.Random
) -> None:
    """One guest over its ring: its own data/ area, watches, transactions."""
    client: AsyncClient | None = None
    home = f"/local/domain/{domid}"
    step = 0
    try:
        # Inside the try: with a short run, the driver may destroy a doomed
        # domain before this process has even mapped its ring page.
        client = AsyncClient(transport=AsyncGuestRing(directory, domid))
        await bounded(client.watch("data", "soak"))
        while time.monotonic() < deadline:
            step += 1
            key = f"data/k{rng.randrange(KEYS // 2)}"
            choice = rng.random()
            if choice < 0.4:
                value = f"g{domid}-{step}"
                await bounded(client.write(key, value.encode()))
                tally.committed[f"{home}/{key}"] = value
            elif choice < 0.6:
                await bounded(client.read("name"))
            elif choice < 0.7:
                await bounded(client.directory("data"))
            elif choice < 0.85:
                tx = await bounded(client.transaction_start())
                value = f"t{domid}-{step}"
                await bounded(client.write("data/tx", value.encode(), tx))
                try:
                    await bounded(client.transaction_end(tx))
                    tally.committed[f"{home}/data/tx"] = value
                except TransactionConflict:
                    tally.retries += 1
            else:
                # Take the events of its own writes that piled up.
                with contextlib.suppress(TimeoutError):
                    for _ in range(1000):
                        await client.wait_watch(timeout=0)
            tally.ops += 1
    except Exception as error:  # classified here
        if _alive(directory, domid):
            tally.fail(f"guest {domid}", error)
        else:
            tally.deaths += 1  # the driver destroyed the domain mid-request
            for path in [p for p in tally.committed if p.startswith(home + "/")]:
                del tally.committed[path]
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 2)


def _alive(directory: str, domid: int) -> bool:
    """Whether the domain still exists (the driver removes its page)."""
    return os.path.exists(os.path.join(directory, f"ring-{domid}"))


async def load(args: argparse.Namespace, tolerant: bool) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + args.seconds
    rng = random.Random(args.seed)
    tasks = [
        socket_client(n, args.socket, deadline, tally, random.Random(rng.random()))
        for n in range(args.first_client, args.first_client + args.clients)
    ]
    tasks += [
        guest(d, args.host_dir, deadline, tally, random.Random(rng.random()))
        for d in range(args.first_guest, args.first_guest + args.guests)
    ]
    await asyncio.gather(*tasks)
    if tolerant:
        tally.unexpected = 0
        tally.messages.clear()
    return tally


def victim(args: argparse.Namespace) -> None:
    """Transactions, unanswered requests and half a request; then wait."""
    socks = []
    for i in range(args.clients):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
        sock.sendall(frame(Op.TRANSACTION_START, b"\0", 1))
        reply = sock.recv(64)
        tx = int(reply[16:-1])
        path = f"/soak/victim/{os.getpid()}-{i}\0".encode()
        sock.sendall(frame(Op.WRITE, path + b"never", 2, tx))
        burst = b"".join(frame(Op.READ, b"/\0", 3 + k) for k in range(200))
        sock.sendall(burst)
        half = HEADER.pack(Op.WRITE, 999, 0, 100) + b"/soak/half\0"
        sock.sendall(half)
        socks.append(sock)
    print("ready", flush=True)
    time.sleep(60)  # the driver SIGKILLs us long before


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load", "victim", "burst"])
    p.add_argument("--socket", required=True)
    p.add_argument("--host-dir", default="")
    p.add_argument("--clients", type=int, default=0)
    p.add_argument("--first-client", type=int, default=0)
    p.add_argument("--guests", type=int, default=0)
    p.add_argument("--first-guest", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.mode == "victim":
        victim(args)
        return
    tally = asyncio.run(load(args, tolerant=args.mode == "burst"))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(tally.__dict__, f)


if __name__ == "__main__":
    main()
