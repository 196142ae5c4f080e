"""Message types and limits from ``xs_wire.h`` (PROTOCOL.md sections 1, 2)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

from pyxenstored.paths import ABS_PATH_MAX, REL_PATH_MAX

__all__ = [
    "ABS_PATH_MAX",
    "HEADER_SIZE",
    "PAYLOAD_MAX",
    "REL_PATH_MAX",
    "Op",
    "ServerFeature",
    "WatchField",
]

#: Largest payload of a message, in either direction.
PAYLOAD_MAX = 4096
#: Size of ``struct xsd_sockmsg``.
HEADER_SIZE = 16


class Op(IntEnum):
    """``enum xsd_sockmsg_type``, plus this project's three seed operations."""

    #: Implementation-defined commands (``xenstore-control``); alias DEBUG.
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    #: Server to client only: a watch fired.
    WATCH_EVENT = 15
    #: Server to client only: the request failed; payload is the error name.
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was RESTRICT, removed upstream: always ENOSYS.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    #: Seed migration design: stop taking requests from a domain's ring.
    #: The number is this project's choice (MIGRATION.md c.1).
    QUIESCE = 27
    #: Seed migration design: register watches on behalf of a domain.
    ADD_DOMAIN_WATCHES = 28
    #: Seed migration design: read a domain's watch list in pages.
    GET_DOMAIN_WATCHES = 29
    #: Guaranteed never to be a valid type.
    INVALID = 0xFFFF


class WatchField(IntEnum):
    """``enum xs_watch_type``: index of each string in a WATCH_EVENT."""

    PATH = 0
    TOKEN = 1


class ServerFeature(IntFlag):
    """Bits of the ring page's ``server_features`` word (RING.md section 5)."""

    NONE = 0
    #: The guest may ask for a ring reset through the ``connection`` field.
    RECONNECTION = 1
    #: The ``error`` field is meaningful.
    ERROR = 2
    #: WATCH accepts a third ``depth`` argument.
    WATCHDEPTH = 4
    #: ``DOMID_ANY`` may be used in permissions.
    DOMID_ANY = 8
