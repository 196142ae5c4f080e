"""What the ``pyxenstore`` sub-commands share: exit handling, output, escaping.

Escaping follows xenstore-utils 4.17 (``sanitise_value`` on output,
``unsanitise_value`` on input), as observed on the real tools.
"""

from __future__ import annotations

import os
import re
import sys

from pyxenstored.errors import XenstoreError, XsError
from pyxenstored.wire.payload import ENCODING

__all__ = [
    "CliExit",
    "PROG",
    "atoi",
    "path_arg",
    "sanitise",
    "stdout",
    "unsanitise",
    "warn",
    "why",
]

PROG = "pyxenstore"
INT_MAX = 2**31 - 1


class CliExit(Exception):
    """Stop with a message on stderr (C ``errx``) and an exit status."""

    def __init__(self, message: str | None, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- escaping (xenstore-utils' sanitise_value / unsanitise_value behaviour) --


def _escape(c: int) -> bytes:
    if 0x20 <= c <= 0x7E and c != 0x5C:
        return bytes([c])
    named = {0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r", 0x5C: b"\\\\"}
    if c in named:
        return named[c]
    return b"\\%03o" % c if c < 8 else b"\\x%02x" % c


_ESCAPED = [_escape(c) for c in range(256)]
_UNESCAPED = {ord("t"): 0x09, ord("n"): 0x0A, ord("r"): 0x0D, ord("\\"): 0x5C}
_HEX = re.compile(rb"[ \t\n\v\f\r]*(?:(0[xX])|([+-]?[0-9a-fA-F]{1,2}))")


def sanitise(value: bytes) -> bytes:
    """Escape a value for printing, as ``xenstore-read`` does."""
    return b"".join([_ESCAPED[c] for c in value])


def _scan_hex(spec: bytes, i: int) -> tuple[int, int]:
    """glibc ``sscanf("%2x")`` at ``spec[i:]``: (value, bytes used, 0 = none)."""
    match = _HEX.match(spec, i)
    if match is None:
        return 0, 0
    if match[1] is not None:  # "0x" fills the field width: the value is 0
        return 0, match.end() - i
    digits = match[2][:2]  # a sign counts towards the width
    return int(digits, 16), match.start(2) + len(digits) - i


def unsanitise(spec: bytes) -> bytes:
    """Undo :func:`sanitise` on a command-line value, as ``xenstore-write``.

    Unknown escapes give the escaped character; a trailing backslash gives
    a NUL byte, exactly like the C tool.
    """
    out = bytearray()
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        i += 1
        if c != 0x5C:
            out.append(c)
        elif i == n:
            out.append(0)
        elif spec[i] == ord("x"):
            value, used = _scan_hex(spec, i + 1)
            out.append(value & 0xFF if used else spec[i])
            i += 1 + used
        elif 0x30 <= spec[i] <= 0x37:
            end = i
            while end < n and end - i < 3 and 0x30 <= spec[end] <= 0x37:
                end += 1
            out.append(int(spec[i:end], 8) & 0xFF)
            i = end
        else:
            out.append(_UNESCAPED.get(spec[i], spec[i]))
            i += 1
    return bytes(out)


def atoi(text: str) -> int:
    """C ``atoi``: leading number or 0, wrapped to a 32-bit int."""
    match = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if match is None:
        return 0
    value = max(min(int(match[1]), 2**63 - 1), -(2**63)) & 0xFFFFFFFF
    return value - 2**32 if value > INT_MAX else value


# -- helpers --


def path_arg(arg: str) -> str:
    """A command-line path as the protocol ``str`` (its original bytes)."""
    return os.fsencode(arg).decode(ENCODING)


def why(exc: XenstoreError) -> str:
    if isinstance(exc, XsError):
        reason = f"{os.strerror(exc.errno)} ({exc.code})"
        return f"{reason}: {exc.message}" if exc.message else reason
    return str(exc) or type(exc).__name__


def warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def stdout(data: bytes) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))
    else:
        sys.stdout.flush()
        stream.write(data)
    sys.stdout.flush()
