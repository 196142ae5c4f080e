"""What xenstored does with each request (pure, no I/O)."""

from __future__ import annotations

from pyxenstored.engine.connections import Connection
from pyxenstored.engine.engine import Engine, EngineConfig

__all__ = ["Connection", "Engine", "EngineConfig"]
