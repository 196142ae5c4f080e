"""Where xenstored's socket is, as libxenstore looks for it.

The one lookup (``xs_daemon_rundir`` and ``xs_daemon_socket`` in C) for
both sides: the clients connect there (:func:`pyxenstored.client.socket_path`)
and the daemon listens there unless told otherwise.  A module of its own so
that the daemon does not import the client package for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["DEFAULT_RUNDIR", "daemon_rundir", "socket_path"]

#: C's run directory when ``$XENSTORED_RUNDIR`` is not set.
DEFAULT_RUNDIR = "/var/run/xenstored"


def daemon_rundir(env: Mapping[str, str] | None = None) -> str:
    """``$XENSTORED_RUNDIR``, else ``/var/run/xenstored`` (as C)."""
    env = os.environ if env is None else env
    return env.get("XENSTORED_RUNDIR") or DEFAULT_RUNDIR


def socket_path(env: Mapping[str, str] | None = None) -> str:
    """The socket libxenstore would use: ``$XENSTORED_PATH``, else
    ``$XENSTORED_RUNDIR/socket``, else ``/var/run/xenstored/socket``."""
    env = os.environ if env is None else env
    path = env.get("XENSTORED_PATH")
    if path:
        return path
    return os.path.join(daemon_rundir(env), "socket")
