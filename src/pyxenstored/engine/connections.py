"""Per-connection state the engine keeps (socket or domain ring)."""

from __future__ import annotations

from pyxenstored.paths import domain_home
from pyxenstored.store.transaction import Transaction
from pyxenstored.watches import WatchTable
from pyxenstored.wire.ops import HEADER_SIZE
from pyxenstored.wire.packet import HEADER, Packet

__all__ = ["Connection"]


class Connection:
    """A client of the daemon, as the engine sees it.

    Output is queued as framed messages in :attr:`out`; the I/O shell takes
    it with :meth:`take_output` and writes it to the socket or ring.
    """

    __slots__ = (
        "closed",
        "domid",
        "home",
        "id",
        "is_socket",
        "next_tx_id",
        "out",
        "parked",
        "privileged",
        "queued_events",
        "restored",
        "target",
        "transactions",
        "watches",
    )

    def __init__(
        self,
        conn_id: int,
        domid: int,
        *,
        is_socket: bool,
        privileged: bool,
        watches: WatchTable | None = None,
    ) -> None:
        self.id = conn_id
        self.watches = watches
        self.domid = domid
        self.is_socket = is_socket
        self.privileged = privileged
        #: SET_TARGET: this connection also acts as that domain.
        self.target: int | None = None
        self.home = domain_home(domid)
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.out: list[bytes] = []
        #: Payloads of watch events queued and not yet taken, for C's
        #: duplicate suppression.
        self.queued_events: set[bytes] = set()
        self.closed = False
        #: Restored by a migration: unknown transaction ids are doomed.
        self.restored = False
        #: Requests held back while a live update is pending, in order.
        self.parked: list[Packet] | None = None

    @property
    def watch_bytes(self) -> int:
        """Memory this connection's watches take (its memory quota)."""
        return 0 if self.watches is None else self.watches.bytes(self.id)

    def queue(self, message: bytes) -> None:
        self.out.append(message)

    def take_output(self) -> list[bytes]:
        """Hand every queued message to the shell."""
        out = self.out
        self.out = []
        if self.queued_events:
            self.queued_events.clear()
        return out

    def describe(self) -> str:
        kind = "socket" if self.is_socket else "domain"
        return f"conn {self.id} ({kind} dom{self.domid})"

    @staticmethod
    def message_op(message: bytes) -> int:
        """The type field of a framed message."""
        return (
            int(HEADER.unpack_from(message)[0]) if len(message) >= HEADER_SIZE else -1
        )
