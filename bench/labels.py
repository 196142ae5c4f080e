"""What the report calls the clients, the daemons and the requests.

The tables, the targets and the plots print the same names; they are
written once here.
"""

from __future__ import annotations

from bench.daemons import CEILING

__all__ = ["CLIENT_TITLES", "LAT_TITLES", "SHORT", "lat_name"]

#: The small-tree clients, in the report's order.
CLIENT_TITLES = {
    "libxenstore": "dom0 clients on the socket: libxenstore (xsbench)",
    "pyxenstored": "dom0 clients on the socket: pyxenstored's Client",
    "ring": "guests on shared-memory rings: pyxenstored's Client over GuestRing",
}
#: The big-tree latency requests (``bench/xslat.c``'s test names).
LAT_TITLES = {
    "read": "read",
    "write": "write",
    "dir": "directory",
    "perms": "get_perms",
    "txn": "transaction (start, read, 2 writes, commit)",
}
#: The daemons in column heads and ratios ("py / C").
SHORT = {CEILING: "null", "py": "py", "c": "C", "ox": "ox"}


def lat_name(test: str) -> str:
    """A latency request's title without its explanation, for table rows."""
    return LAT_TITLES[test].split(" (")[0]
