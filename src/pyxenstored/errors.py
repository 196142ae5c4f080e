"""One exception hierarchy for the server and the client.

Every failure the protocol can carry in an ERROR reply is an
:class:`XsError` subclass registered under its errno *name* (the wire never
carries numbers, see ``xsd_errors`` in ``xs_wire.h``).  The server raises
them from the store and turns them into ERROR replies in one place; the
client raises the same classes when it decodes an ERROR reply, so
``except NoEntry:`` reads the same on both sides.
"""

from __future__ import annotations

import errno
from typing import ClassVar

__all__ = [
    "AlreadyConnected",
    "AlreadyExists",
    "Busy",
    "BrokenConnection",
    "ConnectionClosed",
    "ERROR_NAMES",
    "InternalError",
    "InvalidArgument",
    "IsDirectory",
    "LocalProtocolError",
    "NoEntry",
    "NoSpace",
    "NotEmpty",
    "NotPermitted",
    "NotSupported",
    "OutOfMemory",
    "PermissionDenied",
    "ProtocolError",
    "ReadOnly",
    "RemoteProtocolError",
    "TooBig",
    "TransactionConflict",
    "XenstoreError",
    "XsError",
]

#: The ``xsd_errors[]`` table of ``xs_wire.h``, in its order.  New names may
#: only be appended upstream.
ERROR_NAMES: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)


#: What each name means in xenstore terms.
_TEXT = {
    "EINVAL": "invalid argument",
    "EACCES": "permission denied",
    "EEXIST": "already exists",
    "EISDIR": "is a directory",
    "ENOENT": "no such node",
    "ENOMEM": "out of memory",
    "ENOSPC": "quota exceeded",
    "EIO": "input/output error",
    "ENOTEMPTY": "not empty",
    "ENOSYS": "operation not supported",
    "EROFS": "read-only",
    "EBUSY": "busy",
    "EAGAIN": "transaction conflict, try again",
    "EISCONN": "already connected",
    "E2BIG": "too big",
    "EPERM": "operation not permitted",
}


class XenstoreError(Exception):
    """Base of every exception raised by pyxenstored."""


class ProtocolError(XenstoreError):
    """Traffic that does not follow the wire format."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal; the byte stream cannot be trusted."""


class ConnectionClosed(XenstoreError):
    """The connection was closed by this side."""


class BrokenConnection(XenstoreError):
    """The peer went away or the transport broke."""


class XsError(XenstoreError):
    """A failure carried by an ERROR reply, named by its errno name.

    Subclasses register their name with ``class X(XsError, code="ENAME")``;
    :meth:`from_code` finds the class for a name read off the wire.
    """

    code: ClassVar[str] = "EINVAL"
    _registry: ClassVar[dict[str, type[XsError]]] = {}

    def __init_subclass__(cls, code: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            if code not in ERROR_NAMES:
                raise ValueError(f"{code} is not a xenstore error name")
            cls.code = code
            XsError._registry[code] = cls

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.describe(self.code))
        self.message = message

    @property
    def errno(self) -> int:
        """The host errno value for this error name."""
        return int(getattr(errno, self.code, errno.EINVAL))

    @staticmethod
    def describe(code: str) -> str:
        return f"{code}: {_TEXT.get(code, 'error')}"

    @classmethod
    def from_code(cls, code: str, message: str = "") -> XsError:
        """Build the exception for an error name; unknown names mean EINVAL."""
        klass = cls._registry.get(code, InvalidArgument)
        return klass(message)

    def __reduce__(self) -> tuple[type[XsError], tuple[str]]:
        return (type(self), (self.message,))


class InvalidArgument(XsError, code="EINVAL"):
    pass


class PermissionDenied(XsError, code="EACCES"):
    pass


class AlreadyExists(XsError, code="EEXIST"):
    pass


class IsDirectory(XsError, code="EISDIR"):
    pass


class NoEntry(XsError, code="ENOENT"):
    pass


class OutOfMemory(XsError, code="ENOMEM"):
    pass


class NoSpace(XsError, code="ENOSPC"):
    pass


class InternalError(XsError, code="EIO"):
    """EIO: the daemon could not carry out the request (C's internal failures)."""


class NotEmpty(XsError, code="ENOTEMPTY"):
    pass


class NotSupported(XsError, code="ENOSYS"):
    pass


class ReadOnly(XsError, code="EROFS"):
    pass


class Busy(XsError, code="EBUSY"):
    pass


class TransactionConflict(XsError, code="EAGAIN"):
    pass


class AlreadyConnected(XsError, code="EISCONN"):
    pass


class TooBig(XsError, code="E2BIG"):
    pass


class NotPermitted(XsError, code="EPERM"):
    pass
