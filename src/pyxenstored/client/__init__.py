"""The xenstore client library: blocking :class:`Client` and asyncio
:class:`AsyncClient`, both thin façades over one sans-IO core.

Example::

    from pyxenstored.client import Client

    with Client() as xs:                      # $XENSTORED_PATH, ... as libxenstore
        xs.write("/vm/1/name", b"guest")
        xs.watch("/vm/1", "my-token")
        path, token = xs.wait_watch(timeout=1.0)
        xs.transaction(lambda tx: xs.write("/vm/1/state", b"up", tx))
"""

from __future__ import annotations

from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.protocol import ClientProtocol, WatchEvent
from pyxenstored.client.sync import Client
from pyxenstored.client.transport import (
    AsyncTransport,
    AsyncUnixTransport,
    DeviceTransport,
    Transport,
    UnixTransport,
    open_transport,
    socket_path,
)

__all__ = [
    "AsyncClient",
    "AsyncTransport",
    "AsyncUnixTransport",
    "Client",
    "ClientProtocol",
    "DeviceTransport",
    "Transport",
    "UnixTransport",
    "WatchEvent",
    "open_transport",
    "socket_path",
]
