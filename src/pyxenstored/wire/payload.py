"""NUL-separated payload arguments (PROTOCOL.md 1.3).

Protocol strings are decoded as Latin-1 so that every byte maps to one
character and back: paths are validated separately (:mod:`pyxenstored.paths`),
while tokens may hold any NUL-free byte and must be echoed unchanged.
"""

from __future__ import annotations

from pyxenstored.errors import InvalidArgument

__all__ = [
    "ENCODING",
    "OK",
    "join_args",
    "one_arg",
    "parse_unsigned",
    "split_args",
    "split_value",
]

#: How protocol strings become bytes and back (one byte, one character).
ENCODING = "latin-1"
#: The payload of a plain success reply.
OK = b"OK\0"


def one_arg(payload: bytes) -> str:
    """The single NUL-terminated string of ``payload``.

    Raises:
        InvalidArgument: no terminating NUL, or more than one string.
    """
    if not payload or payload[-1] != 0 or payload.find(0) != len(payload) - 1:
        raise InvalidArgument("expected exactly one NUL-terminated string")
    return payload[:-1].decode(ENCODING)


def split_args(payload: bytes) -> list[str]:
    """Every NUL-terminated string of ``payload``.

    Raises:
        InvalidArgument: the last string has no terminating NUL.
    """
    if not payload:
        return []
    if payload[-1] != 0:
        raise InvalidArgument("payload strings must be NUL-terminated")
    return payload[:-1].decode(ENCODING).split("\0")


def split_value(payload: bytes) -> tuple[str, bytes]:
    """Split a WRITE payload into its path and the value after the first NUL.

    Raises:
        InvalidArgument: there is no NUL after the path.
    """
    nul = payload.find(0)
    if nul < 0:
        raise InvalidArgument("WRITE needs a NUL after the path")
    return payload[:nul].decode(ENCODING), payload[nul + 1 :]


def join_args(*args: str) -> bytes:
    """Encode strings as a payload, each followed by a NUL."""
    return b"".join(a.encode(ENCODING) + b"\0" for a in args)


def parse_unsigned(text: str, what: str = "number") -> int:
    """An argument that must be a plain decimal number (ASCII digits only:
    no sign, no blanks, no ``0x``), as C's argument checks take it.

    Raises:
        InvalidArgument: anything else (the message names ``what``).
    """
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(f"bad {what} {text!r}")
    return int(text)
