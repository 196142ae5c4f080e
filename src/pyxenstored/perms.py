"""Node permissions: parsing, formatting and the access decision.

PROTOCOL.md section 5.  A permission list is a tuple of :class:`Perm`; the
first entry names the owner and its letter is the default access for every
domain no later entry matches.
"""

from __future__ import annotations

import re
from enum import IntFlag
from functools import lru_cache
from typing import NamedTuple

from pyxenstored.errors import InvalidArgument

__all__ = [
    "DOMID_ANY",
    "DOMID_FIRST_RESERVED",
    "DOMID_INVALID",
    "DOMID_MAX",
    "DOMID_SELF",
    "ALL_BITS",
    "OWNER_BIT",
    "READ_BIT",
    "WRITE_BIT",
    "Access",
    "Perm",
    "Perms",
    "access_for",
    "format_perms",
    "parse_domid",
    "parse_perm",
    "parse_perms",
]

#: First domid of the range Xen reserves for special meanings.
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_INVALID = 0x7FF4
#: (4.22) a permission entry naming it matches every domain.  Not
#: supported here (the feature is not advertised), as in C <= 4.21: an
#: entry naming it is an entry for a domain that does not exist.
DOMID_ANY = 0x7FF5
#: Largest domid the wire accepts (C parses domids as 0..65535).
DOMID_MAX = 65535


class Access(IntFlag):
    """What a connection may do with a node."""

    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3
    #: Owner rights (SET_PERMS); always comes with READ and WRITE.
    OWNER = 4
    ALL = 7


#: The domid syntax C's strtol(.., 0) accepts, minus whitespace and minus
#: signs: the whole text must match, or C would stop early and say EINVAL.
#: Explicit ASCII classes, because Python's int() would also take "1_0",
#: inner spaces, a sign after the prefix and non-ASCII digits.
_DOMID_TEXT = re.compile(r"\+?(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")

#: Plain-int masks of :class:`Access` for the hot path: ``&`` on an IntFlag
#: member runs Python code and is about 25 times slower than on an int.
READ_BIT = 1
WRITE_BIT = 2
OWNER_BIT = 4
ALL_BITS = 7

_LETTERS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}
_LETTER_OF = {v: k for k, v in _LETTERS.items()}


class Perm(NamedTuple):
    """One entry of a permission list: an access letter for a domain.

    ``stale`` marks an entry naming a domain that did not exist when it was
    set (C's ``XS_PERM_IGNORE``): it is reported by GET_PERMS but grants
    nothing, so a domain created later with that domid inherits no access.
    """

    access: Access
    domid: int
    stale: bool = False

    def __str__(self) -> str:
        return f"{_LETTER_OF[self.access]}{self.domid}"


Perms = tuple[Perm, ...]


def parse_domid(text: str) -> int:
    """Strict decimal domid, as C parses it (PROTOCOL.md 1.3).

    Raises:
        InvalidArgument: not plain decimal, or outside 0..65535.
    """
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise InvalidArgument(f"bad domid {text!r}")
    value = int(text)
    if value > DOMID_MAX:
        raise InvalidArgument(f"bad domid {text!r}")
    return value


@lru_cache(maxsize=4096)
def parse_perm(text: str) -> Perm:
    """Parse ``n5``, ``r0``, ``w12``, ``b3``.

    Like C, the domid may carry a ``+``, a ``0x`` (hex) or a leading-``0``
    (octal) prefix, and anything after the number is refused; unlike C,
    leading whitespace, negative values and values above 65535 are refused
    instead of being stored as dead (or truncated) entries (PROTOCOL.md 5.1).

    Raises:
        InvalidArgument: unknown letter, empty or malformed domid.
    """
    match = _DOMID_TEXT.fullmatch(text, 1)
    if not text or text[0] not in _LETTERS or match is None:
        raise InvalidArgument(f"bad permission {text!r}")
    hexadecimal, octal, decimal = match.groups()
    if hexadecimal is not None:
        domid = int(hexadecimal, 16)
    elif octal is not None:
        domid = int(octal, 8)
    else:
        domid = int(decimal)
    if domid > DOMID_MAX:
        raise InvalidArgument(f"bad permission {text!r}")
    return Perm(_LETTERS[text[0]], domid)


def parse_perms(texts: list[str]) -> Perms:
    """Parse a permission list (at least one entry).

    Raises:
        InvalidArgument: empty list or a malformed entry.
    """
    if not texts:
        raise InvalidArgument("empty permission list")
    return tuple(parse_perm(t) for t in texts)


def format_perms(perms: Perms) -> list[str]:
    """The wire strings of a permission list, owner first."""
    return [str(p) for p in perms]


def access_for(perms: Perms, domid: int, target: int | None, privileged: bool) -> int:
    """Access of a caller to a node with ``perms`` (C ``perm_for_conn``).

    Args:
        perms: the node's permission list.
        domid: the caller's domid.
        target: the caller's SET_TARGET target, if any.
        privileged: the caller is the privileged domain or a local socket.

    Returns:
        A mask of :data:`READ_BIT`, :data:`WRITE_BIT` and :data:`OWNER_BIT`
        (the int values of :class:`Access`).
    """
    if privileged:
        return ALL_BITS
    owner = perms[0].domid
    if owner == domid or owner == target:  # noqa: SIM109 - hot path, no tuple
        return ALL_BITS
    for perm in perms[1:]:
        if perm.stale:
            continue
        if perm.domid == domid or perm.domid == target:
            return perm.access._value_
    return perms[0].access._value_
