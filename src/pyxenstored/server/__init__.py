"""The asyncio shell of the daemon: sockets, rings, signals, logs."""

from __future__ import annotations

from pyxenstored.server.config import Config
from pyxenstored.server.daemon import Daemon

__all__ = ["Config", "Daemon"]
