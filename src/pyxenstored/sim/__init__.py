"""A simulated hypervisor side, toolstack and guest, for tests and demos.

:class:`MemoryHypervisor` stands in for the hypervisor of the engine alone
(engine tests, ``bench/engine.py``).  The rest drives real daemons and is
no mock of one: a simulated guest is the real client library talking over
a real shared-memory ring page and real event-channel sockets, following
``EMULATION.md``, so the same guest can be served by pyxenstored, C
xenstored or oxenstored.
"""

from __future__ import annotations

from pyxenstored.sim.hypervisor import MemoryHypervisor
from pyxenstored.sim.ring import AsyncGuestRing, GuestRing, HostDir

__all__ = ["AsyncGuestRing", "GuestRing", "HostDir", "MemoryHypervisor"]
