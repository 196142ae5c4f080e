"""The shell around a guest's ring session: the clock and the QUIESCE timer.

All the policy (reading at message boundaries, back-pressure, event expiry,
QUIESCE draining, broken rings) is in the sans-IO
:class:`~pyxenstored.engine.ringsession.RingSession`; this subclass gives
it the monotonic clock, the daemon's trace and output, and an event-loop
timer that makes a QUIESCE which cannot drain answer EBUSY in time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxenstored.engine.connections import Connection
from pyxenstored.engine.ringsession import Quiesce, RingSession
from pyxenstored.wire.ring import Ring

if TYPE_CHECKING:
    from pyxenstored.server.daemon import Daemon

__all__ = ["Quiesce", "RingClient"]


class RingClient(RingSession):
    """The daemon's side of one domain's ring, in the event loop."""

    def __init__(
        self,
        daemon: Daemon,
        conn: Connection,
        ring: Ring | None,
        notify: Callable[[], None],
        close_mapping: Callable[[], None],
    ) -> None:
        super().__init__(
            daemon.engine,
            conn,
            ring,
            notify,
            close_mapping,
            clock=time.monotonic,
            event_timeout=daemon.config.watch_event_timeout,
            after_request=daemon.flush,
            tracing=daemon,
        )
        self.daemon = daemon
        self._timer: asyncio.TimerHandle | None = None

    def begin_quiesce(self, done: Callable[[bool], None], timeout: float) -> None:
        super().begin_quiesce(done, timeout)
        if self._quiesce_waiters and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.tick()
        if self._quiesce_waiters and self.quiesce_deadline != math.inf:
            # Early by the loop's clock (uvloop's timers have a millisecond
            # grain and its time is read once per iteration): the deadline,
            # on time.monotonic, has not passed yet.  Wait for the rest, or
            # the QUIESCE would never answer EBUSY.
            rest = max(self.quiesce_deadline - time.monotonic(), 0.001)
            self._timer = asyncio.get_running_loop().call_later(rest, self._expire)
        self.daemon.flush()

    def _answer_quiesce(self, drained: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super()._answer_quiesce(drained)
