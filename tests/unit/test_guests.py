"""The guest layer's all-or-nothing INTRODUCE, over a platform that fails.

A stand-in :class:`Platform` refuses the event-channel binding (as a
hypervisor may): INTRODUCE must give the error to the caller, unmap the
page it had mapped and leave no half-introduced domain behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace

from pyxenstored.engine import Engine
from pyxenstored.engine.domains import DomainState
from pyxenstored.server.guests import Guests, RingPage
from pyxenstored.wire import Op
from pyxenstored.wire.ring import PAGE_SIZE
from tests.enginepeer import Peer


class RefusingPlatform:
    description = "a platform that cannot bind"
    virq_port = 1

    def __init__(self) -> None:
        self.mapped = 0
        self.unmapped = 0

    def open(self) -> None: ...

    def close(self) -> None: ...

    def fileno(self) -> int:
        return -1

    def pending(self) -> Iterator[int]:
        return iter(())

    def domain_state(self, domid: int) -> DomainState:
        return DomainState.RUNNING

    def map_ring(self, domid: int) -> RingPage:
        self.mapped += 1
        return memoryview(bytearray(PAGE_SIZE)), self._unmap

    def _unmap(self) -> None:
        self.unmapped += 1

    def bind(self, domid: int, remote_port: int) -> int:
        raise OSError(22, "xenevtchn_bind_interdomain: Invalid argument")

    def unbind(self, port: int) -> None: ...

    def notifier(self, domid: int, port: int) -> Callable[[], None]:
        return lambda: None

    def master_port(self) -> int | None:
        return None


def test_a_refused_binding_leaves_no_half_introduced_domain() -> None:
    engine = Engine()
    platform = RefusingPlatform()
    daemon = SimpleNamespace(engine=engine, clients={}, flush=lambda: None)
    engine.domains.hypervisor = Guests(daemon, platform)  # type: ignore[arg-type]
    dom0 = Peer(engine, engine.connect_socket())
    dom0.watch("@introduceDomain", "new")
    # C answers the binding's errno (EINVAL here).
    assert dom0.err(Op.INTRODUCE, "7", "4095", "3") == "EINVAL"
    assert platform.mapped == platform.unmapped == 1
    assert dom0.ok(Op.IS_DOMAIN_INTRODUCED, "7") == b"F\0"
    assert dom0.events() == []
    assert daemon.clients == {}
    assert [c.domid for c in engine.connections.values() if not c.is_socket] == []
