"""A simulated toolstack: build, introduce and destroy guest domains.

:func:`domain_skeleton` is the tree libxl writes for a PV guest with one
network and one block device (``libxl__domain_make`` and the device
code): about 30 nodes under ``/local/domain/<N>`` with libxl's
permissions (dom0 owns, the guest reads, the guest owns its writable
areas), ``/vm/<uuid>``, ``/libxl/<N>`` and the backend entries under
dom0.  :class:`Toolstack` writes it through a real client, gives the
domain a ring page in the host directory and sends a genuine INTRODUCE.
"""

from __future__ import annotations

import contextlib
import time
import uuid

from pyxenstored.client.sync import Client
from pyxenstored.errors import NoEntry, XsError
from pyxenstored.sim.ring import HostDir

__all__ = ["Toolstack", "backend_entries", "domain_skeleton"]

Entry = tuple[str, bytes, tuple[str, ...]]


def domain_skeleton(
    domid: int, name: str | None = None, backend: int = 0
) -> list[Entry]:
    """The nodes libxl writes for domain ``domid``, parents first."""
    home = f"/local/domain/{domid}"
    vm = f"/vm/{uuid.UUID(int=domid)}"
    ro = ("n0", f"r{domid}")  # dom0 owns, the guest may read
    rw = (f"n{domid}",)  # the guest owns
    fe = (f"n{domid}", f"r{backend}")  # frontend: guest owns, backend reads
    be = (f"n{backend}", f"r{domid}")  # backend: backend owns, guest reads
    name = name or f"guest{domid}"
    bdir = f"/local/domain/{backend}/backend"
    entries: list[Entry] = [
        (home, b"", ro),
        (f"{home}/vm", vm.encode(), ro),
        (f"{home}/name", name.encode(), ro),
        (f"{home}/domid", str(domid).encode(), ro),
        (f"{home}/cpu", b"", ro),
        (f"{home}/cpu/0", b"", ro),
        (f"{home}/cpu/0/availability", b"online", ro),
        (f"{home}/memory", b"", ro),
        (f"{home}/memory/static-max", b"524288", ro),
        (f"{home}/memory/target", b"524288", ro),
        (f"{home}/control", b"", ro),
        (f"{home}/control/shutdown", b"", rw),
        (f"{home}/control/feature-poweroff", b"", rw),
        (f"{home}/control/feature-reboot", b"", rw),
        (f"{home}/control/feature-suspend", b"", rw),
        (f"{home}/control/sysrq", b"", rw),
        (f"{home}/control/platform-feature-multiprocessor-suspend", b"1", ro),
        (f"{home}/control/platform-feature-xs_reset_watches", b"1", ro),
        (f"{home}/data", b"", rw),
        (f"{home}/drivers", b"", rw),
        (f"{home}/feature", b"", rw),
        (f"{home}/attr", b"", rw),
        (f"{home}/error", b"", rw),
        (f"{home}/store", b"", ro),
        (f"{home}/store/port", b"1", ro),
        (f"{home}/store/ring-ref", b"0", ro),
        (f"{home}/console", b"", ro),
        (f"{home}/console/port", b"2", ro),
        (f"{home}/console/ring-ref", b"1", ro),
        (f"{home}/device", b"", ro),
        (f"{home}/device/vif", b"", ro),
        (f"{home}/device/vif/0", b"", fe),
        (f"{home}/device/vif/0/backend", f"{bdir}/vif/{domid}/0".encode(), fe),
        (f"{home}/device/vif/0/backend-id", str(backend).encode(), fe),
        (f"{home}/device/vif/0/state", b"1", fe),
        (
            f"{home}/device/vif/0/mac",
            f"00:16:3e:00:{domid >> 8 & 255:02x}:{domid & 255:02x}".encode(),
            fe,
        ),
        (vm, b"", ro),
        (f"{vm}/name", name.encode(), ro),
        (f"{vm}/uuid", vm[4:].encode(), ro),
        (f"/libxl/{domid}", b"", ("n0",)),
        (f"/libxl/{domid}/type", b"pv", ("n0",)),
        (f"{bdir}/vif/{domid}/0", b"", be),
        (f"{bdir}/vif/{domid}/0/frontend", f"{home}/device/vif/0".encode(), be),
        (f"{bdir}/vif/{domid}/0/frontend-id", str(domid).encode(), be),
        (f"{bdir}/vif/{domid}/0/state", b"1", be),
        (f"{bdir}/vif/{domid}/0/online", b"1", be),
    ]
    return entries


def backend_entries(domid: int, backend: int = 0) -> list[Entry]:
    """The part of the skeleton that lives in the backend domain's area.

    A migration's destination toolstack builds these itself before the
    guest's own nodes arrive (MIGRATION.md c.3).
    """
    prefix = f"/local/domain/{backend}/backend/"
    return [
        e for e in domain_skeleton(domid, backend=backend) if e[0].startswith(prefix)
    ]


class Toolstack:
    """dom0's toolstack for one host: a privileged client and the host dir."""

    def __init__(self, client: Client, host: HostDir) -> None:
        self.client = client
        self.host = host

    def write_entries(self, entries: list[Entry]) -> None:
        """Write nodes and permissions, all in one transaction."""

        def body(tx: int) -> None:
            for path, value, perms in entries:
                self.client.write(path, value, tx)
                self.client.set_perms(path, perms, tx)

        self.client.transaction(body)

    def create_domain(
        self,
        domid: int,
        name: str | None = None,
        *,
        introduce: bool = True,
        skeleton: bool = True,
        gfn: int = 0xFEFFF,
        port: int = 1,
    ) -> None:
        """Build domain ``domid``: ring page, nodes, then INTRODUCE."""
        self.host.create_domain(domid)
        if skeleton:
            self.write_entries(domain_skeleton(domid, name))
        if introduce:
            self.client.introduce(domid, gfn, port)

    def destroy_domain(self, domid: int, timeout: float = 5.0) -> None:
        """Destroy the domain in the hypervisor; wait for xenstore's clean-up."""
        self.host.kill_domain(domid, remove=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.client.is_domain_introduced(domid):
                    break
            except XsError:
                break
            time.sleep(0.01)
        home = f"/local/domain/{domid}"
        for path in (home, f"/vm/{uuid.UUID(int=domid)}", f"/libxl/{domid}"):
            with contextlib.suppress(NoEntry):
                self.client.rm(path)
