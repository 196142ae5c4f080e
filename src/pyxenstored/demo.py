"""``make demo``: a live guest migrated between two hosts, with a report.

Run as ``python -m pyxenstored.demo``.  It starts two pyxenstored daemons
(hosts A and B, each with its own emulated hypervisor directory), builds a
guest on A whose drivers keep reading, writing, listing and running
transactions while holding watches, migrates it to B without telling it
(QUIESCE, DOMAIN_XENSTORE_DATA, ADD_DOMAIN_WATCHES, INTRODUCE), checks
that nothing was lost, then does it again with a failure injected after
QUIESCE, which ends in a resume on A.  Exit status 0 when every check
passes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pyxenstored.client.sync import Client
from pyxenstored.sim.migration import Host, MigrationReport, migrate_guest
from pyxenstored.sim.ring import GuestRing
from pyxenstored.sim.toolstack import Toolstack, backend_entries
from pyxenstored.sim.workload import GuestWorkload, guest_watches

__all__ = ["main"]

DOMID = 5


def say(text: str = "") -> None:
    print(text, flush=True)


@contextmanager
def daemon(name: str, directory: str, *extra: str) -> Iterator[Host]:
    """Start pyxenstored for one host (``extra``: more options); stop it."""
    os.makedirs(directory, exist_ok=True)
    socket = os.path.join(directory, "socket")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pyxenstored.cli.xenstored", "-N",
            "--socket", socket, "--host-dir", directory,
            "--log-file", os.path.join(directory, "daemon.log"), *extra,
        ]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pyxenstored for host {name} did not start")
            time.sleep(0.02)
        yield Host(name, directory, socket)
    finally:
        proc.terminate()
        proc.wait(10)


def _events_after(work: GuestWorkload, since: float) -> dict[str, int]:
    counts = {token: 0 for _, token in guest_watches(DOMID)}
    for when, event in work.stats.events:
        if when >= since:
            counts[event.token] = counts.get(event.token, 0) + 1
    return counts


def _build(host: Host, dom0: Client) -> GuestWorkload:
    Toolstack(dom0, host.hostdir).create_domain(DOMID, "demo-guest")
    # The guest may watch @releaseDomain (a host setting of the toolstack).
    dom0.set_perms("@releaseDomain", ["n0", f"r{DOMID}"])
    guest = Client(transport=GuestRing(host.directory, DOMID))
    work = GuestWorkload(guest, DOMID)
    work.setup()
    return work


def _fire_watches(host: Host, dom0: Client) -> None:
    """Make each of the guest's watches fire on ``host``."""
    dom0.write(f"/local/domain/{DOMID}/control/shutdown", b"")
    dom0.write(f"/local/domain/0/backend/vif/{DOMID}/0/state", b"4")
    Toolstack(dom0, host.hostdir).create_domain(DOMID + 1, skeleton=False)
    Toolstack(dom0, host.hostdir).destroy_domain(DOMID + 1)


def _wait_events(
    work: GuestWorkload, since: float, timeout: float = 5.0
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts = _events_after(work, since)
    while min(counts.values()) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = _events_after(work, since)
    return counts


def run_migration(a: Host, b: Host, *, fail: bool) -> bool:
    a0, b0 = Client(a.socket), Client(b.socket)
    work = _build(a, a0)
    ring = work.client._transport  # the hypervisor's handle
    assert isinstance(ring, GuestRing)
    work.start()
    time.sleep(1.0)
    before = work.stats.requests
    say(f"  guest running on host A: {before} operations so far, watches on")
    for path, token in guest_watches(DOMID):
        say(f"      {path!r} (token {token!r})")
    report: MigrationReport = asyncio.run(
        migrate_guest(
            a,
            b,
            DOMID,
            ring,
            fail_after_quiesce=fail,
            # Host B's toolstack builds the backends for the incoming guest.
            destination_entries=backend_entries(DOMID),
        )
    )
    moved_at = time.monotonic()
    time.sleep(1.0)
    target, target0 = (a, a0) if fail else (b, b0)
    target0.set_perms("@releaseDomain", ["n0", f"r{DOMID}"])
    _fire_watches(target, target0)
    counts = _wait_events(work, moved_at)
    work.stop()
    stats = work.stats
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        say(f"  [{'ok' if passed else 'FAIL'}] {text}")

    say()
    if fail:
        say("  failure injected after QUIESCE: the source resumed the domain")
        say(f"    quiesce + read + resume     {report.downtime_seconds * 1000:8.1f} ms")
    else:
        say("  migration report")
        say(f"    nodes moved                 {report.nodes:8d}")
        say(f"    watches moved               {report.watches:8d}")
        say(f"    stream size                 {report.stream_bytes:8d} bytes")
        say(f"    requests left in the ring   {report.pending_request_bytes:8d} bytes")
        say(f"    replies left in the ring    {report.pending_reply_bytes:8d} bytes")
        say(f"    QUIESCE + save              {report.save_seconds * 1000:8.1f} ms")
        say(f"    QUIESCE to running on B     {report.downtime_seconds * 1000:8.1f} ms")
    pause = stats.longest() * 1000
    say(f"    guest-visible pause         {pause:8.1f} ms (longest request)")
    say(f"    guest operations            {stats.requests:8d}")
    say(f"    transactions                {stats.transactions:8d}")
    say(f"    redone after EAGAIN         {stats.retries:8d}")
    say()
    problems = len(stats.failures)
    check(not problems, f"no request failed, was lost or answered twice ({problems})")
    for failure in stats.failures[:5]:
        say(f"         {failure}")
    check(stats.requests > before, "the guest carried on after the migration")
    for token, count in counts.items():
        check(
            count > 0, f"watch {token!r} fired on host {target.name} ({count} events)"
        )
    if not fail:
        check(not report.differences, "nodes and permissions on B equal A's at QUIESCE")
        for difference in report.differences[:5]:
            say(f"         {difference}")
        check(not a0.is_domain_introduced(DOMID), "the domain is gone from host A")
    a0.close()
    b0.close()
    work.client.close()
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    base = tempfile.mkdtemp(prefix="pyxs-demo-", dir="/tmp")
    try:
        ok = True
        for fail in (False, True):
            title = (
                "failure injected: resume on the source"
                if fail
                else "non-cooperative migration A -> B"
            )
            say(f"== {title}")
            run = os.path.join(base, "fail" if fail else "ok")
            with (
                daemon("A", os.path.join(run, "a")) as a,
                daemon("B", os.path.join(run, "b")) as b,
            ):
                ok = run_migration(a, b, fail=fail) and ok
            say()
        say("all checks passed" if ok else "SOME CHECKS FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
