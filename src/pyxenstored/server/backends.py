"""Choosing the hypervisor backend the daemon serves guests through."""

from __future__ import annotations

import os

from pyxenstored.server.config import Config
from pyxenstored.server.guests import Platform

__all__ = ["BACKENDS", "make_platform"]

#: Choices of ``--hypervisor``.
BACKENDS = ("auto", "emulated", "xen", "none")

#: The device whose presence means "this is a Xen dom0".
EVTCHN_DEVICE = "/dev/xen/evtchn"


def make_platform(
    config: Config,
    *,
    evtchn_fd: int = -1,
    ports: dict[int, int] | None = None,
) -> Platform | None:
    """The backend ``config`` asks for (None: sockets only).

    ``auto`` picks the Xen libraries when ``/dev/xen/evtchn`` exists,
    else the emulation when a host directory is given, else none.

    After a live update (``evtchn_fd``: the event-channel descriptor
    inherited, ``ports``: local port -> domid bound before the exec),
    ``auto`` picks the backend that made the descriptor: the emulation if
    a host directory is given (only our own arguments name one), else the
    Xen libraries (C xenstored, which gives only its own arguments, always
    uses them; under the peers' shim too).

    Raises:
        ValueError: the choice cannot be honoured (one line, for the CLI).
    """
    choice = config.hypervisor
    inherited = evtchn_fd >= 0
    if choice == "auto" and inherited:
        choice = "emulated" if config.host_dir else "xen"
    if choice == "auto":
        if os.path.exists(EVTCHN_DEVICE):
            choice = "xen"
        elif config.host_dir:
            choice = "emulated"
        else:
            choice = "none"
    if choice == "none":
        if inherited:
            raise ValueError("the saved state has an event channel but no backend")
        return None
    if choice == "emulated":
        if not config.host_dir:
            raise ValueError("--hypervisor emulated needs --host-dir DIR")
        from pyxenstored.server.emulated import EmulatedPlatform

        if inherited:
            return EmulatedPlatform(config.host_dir, evtchn_fd=evtchn_fd, ports=ports)
        return EmulatedPlatform(config.host_dir)
    if choice == "xen":
        from pyxenstored.server.xen import XenPlatform

        return XenPlatform(
            master_domid=config.master, evtchn_fd=evtchn_fd if inherited else None
        )
    raise ValueError(f"unknown hypervisor backend {choice!r}")
