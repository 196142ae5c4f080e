"""The daemon's settings, filled from its command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyxenstored.engine.engine import EngineConfig
from pyxenstored.rundir import daemon_rundir

__all__ = ["Config"]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs to start."""

    socket_path: str
    engine: EngineConfig = field(default_factory=EngineConfig)
    pid_file: str | None = None
    log_file: str | None = None
    trace_file: str | None = None
    verbose: int = 0
    #: Emulated hypervisor directory (EMULATION.md); None: sockets only.
    host_dir: str | None = None
    #: Seconds QUIESCE may take to drain a ring before it answers EBUSY.
    quiesce_timeout: float = 5.0
    #: Seconds between safety-net scans of every ring (lost kicks).
    ring_scan_interval: float = 1.0
    #: A socket client whose unsent output exceeds this is disconnected.
    socket_output_limit: int = 16 * 1024 * 1024
    #: Seconds a watch event may wait for an unprivileged domain (C -w).
    watch_event_timeout: float = 20.0
    #: Serve the master domain's own ring at start (C: cleared by ``-D``).
    domain_init: bool = True
    #: The master domain (C ``--master-domid``); None: the privileged one.
    master_domid: int | None = None
    #: Started by a live update (C ``-U``): take over the saved state.
    live_update: bool = False
    #: ``--restore FILE``: start from a saved state (nodes, quotas only).
    restore_file: str | None = None
    #: Where the live-update state is written (C: ``$XENSTORED_RUNDIR``).
    rundir: str = field(default_factory=daemon_rundir)
    #: The daemon's own arguments, given again to the program a live
    #: update starts (C's rule), without the program name.
    argv: tuple[str, ...] = ()
    #: Hypervisor backend: ``auto``, ``emulated``, ``xen`` or ``none``.
    hypervisor: str = "auto"

    @property
    def master(self) -> int:
        """The domain whose ring is dom0's own (default: the privileged one)."""
        if self.master_domid is None:
            return self.engine.priv_domid
        return self.master_domid
