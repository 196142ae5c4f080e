"""The Xen backend: guests served through the real Xen libraries (REALXEN.md).

One :class:`~pyxenstored.server.guests.Platform` over libxenevtchn,
libxengnttab and libxenctrl (:mod:`pyxenstored.server.xenlibs`), as C
xenstored uses them on a Debian 12 dom0:

* rings are mapped with the reserved xenstore grant of each domain
  (``xengnttab_map_grant_ref(domid, 1)``; the gfn of INTRODUCE is not
  needed), dom0's own ring through ``/proc/xen/xsd_kva``;
* one event-channel file descriptor: ``xenevtchn_pending`` names the port,
  which is unmasked once read; ``VIRQ_DOM_EXC`` is bound at start, and
  binding it fails when another xenstore daemon runs on the host;
* whether a domain lives comes from ``xc_domain_getinfo``.

Ring memory is read and written with plain loads and stores, in the order
RING.md gives (data before the producer index, the consumer index after
the data is copied).  Python cannot issue a memory barrier: on x86, whose
stores are not reordered with stores nor loads with loads, that order is
the order the other side sees; on a weakly ordered machine it is not
guaranteed (docs/realxen.md).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from pyxenstored.engine.domains import DomainState
from pyxenstored.errors import NoEntry
from pyxenstored.server import xenlibs
from pyxenstored.server.guests import RingPage

__all__ = ["AnotherDaemon", "XenPlatform"]

log = logging.getLogger(__name__)

#: ``VIRQ_DOM_EXC``: some domain changed state (xen/include/public/xen.h).
VIRQ_DOM_EXC = 3
#: C allows one grant mapping per possible domain.
DOMID_FIRST_RESERVED = 0x7FF0


class AnotherDaemon(OSError):
    """``VIRQ_DOM_EXC`` is bound already: another xenstore daemon runs here."""


class XenPlatform:
    """The Xen libraries of a dom0 as the guests' hypervisor."""

    description = "Xen (libxenevtchn, libxengnttab, libxenctrl)"

    def __init__(self, master_domid: int = 0, evtchn_fd: int | None = None) -> None:
        #: The domain whose ring is dom0's own (``--master-domid``).
        self.master_domid = master_domid
        #: An event-channel fd inherited across live update (fdopen).
        self._inherited_fd = evtchn_fd
        self._xc: xenlibs.DomainControl | None = None
        self._gnttab: xenlibs.GrantTables | None = None
        self._evtchn: xenlibs.EventChannels | None = None
        self._dom0: xenlibs.Dom0Xenbus | None = None
        self.virq_port = 0

    # -- life cycle ----------------------------------------------------------

    def open(self) -> None:
        """Open the three libraries in C's order and bind VIRQ_DOM_EXC.

        Raises:
            AnotherDaemon: another xenstore daemon has the VIRQ.
            OSError: a library or device cannot be opened (one-line message).
        """
        try:
            self._xc = xenlibs.DomainControl.open()
            self._gnttab = xenlibs.GrantTables.open()
            self._gnttab.set_max_grants(DOMID_FIRST_RESERVED)
            if self._inherited_fd is None:
                self._evtchn = xenlibs.EventChannels.open()
            else:
                self._evtchn = xenlibs.EventChannels.fdopen(self._inherited_fd)
            try:
                self.virq_port = self._evtchn.bind_virq(VIRQ_DOM_EXC)
            except OSError as error:
                if error.errno == errno.EEXIST:
                    raise AnotherDaemon(
                        errno.EEXIST,
                        "another xenstore daemon runs on this host "
                        "(VIRQ_DOM_EXC is bound already)",
                    ) from None
                raise
        except BaseException:
            self.close()
            raise

    def prepare_exec(self) -> int:
        """Live update: the event-channel fd, kept open across exec.

        VIRQ_DOM_EXC is unbound first, as C does (``domain_deinit``): the
        new program binds it again, and a VIRQ can be bound only once.
        The interdomain ports stay bound in the kernel with the fd.
        """
        evtchn = self._events()
        if self.virq_port:
            self._unbind_quietly(self.virq_port)
            self.virq_port = 0
        fd = evtchn.fileno()
        os.set_inheritable(fd, True)
        return fd

    def exec_failed(self) -> None:
        """The exec did not happen: serve on as before."""
        evtchn = self._events()
        os.set_inheritable(evtchn.fileno(), False)
        if not self.virq_port:
            self.virq_port = evtchn.bind_virq(VIRQ_DOM_EXC)

    def close(self) -> None:
        if self._evtchn is not None:
            if self.virq_port:
                self._unbind_quietly(self.virq_port)
                self.virq_port = 0
            self._evtchn.close()
            self._evtchn = None
        if self._gnttab is not None:
            self._gnttab.close()
            self._gnttab = None
        if self._xc is not None:
            self._xc.close()
            self._xc = None

    def _unbind_quietly(self, port: int) -> None:
        assert self._evtchn is not None
        try:
            self._evtchn.unbind(port)
        except OSError as error:
            log.warning("unbinding event channel port %d: %s", port, error)

    def _events(self) -> xenlibs.EventChannels:
        assert self._evtchn is not None, "not open"
        return self._evtchn

    def fileno(self) -> int:
        return self._events().fileno()

    def pending(self) -> int | None:
        """A pending port, unmasked as it is read (C's handle_event)."""
        evtchn = self._events()
        port = evtchn.pending()
        if port is not None:
            evtchn.unmask(port)
        return port

    # -- domains and rings ---------------------------------------------------

    def domain_state(self, domid: int) -> DomainState:
        assert self._xc is not None, "not open"
        info = self._xc.info(domid)
        if info is None:
            return DomainState.GONE
        if info.dying:
            return DomainState.DYING
        if info.shutdown or info.crashed:
            return DomainState.SHUTDOWN
        return DomainState.RUNNING

    def map_ring(self, domid: int) -> RingPage:
        if domid == self.master_domid:
            # dom0's own ring: the page its kernel published (xsd_kva).
            if self._dom0 is None:
                self._dom0 = xenlibs.Dom0Xenbus()
            page = self._dom0.map_page()
            return page.view, page.unmap
        assert self._gnttab is not None, "not open"
        try:
            mapping = self._gnttab.map_ring(domid)
        except OSError as error:
            # C answers INTRODUCE with the errno of the failed mapping.
            raise NoEntry(f"cannot map the ring of domain {domid}: {error}") from None
        return mapping.view, mapping.unmap

    def master_port(self) -> int | None:
        """The remote port of dom0's own ring (``/proc/xen/xsd_port``)."""
        if self._dom0 is None:
            self._dom0 = xenlibs.Dom0Xenbus()
        return self._dom0.port()

    def bind(self, domid: int, remote_port: int) -> int:
        return self._events().bind_interdomain(domid, remote_port)

    def unbind(self, port: int) -> None:
        self._unbind_quietly(port)

    def notifier(self, domid: int, port: int) -> Callable[[], None]:
        notify = self._events().notify

        def kick() -> None:
            try:
                notify(port)
            except OSError as error:
                log.debug("dom%d: kick failed: %s", domid, error)

        return kick
