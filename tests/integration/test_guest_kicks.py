"""A guest that opens its ring again is still kicked at once.

The daemon kicks a guest by sending to ``DIR/notify-N`` by path (EMULATION.md),
so a guest that re-binds that socket (a new boot of its driver, a migration)
gets the very next kick.  Kicks lost here would not break anything (the guest
re-checks its ring every half second) but every request would then wait for
that re-check: this test measures that no request does.
"""

from __future__ import annotations

import time

from pyxenstored.client.sync import Client
from pyxenstored.sim.ring import GuestRing, HostDir
from pyxenstored.sim.toolstack import Toolstack
from tests.conftest import RunningDaemon

DOMID = 4
#: Well under the guest's half-second re-check: a request slower than this
#: waited for the re-check, i.e. its kick was lost.
NO_LOST_KICK = 0.25


def test_reopened_guest_ring_gets_its_kicks(host_daemon: RunningDaemon) -> None:
    with Client(str(host_daemon.socket)) as dom0:
        Toolstack(dom0, HostDir(str(host_daemon.directory))).create_domain(DOMID)
    for attempt in range(3):
        guest = Client(transport=GuestRing(str(host_daemon.directory), DOMID))
        try:
            slowest = 0.0
            for i in range(20):
                start = time.monotonic()
                guest.write("data/k", b"%d-%d" % (attempt, i))
                assert guest.read("data/k") == b"%d-%d" % (attempt, i)
                slowest = max(slowest, time.monotonic() - start)
            assert slowest < NO_LOST_KICK, (attempt, slowest)
        finally:
            guest.close()
