"""DOMAIN_XENSTORE_DATA (libxl record 7) and its sub-records.

MIGRATION.md a.2 with the decisions of part c:

* body = sub-type (u32, stream byte order, c.18) + one NUL-separated,
  NUL-terminated tuple; exactly one tuple per record.
* node data (1): ``path\\0value\\0perm_1\\0...perm_N\\0``, N >= 1 (c.2).
  ``path`` is relative to ``/local/domain/<domid>``; the empty path is the
  home node itself (c.3).  A value holding a NUL cannot be carried and is
  refused when saving.
* watch data (2): ``path\\0token\\0``, the path exactly as the guest
  registered it: relative, absolute or special (c.6).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from pyxenstored.errors import LocalProtocolError, XsError
from pyxenstored.migration.stream import Record, RecordType, StreamError
from pyxenstored.paths import canonicalize
from pyxenstored.wire.payload import ENCODING

__all__ = [
    "NodeData",
    "SubType",
    "WatchData",
    "decode_xenstore_data",
    "encode_xenstore_data",
]

_SUBTYPE = {False: struct.Struct("<I"), True: struct.Struct(">I")}
#: Plain decimal (c.2), without the leading zeros that C would read as octal.
_PERM = re.compile(r"[nrwb](?:0|[1-9][0-9]*)")
#: Any home works for checking the syntax of a relative path.
_SYNTAX_HOME = "/local/domain/0"


class SubType(IntEnum):
    INVALID = 0
    NODE_DATA = 1
    WATCH_DATA = 2


@dataclass(frozen=True, slots=True)
class NodeData:
    """One node of the domain's home subtree."""

    #: Relative to the domain's home; "" is the home node itself.
    path: str
    value: bytes
    #: SET_PERMS strings, owner first (``n5``, ``r0``...).
    perms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WatchData:
    """One watch of the domain, as it registered it."""

    path: str
    token: str


def encode_xenstore_data(
    item: NodeData | WatchData, big_endian: bool = False
) -> Record:
    """The libxl record for one node or watch.

    Raises:
        LocalProtocolError: a node value holds a NUL byte (the seed format
            cannot carry it), or a string holds a NUL, or no permission.
    """
    if isinstance(item, NodeData):
        if b"\0" in item.value:
            raise LocalProtocolError(
                f"value of {item.path or '(home)'} contains a NUL byte, "
                "which DOMAIN_XENSTORE_DATA cannot carry"
            )
        if not item.perms:
            raise LocalProtocolError(f"node {item.path!r} has no permissions")
        strings = [item.path.encode(ENCODING), item.value]
        strings += [p.encode(ENCODING) for p in item.perms]
        # The value was checked above (with a clearer message).
        checked = strings[:1] + strings[2:]
        subtype = SubType.NODE_DATA
    else:
        strings = [item.path.encode(ENCODING), item.token.encode(ENCODING)]
        checked = strings
        subtype = SubType.WATCH_DATA
    for s in checked:
        if b"\0" in s:
            raise LocalProtocolError("a string of the tuple contains a NUL byte")
    body = _SUBTYPE[big_endian].pack(subtype) + b"".join(s + b"\0" for s in strings)
    return Record(RecordType.DOMAIN_XENSTORE_DATA, body)


def _check_node_path(text: str, offset: int) -> None:
    if text.startswith("/"):
        raise StreamError(
            offset, f"node path {text!r} starts with '/' (must be relative)"
        )
    if text == "":
        return  # the home node itself (c.3)
    # Checked in its absolute form: a node right under the home may be
    # called "@x" (a legal node name), which on its own reads as special.
    try:
        canonicalize(f"{_SYNTAX_HOME}/{text}", _SYNTAX_HOME)
    except XsError:
        raise StreamError(offset, f"invalid node path {text!r}") from None


def _check_watch_path(text: str, offset: int) -> None:
    try:
        canonicalize(text, _SYNTAX_HOME, allow_special=True)
    except XsError:
        raise StreamError(offset, f"invalid watch path {text!r}") from None


def decode_xenstore_data(
    body: bytes, big_endian: bool = False, offset: int = 0
) -> NodeData | WatchData:
    """Parse the body of one DOMAIN_XENSTORE_DATA record.

    Args:
        body: the record body (padding removed).
        big_endian: the stream's byte order.
        offset: where the record starts in the stream, for error messages.

    Raises:
        StreamError: bad sub-type, missing terminating NUL, wrong number of
            strings, an absolute node path, a bad path or permission.
    """
    fmt = _SUBTYPE[big_endian]
    if len(body) < fmt.size:
        raise StreamError(offset, "DOMAIN_XENSTORE_DATA body shorter than its sub-type")
    (subtype,) = fmt.unpack_from(body)
    tuple_bytes = body[fmt.size :]
    if not tuple_bytes or tuple_bytes[-1] != 0:
        raise StreamError(offset, "tuple without its terminating NUL")
    strings = tuple_bytes[:-1].split(b"\0")
    if subtype == SubType.NODE_DATA:
        if len(strings) < 3:
            raise StreamError(offset, "node data needs a path, a value and permissions")
        path = strings[0].decode(ENCODING)
        _check_node_path(path, offset)
        perms = tuple(s.decode(ENCODING) for s in strings[2:])
        for perm in perms:
            if not _PERM.fullmatch(perm) or int(perm[1:]) > 65535:
                raise StreamError(
                    offset, f"malformed permission {perm!r} on node {path!r}"
                )
        return NodeData(path, strings[1], perms)
    if subtype == SubType.WATCH_DATA:
        if len(strings) != 2:
            raise StreamError(offset, "watch data must be exactly a path and a token")
        path = strings[0].decode(ENCODING)
        _check_watch_path(path, offset)
        return WatchData(path, strings[1].decode(ENCODING))
    raise StreamError(offset, f"unknown DOMAIN_XENSTORE_DATA sub-type {subtype}")
