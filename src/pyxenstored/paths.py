"""Path syntax and canonicalisation (PROTOCOL.md section 4).

A canonical path is absolute (``/a/b``) or special (``@releaseDomain``).
Relative paths are resolved against the caller's home,
``/local/domain/<domid>``, and the caller is told that it was relative so
that watch events can be reported the way the watch was registered.
"""

from __future__ import annotations

import re

from pyxenstored.errors import InvalidArgument

__all__ = [
    "ABS_PATH_MAX",
    "INTRODUCE_DOMAIN",
    "REL_PATH_MAX",
    "RELEASE_DOMAIN",
    "SPECIAL_NODES",
    "canonicalize",
    "domain_home",
    "measured_length",
    "parent_of",
]

#: ``XENSTORE_ABS_PATH_MAX``: absolute paths longer than this are refused.
ABS_PATH_MAX = 3072
#: ``XENSTORE_REL_PATH_MAX``: what clients should keep relative paths within.
REL_PATH_MAX = 2048

#: The two special nodes that hold permissions but no data.
INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_NODES = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)

_VALID = re.compile(r"[A-Za-z0-9\-/_@]+")
_DOMAIN_PREFIX = re.compile(r"/local/domain/[0-9]{1,5}/")


def domain_home(domid: int) -> str:
    """The home path of a domain: ``/local/domain/<domid>``."""
    return f"/local/domain/{domid}"


def canonicalize(path: str, home: str, *, allow_special: bool = False) -> str:
    """Validate ``path`` and make it absolute (C's order, PROTOCOL.md 4.3).

    Args:
        path: the path as the client sent it.
        home: the caller's home path, used for relative paths.
        allow_special: whether ``@`` paths are accepted (watches and the
            permissions of the special nodes).

    Raises:
        InvalidArgument: bad characters, ``//``, a trailing ``/``, an empty
            path, a special path where none is allowed, or an absolute path
            longer than ``ABS_PATH_MAX``.
    """
    if not _VALID.fullmatch(path):
        raise InvalidArgument(f"invalid path {path!r}")
    first = path[0]
    if first == "@":
        if not allow_special:
            raise InvalidArgument("special path not allowed here")
        return path
    if first != "/":
        path = f"{home}/{path}"
    elif path == "/":
        return path
    if path.endswith("/") or "//" in path:
        raise InvalidArgument(f"invalid path {path!r}")
    if len(path) > ABS_PATH_MAX:
        raise InvalidArgument("path too long")
    return path


def measured_length(path: str) -> int:
    """Length counted by the ``path-max`` quota: without a domain prefix."""
    match = _DOMAIN_PREFIX.match(path)
    return len(path) - match.end() if match else len(path)


def parent_of(path: str) -> str:
    """Parent of an absolute path; the parent of ``/x`` is ``/``."""
    parent = path[: path.rfind("/")]
    return parent or "/"
