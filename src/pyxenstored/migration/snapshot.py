"""From a domain's nodes and watches to records and back (pure).

The toolstack side of the seed design (MIGRATION.md a.7): the source turns
what it read from the daemon into DOMAIN_XENSTORE_DATA records, parents
first (c.5); the destination validates the whole stream before it applies
anything, and sends the watches in ADD_DOMAIN_WATCHES requests that each
fit the 4096-byte payload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pyxenstored.errors import LocalProtocolError
from pyxenstored.migration.records import (
    NodeData,
    WatchData,
    decode_xenstore_data,
    encode_xenstore_data,
)
from pyxenstored.migration.stream import (
    Record,
    RecordType,
    Stream,
    StreamError,
    encode_record,
)
from pyxenstored.paths import domain_home
from pyxenstored.wire.ops import PAYLOAD_MAX
from pyxenstored.wire.payload import ENCODING

__all__ = [
    "DomainData",
    "absolute",
    "extract",
    "insert_before_end",
    "relative",
    "watch_batches",
]


@dataclass(slots=True)
class DomainData:
    """A domain's xenstore state as carried by the seed records."""

    domid: int
    nodes: list[NodeData] = field(default_factory=list)
    watches: list[WatchData] = field(default_factory=list)

    def records(self, big_endian: bool = False) -> list[Record]:
        """Node records (in the order given, parents first) then watches.

        Raises:
            LocalProtocolError: a value holds a NUL byte (MIGRATION.md c.2).
        """
        items: list[NodeData | WatchData] = [*self.nodes, *self.watches]
        return [encode_xenstore_data(item, big_endian) for item in items]

    def size(self) -> int:
        return sum(len(encode_record(r)) for r in self.records())


def relative(domid: int, path: str) -> str:
    """A path under the domain's home as a node record carries it."""
    home = domain_home(domid)
    if path == home:
        return ""
    if not path.startswith(home + "/"):
        raise LocalProtocolError(f"{path} is not under {home}")
    return path[len(home) + 1 :]


def absolute(domid: int, path: str) -> str:
    """The absolute path of a node record's path (MIGRATION.md c.3)."""
    home = domain_home(domid)
    return home if path == "" else f"{home}/{path}"


def extract(stream: Stream, domid: int) -> DomainData:
    """Decode and validate every DOMAIN_XENSTORE_DATA record of a stream.

    Raises:
        StreamError: a record is malformed (names its offset); the caller
            must then apply nothing.
    """
    state = DomainData(domid)
    offset = 16
    for item in stream.items:
        if isinstance(item, Record):
            if item.type == RecordType.DOMAIN_XENSTORE_DATA:
                decoded = decode_xenstore_data(item.body, stream.big_endian, offset)
                if isinstance(decoded, NodeData):
                    state.nodes.append(decoded)
                else:
                    state.watches.append(decoded)
            offset += len(encode_record(item))
        else:
            offset += len(item.raw)
    seen: set[tuple[str, str]] = set()
    for watch in state.watches:
        key = (watch.path, watch.token)
        if key in seen:
            raise StreamError(offset, f"watch {watch.path!r} ({watch.token!r}) twice")
        seen.add(key)
    return state


def insert_before_end(stream: Stream, records: Iterable[Record]) -> Stream:
    """A copy of ``stream`` with ``records`` placed just before its END.

    MIGRATION.md a.1: after the libxc image and any emulator records, so the
    receiver has created the domain and its memory (ring page included).
    """
    items = list(stream.items)
    if (
        not items
        or not isinstance(items[-1], Record)
        or items[-1].type != RecordType.END
    ):
        raise StreamError(0, "stream has no END record to insert before")
    return Stream(stream.big_endian, stream.legacy, [*items[:-1], *records, items[-1]])


def watch_batches(domid: int, watches: list[WatchData]) -> list[list[WatchData]]:
    """Split watches into ADD_DOMAIN_WATCHES requests of at most 4096 bytes.

    An empty list gives one empty batch: the "restored domain" marker
    (MIGRATION.md a.4) that makes the destination doom unknown transactions.

    Raises:
        LocalProtocolError: one watch alone does not fit in a request.
    """
    head = len(f"{domid}\0")
    batches: list[list[WatchData]] = [[]]
    size = head
    for watch in watches:
        entry = len(f"{watch.path}\0{watch.token}\0".encode(ENCODING))
        if head + entry > PAYLOAD_MAX:
            raise LocalProtocolError(f"watch {watch.path!r} too large for a request")
        if size + entry > PAYLOAD_MAX:
            batches.append([])
            size = head
        batches[-1].append(watch)
        size += entry
    return batches
