"""Thin ctypes bindings to the Xen libraries C xenstored uses (REALXEN.md 1-4).

Four small handles, one job each, over Debian 12's Xen 4.17 libraries:

* :class:`EventChannels` (libxenevtchn): kicks in both directions and the
  one file descriptor the event loop watches;
* :class:`GrantTables` (libxengnttab): a guest's ring page, mapped through
  its reserved xenstore grant;
* :class:`DomainControl` (libxenctrl): whether a domain is alive, dying or
  shut down;
* :class:`Dom0Xenbus`: dom0's own ring page and port, from ``/proc/xen``.

:class:`XenLibraries` opens the first three in C's order.

Loading (REALXEN.md 6): each library is ``dlopen``'ed with
``RTLD_GLOBAL`` and every symbol is looked up in the process's *global*
scope (``dlopen(NULL)``), never through the library's own handle.  An
``LD_PRELOAD``'ed shim comes first in that scope, so under the peers' shim
the same code runs on the host directory of EMULATION.md instead of
``/dev/xen``.  Every prototype below was checked against the 4.17 headers
(``xenevtchn.h``, ``xengnttab.h``, ``xenctrl.h``); handles are ``void *``.

Errors are :class:`XenError` (an :class:`OSError` carrying the C errno)
whose text is one line naming the call and the reason, so the CLI can print
it as it is.  libxenctrl logs its own failures to stderr as well (C
xenstored passes it no logger either).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import weakref
from collections.abc import Callable, Mapping
from ctypes import c_int, c_long, c_size_t, c_uint, c_uint32, c_void_p
from dataclasses import dataclass
from typing import Any, ClassVar, Final

__all__ = [
    "DOMID_FIRST_RESERVED",
    "GNTTAB_RESERVED_XENSTORE",
    "PAGE_SIZE",
    "VIRQ_DOM_EXC",
    "Dom0Xenbus",
    "DomainControl",
    "DomainInfo",
    "EventChannels",
    "GrantTables",
    "MappedPage",
    "VirqInUse",
    "XenError",
    "XenLibraries",
    "XenUnavailable",
]

#: A ring page: one page of memory.
PAGE_SIZE: Final = 4096
#: ``VIRQ_DOM_EXC``: some domain changed state (xen/xen.h).
VIRQ_DOM_EXC: Final = 3
#: The first reserved domid (xen/xen.h); C sizes the grant map with it.
DOMID_FIRST_RESERVED: Final = 0x7FF0
#: Every guest grants its xenstore page as this reference (grant_table.h).
GNTTAB_RESERVED_XENSTORE: Final = 1
#: ``xenevtchn_open`` flag: leave the device open across exec (live update).
XENEVTCHN_NO_CLOEXEC: Final = 1 << 0

# xc_dominfo_t of Xen 4.17 on x86_64 (/usr/include/xenctrl.h):
#     uint32_t domid;                         offset 0
#     uint32_t ssidref;                       offset 4
#     unsigned int dying:1, crashed:1, shutdown:1, paused:1, ...;   offset 8
#     unsigned int shutdown_reason;           offset 12
#     ... 112 bytes in all (sizeof checked with gcc).
# GCC on x86_64 allocates bit-fields from the least significant bit.
#: ``sizeof(xc_dominfo_t)``; xc_domain_getinfo clears all of it.
DOMINFO_SIZE: Final = 112
#: What we allocate, with room to spare should the struct grow.
DOMINFO_BUFFER_SIZE: Final = 256
DOMINFO_DOMID_OFFSET: Final = 0
DOMINFO_FLAGS_OFFSET: Final = 8
DOMINFO_SHUTDOWN_REASON_OFFSET: Final = 12
DOMINFO_DYING: Final = 1 << 0
DOMINFO_CRASHED: Final = 1 << 1
DOMINFO_SHUTDOWN: Final = 1 << 2
_U32: Final = struct.Struct("=I")

#: name -> (restype, argtypes), from the 4.17 headers.
_Prototypes = Mapping[str, tuple[Any, tuple[Any, ...]]]

_EVTCHN: Final[_Prototypes] = {  # xenevtchn.h
    "xenevtchn_open": (c_void_p, (c_void_p, c_uint)),
    "xenevtchn_fdopen": (c_void_p, (c_void_p, c_int, c_uint)),
    "xenevtchn_close": (c_int, (c_void_p,)),
    "xenevtchn_fd": (c_int, (c_void_p,)),
    "xenevtchn_notify": (c_int, (c_void_p, c_uint32)),
    "xenevtchn_bind_interdomain": (c_int, (c_void_p, c_uint32, c_uint32)),
    "xenevtchn_bind_virq": (c_int, (c_void_p, c_uint)),
    "xenevtchn_unbind": (c_int, (c_void_p, c_uint32)),
    "xenevtchn_pending": (c_int, (c_void_p,)),
    "xenevtchn_unmask": (c_int, (c_void_p, c_uint32)),
}
_GNTTAB: Final[_Prototypes] = {  # xengnttab.h
    "xengnttab_open": (c_void_p, (c_void_p, c_uint)),
    "xengnttab_close": (c_int, (c_void_p,)),
    "xengnttab_set_max_grants": (c_int, (c_void_p, c_uint32)),
    "xengnttab_map_grant_ref": (c_void_p, (c_void_p, c_uint32, c_uint32, c_int)),
    "xengnttab_unmap": (c_int, (c_void_p, c_void_p, c_uint32)),
}
_XENCTRL: Final[_Prototypes] = {  # xenctrl.h (4.17; replaced in 4.18)
    "xc_interface_open": (c_void_p, (c_void_p, c_void_p, c_uint)),
    "xc_interface_close": (c_int, (c_void_p,)),
    "xc_domain_getinfo": (c_int, (c_void_p, c_uint32, c_uint, c_void_p)),
}
_LIBC: Final[_Prototypes] = {  # sys/mman.h; the offset is always 0
    "mmap": (c_void_p, (c_void_p, c_size_t, c_int, c_int, c_int, c_long)),
    "munmap": (c_int, (c_void_p, c_size_t)),
}
_MAP_FAILED: Final = c_void_p(-1).value


class XenError(OSError):
    """A Xen library call failed.

    ``errno`` is the C errno; ``str()`` is the one-line message alone (no
    ``[Errno N]`` prefix), naming the call, so it can be printed as it is.
    """

    def __str__(self) -> str:
        return str(self.strerror)


class XenUnavailable(XenError):
    """A library is missing or a device cannot be opened: no usable dom0."""


class VirqInUse(XenError):
    """``VIRQ_DOM_EXC`` is bound already: another xenstore daemon runs here."""


def _failure(call: str, hint: str = "", kind: type[XenError] = XenError) -> XenError:
    """The error of the C call that just failed, from its errno."""
    code = ctypes.get_errno() or errno.EIO
    text = f"{call}: {os.strerror(code)}"
    return kind(code, f"{text} ({hint})" if hint else text)


class _Library:
    """The C functions of one library, resolved so a preloaded shim wins.

    The library is loaded into the global scope and its functions are then
    looked up there (module docstring).  Each lookup makes a fresh function
    object, so setting its prototype changes nothing shared.
    """

    def __init__(self, soname: str | None, what: str, prototypes: _Prototypes) -> None:
        if soname is not None:
            try:
                ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
            except OSError as error:
                raise XenUnavailable(
                    errno.ENOENT, f"cannot load the {what} library: {error}"
                ) from None
        scope = ctypes.CDLL(None, use_errno=True)
        self._functions: dict[str, Callable[..., Any]] = {}
        for name, (restype, argtypes) in prototypes.items():
            try:
                function = scope[name]
            except AttributeError:
                raise XenUnavailable(
                    errno.ENOSYS, f"{soname or 'libc'} has no {name} (not Xen 4.17?)"
                ) from None
            function.restype = restype
            function.argtypes = argtypes
            self._functions[name] = function

    def __call__(self, name: str, *args: object) -> Any:
        """Call ``name``, errno cleared first so a failure reports its own."""
        ctypes.set_errno(0)
        return self._functions[name](*args)


class _Page(ctypes.Array[ctypes.c_ubyte]):
    """One page of memory at a given address (a subclass: it takes weakrefs)."""

    _type_ = ctypes.c_ubyte
    _length_ = PAGE_SIZE


class MappedPage:
    """A mapped ring page and the zero-copy view it is used through.

    ``view`` is a writable ``memoryview`` of exactly 4096 bytes, format
    ``'B'``, over the mapping itself.  Touching a page after it is unmapped
    would crash the interpreter, so :meth:`unmap` refuses with
    ``BufferError`` (as ``mmap.close()`` does) while any view derived from
    ``view`` (slice, cast) is still alive, and leaves the page mapped.
    """

    def __init__(self, address: int, unmap: Callable[[int], None], what: str) -> None:
        self.address = address
        self._unmap = unmap
        self._what = what
        self._page: _Page | None = _Page.from_address(address)
        with memoryview(self._page) as raw:  # format '<B': cast to plain 'B'
            self.view = raw.cast("B")

    @property
    def mapped(self) -> bool:
        return self._page is not None

    def unmap(self) -> None:
        """Release ``view`` and unmap the page; again: nothing.

        Raises:
            BufferError: views of the page are still in use.
            XenError: the unmap call failed.
        """
        if self._page is None:
            return
        self.view.release()
        alive = weakref.ref(self._page)
        self._page = None  # the last reference, unless a view holds one
        page = alive()
        if page is not None:
            self._page = page
            raise BufferError(f"cannot unmap {self._what}: views of it are in use")
        self._unmap(self.address)


class _Handle:
    """An open handle of one library: its calls, and closing it once."""

    SONAME: ClassVar[str]
    #: What the library drives, for messages ("event channel").
    WHAT: ClassVar[str]
    PROTOTYPES: ClassVar[_Prototypes]
    #: The device its open call needs, and the question to ask if it is absent.
    DEVICE: ClassVar[str]
    QUESTION: ClassVar[str]
    CLOSE: ClassVar[str]

    def __init__(self, lib: _Library, handle: int) -> None:
        """Use the ``open`` class methods."""
        self._lib = lib
        self._handle: int | None = handle

    @classmethod
    def _open(cls, call: str, *args: object) -> tuple[_Library, int]:
        """Load the library and open a handle with ``call(*args)``.

        Raises:
            XenUnavailable: no library, or ``call`` failed (the device).
        """
        lib = _Library(cls.SONAME, cls.WHAT, cls.PROTOTYPES)
        handle = lib(call, *args)
        if not handle:
            denied = ctypes.get_errno() in (errno.EACCES, errno.EPERM)
            hint = f"{'not root?' if denied else cls.QUESTION} {cls.DEVICE}"
            raise _failure(
                f"cannot open the {cls.WHAT} device: {call}", hint, XenUnavailable
            )
        return lib, handle

    def _raw(self, name: str, *args: object) -> Any:
        """``name(handle, *args)`` as the C function returns it."""
        if self._handle is None:
            raise XenError(errno.EBADF, f"{name}: the handle is closed")
        return self._lib(name, self._handle, *args)

    def _call(self, name: str, *args: int) -> int:
        """``name(handle, *args)``; a negative result raises, naming the call."""
        result: int = self._raw(name, *args)
        if result < 0:
            raise _failure(f"{name}({', '.join(map(str, args))})")
        return result

    def close(self) -> None:
        """Close the handle; again: nothing."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib(self.CLOSE, handle)


class EventChannels(_Handle):
    """libxenevtchn: one handle for every event channel of the daemon.

    Its file descriptor is made non-blocking: the real device blocks in
    ``xenevtchn_pending`` when nothing is pending, and the event loop must
    be able to drain it until it is empty.
    """

    SONAME = "libxenevtchn.so.1"
    WHAT = "event channel"
    PROTOTYPES = _EVTCHN
    DEVICE = "/dev/xen/evtchn"
    QUESTION = "is the xen-evtchn module loaded?"
    CLOSE = "xenevtchn_close"

    def __init__(self, lib: _Library, handle: int) -> None:
        super().__init__(lib, handle)
        self._fd = self._call("xenevtchn_fd")
        try:
            os.set_blocking(self._fd, False)
        except OSError as error:
            self.close()
            raise XenError(
                error.errno or errno.EBADF,
                f"event channel fd {self._fd}: {error.strerror}",
            ) from None

    @classmethod
    def open(cls, *, inheritable: bool = False) -> EventChannels:
        """Open the event channel device (``inheritable``: across exec)."""
        flags = XENEVTCHN_NO_CLOEXEC if inheritable else 0
        return cls(*cls._open("xenevtchn_open", None, flags))

    @classmethod
    def fdopen(cls, fd: int) -> EventChannels:
        """Adopt the fd inherited across live update (exec); ports stay bound."""
        lib = _Library(cls.SONAME, cls.WHAT, cls.PROTOTYPES)
        handle = lib("xenevtchn_fdopen", None, fd, 0)
        if not handle:
            raise _failure(f"xenevtchn_fdopen({fd})")
        return cls(lib, handle)

    def fileno(self) -> int:
        """The descriptor that becomes readable when a port is pending."""
        if self._handle is None:
            raise XenError(errno.EBADF, "xenevtchn_fd: the handle is closed")
        return self._fd

    def bind_interdomain(self, domid: int, remote_port: int) -> int:
        """Bind a local port to ``remote_port`` of ``domid``; the local port."""
        return self._call("xenevtchn_bind_interdomain", domid, remote_port)

    def bind_virq(self, virq: int) -> int:
        """Bind a virtual interrupt; its local port.

        Raises:
            VirqInUse: already bound (``EEXIST``): for ``VIRQ_DOM_EXC``,
                another xenstore daemon runs on this host.
        """
        port: int = self._raw("xenevtchn_bind_virq", virq)
        if port < 0:
            call = f"xenevtchn_bind_virq({virq})"
            if ctypes.get_errno() == errno.EEXIST:
                hint = "another xenstore daemon runs on this host"
                raise _failure(call, hint, VirqInUse)
            raise _failure(call)
        return port

    def unbind(self, port: int) -> None:
        self._call("xenevtchn_unbind", port)

    def notify(self, port: int) -> None:
        """Kick the other end of ``port``."""
        self._call("xenevtchn_notify", port)

    def pending(self) -> int | None:
        """The next pending port (masked until :meth:`unmask`), None if none."""
        while True:
            port: int = self._raw("xenevtchn_pending")
            if port >= 0:
                return port
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            if code != errno.EINTR:
                raise _failure("xenevtchn_pending()")

    def unmask(self, port: int) -> None:
        """Let ``port`` be reported again."""
        self._call("xenevtchn_unmask", port)


class GrantTables(_Handle):
    """libxengnttab: map guests' ring pages by their reserved grant.

    :meth:`close` unmaps what is still mapped first, as the library would
    do anyway, so that no view outlives its page.
    """

    SONAME = "libxengnttab.so.1"
    WHAT = "grant table"
    PROTOTYPES = _GNTTAB
    DEVICE = "/dev/xen/gntdev"
    QUESTION = "is the xen-gntdev module loaded?"
    CLOSE = "xengnttab_close"

    def __init__(self, lib: _Library, handle: int) -> None:
        super().__init__(lib, handle)
        self._pages: dict[int, MappedPage] = {}

    @classmethod
    def open(cls) -> GrantTables:
        """Open the grant device."""
        return cls(*cls._open("xengnttab_open", None, 0))

    def set_max_grants(self, count: int) -> None:
        """Allow ``count`` pages mapped at once (before any mapping)."""
        self._call("xengnttab_set_max_grants", count)

    def map_ring(self, domid: int) -> MappedPage:
        """Map the xenstore page ``domid`` granted (the gfn is not needed)."""
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        ref = GNTTAB_RESERVED_XENSTORE
        address = self._raw("xengnttab_map_grant_ref", domid, ref, prot)
        if not address:
            raise _failure(f"xengnttab_map_grant_ref({domid}, {ref}, {prot})")
        page = MappedPage(address, self._unmap, f"the ring of domain {domid}")
        self._pages[address] = page
        return page

    def _unmap(self, address: int) -> None:
        del self._pages[address]
        if self._raw("xengnttab_unmap", address, 1) < 0:
            raise _failure(f"xengnttab_unmap({address:#x}, 1)")

    def close(self) -> None:
        """Unmap every page still mapped, then close; again: nothing."""
        for page in list(self._pages.values()):
            page.unmap()
        super().close()


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What the daemon needs of ``xc_dominfo_t``."""

    domid: int
    dying: bool
    crashed: bool
    shutdown: bool
    #: ``SHUTDOWN_*`` of xen/sched.h; meaningful only when ``shutdown``.
    shutdown_reason: int


class DomainControl(_Handle):
    """libxenctrl: the state of domains, for ``VIRQ_DOM_EXC``.

    It is opened without loggers, as C does, so libxenctrl logs its own
    failures to stderr too.
    """

    SONAME = "libxenctrl.so.4.17"
    WHAT = "Xen control"
    PROTOTYPES = _XENCTRL
    DEVICE = "/dev/xen/privcmd"
    QUESTION = "is this a Xen dom0?"
    CLOSE = "xc_interface_close"

    @classmethod
    def open(cls) -> DomainControl:
        """Open the hypervisor interface."""
        return cls(*cls._open("xc_interface_open", None, None, 0))

    def info(self, domid: int) -> DomainInfo | None:
        """The state of ``domid``; None if it does not exist.

        4.17's ``xc_domain_getinfo`` answers the first domain *at or after*
        ``domid``, hence the domid check.
        """
        buffer = (ctypes.c_ubyte * DOMINFO_BUFFER_SIZE)()
        count: int = self._raw("xc_domain_getinfo", domid, 1, buffer)
        if count < 0:
            raise _failure(f"xc_domain_getinfo({domid}, 1)")
        (found,) = _U32.unpack_from(buffer, DOMINFO_DOMID_OFFSET)
        if count != 1 or found != domid:
            return None
        (flags,) = _U32.unpack_from(buffer, DOMINFO_FLAGS_OFFSET)
        (reason,) = _U32.unpack_from(buffer, DOMINFO_SHUTDOWN_REASON_OFFSET)
        return DomainInfo(
            domid=domid,
            dying=bool(flags & DOMINFO_DYING),
            crashed=bool(flags & DOMINFO_CRASHED),
            shutdown=bool(flags & DOMINFO_SHUTDOWN),
            shutdown_reason=reason,
        )


class Dom0Xenbus:
    """Dom0's own ring, published by its kernel through xenfs (REALXEN.md 2).

    The page is mapped with libc's ``mmap``, as C does: xenfs files are
    regular files of size 0, which Python's :mod:`mmap` refuses to map
    4096 bytes of.
    """

    def __init__(
        self,
        port_path: str = "/proc/xen/xsd_port",
        kva_path: str = "/proc/xen/xsd_kva",
    ) -> None:
        self.port_path = port_path
        self.kva_path = kva_path
        self._libc: _Library | None = None
        self._page: MappedPage | None = None

    def port(self) -> int:
        """The unbound port dom0's kernel waits on (decimal text)."""
        try:
            with open(self.port_path, encoding="ascii") as file:
                text = file.read()
        except OSError as error:
            raise XenUnavailable(
                error.errno or errno.EIO,
                f"cannot read dom0's xenstore port: {self.port_path}: "
                f"{error.strerror} (is xenfs mounted on /proc/xen?)",
            ) from None
        try:
            return int(text.strip())
        except ValueError:
            raise XenError(
                errno.EINVAL, f"{self.port_path}: not a port number: {text!r}"
            ) from None

    def map_page(self) -> MappedPage:
        """Map the page anew; each mapping is unmapped on its own."""
        if self._libc is None:
            self._libc = _Library(None, "C", _LIBC)
        libc = self._libc
        try:
            fd = os.open(self.kva_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise XenUnavailable(
                error.errno or errno.EIO,
                f"cannot open dom0's xenstore page: {self.kva_path}: "
                f"{error.strerror} (is xenfs mounted on /proc/xen?)",
            ) from None
        try:
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            address = libc("mmap", None, PAGE_SIZE, prot, mmap.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)
        if address in (None, _MAP_FAILED):
            raise _failure(f"mmap({self.kva_path})")

        def munmap(address: int) -> None:
            if libc("munmap", address, PAGE_SIZE) < 0:
                raise _failure(f"munmap({self.kva_path})")

        return MappedPage(address, munmap, "dom0's ring")

    def map(self) -> memoryview:
        """Map the page, writable, 4096 bytes; :meth:`unmap` undoes it.

        Raises:
            XenError: ``EBUSY`` if it is mapped already through this method.
        """
        if self._page is not None:
            raise XenError(errno.EBUSY, "dom0's ring is mapped already")
        self._page = self.map_page()
        return self._page.view

    def unmap(self) -> None:
        """Unmap what :meth:`map` mapped; nothing if nothing is mapped."""
        if self._page is not None:
            self._page.unmap()
            self._page = None


class XenLibraries:
    """The three handles of C xenstored, opened in its order (``domain_init``).

    libxenctrl, then libxengnttab sized for every possible domain, then
    libxenevtchn, fresh or adopted after live update.
    """

    def __init__(
        self, control: DomainControl, grants: GrantTables, events: EventChannels
    ) -> None:
        """Use :meth:`open`."""
        self.control = control
        self.grants = grants
        self.events = events

    @classmethod
    def open(cls, evtchn_fd: int | None = None) -> XenLibraries:
        """Open all three, or none.

        Raises:
            XenUnavailable: a library or device is missing (one line).
        """
        closers: list[Callable[[], None]] = []
        try:
            control = DomainControl.open()
            closers.append(control.close)
            grants = GrantTables.open()
            closers.append(grants.close)
            grants.set_max_grants(DOMID_FIRST_RESERVED)
            if evtchn_fd is None:
                events = EventChannels.open()
            else:
                events = EventChannels.fdopen(evtchn_fd)
        except BaseException:
            for close in reversed(closers):
                close()
            raise
        return cls(control, grants, events)

    def close(self) -> None:
        self.events.close()
        self.grants.close()
        self.control.close()
