"""The asyncio shell of the daemon: sockets, rings, signals, logs."""

from __future__ import annotations

from pyxenstored.server.config import Config, default_socket_path
from pyxenstored.server.daemon import Daemon

__all__ = ["Config", "Daemon", "default_socket_path"]
