"""A simulated hypervisor side, toolstack and guest, for tests and demos.

Nothing here is a mock of the daemon: a simulated guest is the real
client library talking over a real shared-memory ring page and real
event-channel sockets, following ``EMULATION.md``, so the same guest can
be served by pyxenstored, C xenstored or oxenstored.
"""

from __future__ import annotations

from pyxenstored.sim.ring import AsyncGuestRing, GuestRing, HostDir

__all__ = ["AsyncGuestRing", "GuestRing", "HostDir"]
