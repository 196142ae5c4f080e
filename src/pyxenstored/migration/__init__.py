"""Non-cooperative migration of a domain's xenstore state (pure codecs).

``stream``: the libxl migration stream v2 container (MIGRATION.md a.1).
``records``: the DOMAIN_XENSTORE_DATA record and its node and watch
sub-records (MIGRATION.md a.2, c.2, c.6).
``snapshot``: a domain's nodes and watches to records and back.
``xsstate``: the xenstore state stream of live update (MIGRATION.md b.2-b.5),
imported from its module (its names would clash with the ones above).
"""

from __future__ import annotations

from pyxenstored.migration.records import (
    NodeData,
    SubType,
    WatchData,
    decode_xenstore_data,
    encode_xenstore_data,
)
from pyxenstored.migration.snapshot import (
    DomainData,
    absolute,
    extract,
    insert_before_end,
    relative,
    watch_batches,
)
from pyxenstored.migration.stream import (
    LibxcImage,
    Record,
    RecordType,
    Stream,
    StreamError,
    decode_stream,
    describe,
    encode_stream,
)

__all__ = [
    "DomainData",
    "LibxcImage",
    "NodeData",
    "Record",
    "RecordType",
    "Stream",
    "StreamError",
    "SubType",
    "WatchData",
    "absolute",
    "decode_stream",
    "decode_xenstore_data",
    "describe",
    "encode_stream",
    "encode_xenstore_data",
    "extract",
    "insert_before_end",
    "relative",
    "watch_batches",
]
