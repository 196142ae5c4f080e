"""pyxenstored: a xenstore daemon, client library and tools.

The public client API lives in :mod:`pyxenstored.client`; the daemon is
started with the ``pyxenstored`` command and the client tool is
``pyxenstore``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
