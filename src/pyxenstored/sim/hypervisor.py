"""A hypervisor held in memory: the engine's test double, no rings, no I/O.

:class:`MemoryHypervisor` implements the engine's
:class:`~pyxenstored.engine.domains.Hypervisor` interface with
dictionaries: which domains exist and in which state, which rings are
attached, and QUIESCE draining when the test says so.  Give it to the
engine, ``Engine(config, hypervisor=MemoryHypervisor({0, 5}))``, to drive
the pure core as a daemon would without a ring page or an event channel:
engine unit tests and ``bench/engine.py``.

A daemon's hypervisor is the shell's ``Guests`` over a ``Platform``
(``server/guests.py``).  The domain-level calls here (``create_domain``,
``kill_domain``, ``domain_exists``) mirror those of
:class:`~pyxenstored.sim.ring.HostDir`, the emulated host a real daemon
serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pyxenstored.engine.domains import DomainState
from pyxenstored.errors import NoEntry

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection

__all__ = ["MemoryHypervisor"]


class MemoryHypervisor:
    """Domains and rings as dictionaries; QUIESCE drains when told to.

    ``running`` are the domains that exist from the start (dom0 by
    default); any other domain is gone until :meth:`create_domain`.
    """

    def __init__(self, running: Iterable[int] = (0,)) -> None:
        #: Each domain the hypervisor knows, by domid (absent: gone).
        self.states: dict[int, DomainState] = dict.fromkeys(
            running, DomainState.RUNNING
        )
        #: domid -> (gfn, remote port, features) of attached rings.
        self.attached: dict[int, tuple[int, int, int]] = {}
        self.quiesced: set[int] = set()
        #: QUIESCE callbacks waiting for the ring to drain, by domid.
        self.draining: dict[int, list[Callable[[bool], None]]] = {}
        #: Drain at once (an idle ring) or wait for :meth:`drained`.
        self.idle = True
        #: ``(method, domid)`` of every ring call, in order.
        self.calls: list[tuple[str, int]] = []

    # -- the domains (the toolstack's and the guest's doing) -------------------

    def create_domain(self, domid: int) -> None:
        """The domain exists and runs."""
        self.states[domid] = DomainState.RUNNING

    def shutdown_domain(self, domid: int) -> None:
        """The domain shut down or crashed; it still exists."""
        self.states[domid] = DomainState.SHUTDOWN

    def kill_domain(self, domid: int, *, remove: bool = False) -> None:
        """The domain is dying (or, with ``remove``, gone altogether)."""
        if remove:
            self.states.pop(domid, None)
        else:
            self.states[domid] = DomainState.DYING

    def domain_exists(self, domid: int) -> bool:
        return self.domain_state(domid).exists

    def drained(self, domid: int, ok: bool = True) -> None:
        """The ring drained (``ok``) or the QUIESCE timeout expired."""
        if ok:
            self.quiesced.add(domid)
        for done in self.draining.pop(domid, []):
            done(ok)

    # -- the engine's Hypervisor interface ----------------------------------

    def domain_state(self, domid: int) -> DomainState:
        return self.states.get(domid, DomainState.GONE)

    def attach(
        self, conn: Connection, gfn: int, remote_port: int, features: int
    ) -> None:
        if self.domain_state(conn.domid) is not DomainState.RUNNING:
            raise NoEntry("no ring page")
        self.attached[conn.domid] = (gfn, remote_port, features)
        self.calls.append(("attach", conn.domid))

    def rebind(self, conn: Connection, remote_port: int) -> None:
        self.calls.append(("rebind", conn.domid))

    def reset(self, conn: Connection) -> None:
        self.calls.append(("reset", conn.domid))

    def detach(self, conn: Connection) -> None:
        self.attached.pop(conn.domid, None)
        self.quiesced.discard(conn.domid)
        self.draining.pop(conn.domid, None)
        self.calls.append(("detach", conn.domid))

    def quiesce(self, conn: Connection, done: Callable[[bool], None]) -> None:
        self.calls.append(("quiesce", conn.domid))
        if conn.domid in self.quiesced or self.idle:
            self.quiesced.add(conn.domid)
            done(True)
        else:
            self.draining.setdefault(conn.domid, []).append(done)

    def is_quiesced(self, conn: Connection) -> bool:
        return conn.domid in self.quiesced or conn.domid in self.draining

    def resume(self, conn: Connection, remote_port: int) -> None:
        self.quiesced.discard(conn.domid)
        for done in self.draining.pop(conn.domid, []):
            done(False)
        self.calls.append(("resume", conn.domid))
