"""CONTROL ``live-update``: the session that replaces the daemon's program.

The sub-commands are those C xenstored takes from ``xenstore-control
live-update [-c CMDLINE] [-F] [-t SECS] BINARY`` (MIGRATION.md b.7):

* ``-f BINARY``: open a session for this connection (the file must exist
  and be executable);
* ``-c CMDLINE``: the new program's arguments (default: ours, plus ``-U``);
* ``-s [-t SECS] [-F] [-v VERSION]``: start; the request is answered only
  when the update has failed, or by the new program (the ``OK`` travels in
  the saved state as pending output of this connection);
* ``-a``: abort.

Each answers ``OK`` or a line of text saying why not, as a normal CONTROL
reply (not an ERROR), as C does.  While an update is pending, a
TRANSACTION_START of a connection with no transaction open waits (it is
parked, and handled after the update, or at once if the update does not
happen), so the open transactions can end.  The update may proceed when
no transaction is open; when ``SECS`` pass first, it fails with the list
of connections holding old transactions, or with ``-F`` proceeds anyway
(their transactions then end in EAGAIN, see ``livestate``).

The decision is pure (:func:`verdict`); the shell polls it, writes the
state and replaces the program.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyxenstored.errors import InvalidArgument
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import parse_unsigned

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine

__all__ = ["LiveUpdate", "Verdict", "control_live_update", "verdict"]

#: Answers of the sub-commands, in C's words (``xenstore-control`` prints them).
NOT_IN_SESSION = "Not in live-update session."
NO_SESSION = "No live-update session active."
ALREADY_ACTIVE = "live-update session already active."


@dataclass(slots=True)
class LiveUpdate:
    """A live-update session, opened by one connection with ``-f``."""

    conn: Connection
    binary: str
    #: ``-c``: the new program's arguments, split at blanks.
    cmdline: str | None = None
    force: bool = False
    #: Seconds the update may wait for transactions to end.
    timeout: float = 0.0
    #: Stream version asked for with ``-v`` (None: the lowest that fits).
    version: int | None = None
    #: Clock time of ``-s`` (None: not started).
    started_at: float | None = None
    #: The ``-s`` request, answered when the update ends.
    request: Packet | None = None


class Verdict(enum.Enum):
    WAIT = "wait"
    REJECT = "reject"
    GO = "go"


def verdict(engine: Engine, lu: LiveUpdate, now: float) -> tuple[Verdict, str]:
    """May the started update proceed now?  With the reason when it may not."""
    assert lu.started_at is not None
    oldest = [
        min(tx.started for tx in conn.transactions.values())
        for conn in engine.connections.values()
        if conn.transactions
    ]
    long_running = sum(1 for t in oldest if now - t >= lu.timeout)
    if not oldest or (lu.force and long_running == len(oldest)):
        return Verdict.GO, ""
    if now < lu.started_at + lu.timeout:
        return Verdict.WAIT, ""
    if lu.force:
        return Verdict.GO, ""
    return Verdict.REJECT, _reject_reason(engine, lu, now)


def _reject_reason(engine: Engine, lu: LiveUpdate, now: float) -> str:
    lines = []
    for conn in engine.connections.values():
        if not conn.transactions:
            continue
        age = now - min(tx.started for tx in conn.transactions.values())
        if age >= lu.timeout:
            lines.append(f"Domain {conn.domid}: {int(age)} s")
    if not lines:
        return "Overlapping transactions"
    return "\n".join(["Domains with long running transactions:", *lines])


def control_live_update(
    engine: Engine, conn: Connection, packet: Packet, args: list[str]
) -> str | None:
    """One ``live-update`` sub-command; its answer, or None for a started one.

    Raises:
        InvalidArgument: an unknown sub-command or a malformed one.
    """
    if not args:
        raise InvalidArgument("live-update needs a sub-command")
    lu = engine.live_update
    command = args[0]
    if command == "-a" and len(args) == 1:
        if lu is None:
            return NO_SESSION
        if lu.request is not None:
            engine.reply(lu.conn, lu.request, b"Cancellation was requested\0")
        engine.end_live_update()
        return "OK"
    if command == "-c" and len(args) == 2:
        if lu is None or lu.conn is not conn:
            return NOT_IN_SESSION
        lu.cmdline = args[1]
        return "OK"
    if command == "-f" and len(args) == 2:
        problem = engine.operator.check_update_binary(args[1])
        if problem is not None:
            return problem
        if lu is not None:
            return ALREADY_ACTIVE
        engine.live_update = LiveUpdate(conn, args[1])
        return "OK"
    if command == "-s":
        force, timeout, version = _start_options(args[1:])
        if lu is None or lu.conn is not conn:
            return NOT_IN_SESSION
        if lu.request is not None:
            return ALREADY_ACTIVE
        lu.force, lu.timeout, lu.version = force, timeout, version
        lu.started_at = engine.clock()
        lu.request = packet
        engine.operator.live_update_started()
        return None
    raise InvalidArgument("live-update -f BINARY | -c CMDLINE | -s [-t S] [-F] | -a")


def _start_options(args: list[str]) -> tuple[bool, float, int | None]:
    force = False
    timeout = 0.0
    version: int | None = None
    it = iter(args)
    for arg in it:
        if arg == "-F":
            force = True
        elif arg in ("-t", "-v"):
            value = next(it, None)
            if value is None:
                raise InvalidArgument(f"live-update -s {arg} needs a number")
            parse_unsigned(value, f"live-update -s {arg} value")  # digits only
            if arg == "-t":
                timeout = float(value)
            elif value in ("1", "2"):
                version = int(value)
            else:
                raise InvalidArgument("live-update -s -v takes 1 or 2")
        else:
            raise InvalidArgument(f"live-update -s: unknown option {arg!r}")
    return force, timeout, version
