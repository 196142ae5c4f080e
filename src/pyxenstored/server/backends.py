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


def make_platform(config: Config) -> Platform | None:
    """The backend ``config`` asks for (None: sockets only).

    ``auto`` picks the Xen libraries when ``/dev/xen/evtchn`` exists,
    else the emulation when a host directory is given, else none.

    Raises:
        ValueError: the choice cannot be honoured (one line, for the CLI).
    """
    choice = config.hypervisor
    if choice == "auto":
        if os.path.exists(EVTCHN_DEVICE):
            choice = "xen"
        elif config.host_dir:
            choice = "emulated"
        else:
            choice = "none"
    if choice == "none":
        return None
    if choice == "emulated":
        if not config.host_dir:
            raise ValueError("--hypervisor emulated needs --host-dir DIR")
        from pyxenstored.server.emulated import EmulatedPlatform

        return EmulatedPlatform(config.host_dir)
    if choice == "xen":
        from pyxenstored.server.xen import XenPlatform

        return XenPlatform(master_domid=config.master)
    raise ValueError(f"unknown hypervisor backend {choice!r}")
