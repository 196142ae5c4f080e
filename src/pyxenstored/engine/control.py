"""CONTROL (``xenstore-control``) sub-commands.

The reply of each command is implementation-defined text (PROTOCOL.md 8.3);
these follow C's command names.  ``help`` also announces the seed
migration operations so a toolstack can recognise this daemon before it
sends them (PROTOCOL.md section 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pyxenstored.engine.audit import audit
from pyxenstored.engine.liveupdate import control_live_update
from pyxenstored.errors import InternalError, InvalidArgument, NoEntry
from pyxenstored.perms import parse_domid
from pyxenstored.store.quota import QUOTA_NAMES, Limits
from pyxenstored.wire.ops import Op
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import parse_unsigned, split_args

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine
    from pyxenstored.store.transaction import Transaction

__all__ = ["COMMANDS", "LoggingOperator", "Operator", "do_control"]

log = logging.getLogger(__name__)

Command = Callable[["Engine", list[str]], str]


class Operator(Protocol):
    """What CONTROL asks of the daemon around the engine (files, logs).

    The engine does no I/O itself: the shell gives it one of these
    (:attr:`Engine.operator`).
    """

    def note(self, text: str) -> None:
        """``print``: write a line to the daemon's log."""

    def set_tracing(self, on: bool) -> None:
        """``log on|off``: start or stop the request trace (``-T``)."""

    def set_trace_file(self, path: str) -> None:
        """``logfile FILE``: trace to FILE from now on."""

    def append_report(self, path: str | None, text: str) -> None:
        """``memreport [FILE]``: append the report to FILE, or to the trace.

        Raises:
            OSError: the file cannot be written, or there is no trace file.
        """

    def check_update_binary(self, path: str) -> str | None:
        """``live-update -f``: why ``path`` cannot be run (None: it can)."""

    def live_update_started(self) -> None:
        """``live-update -s``: the engine's session waits to be carried out."""


class LoggingOperator:
    """The operator of an engine with no daemon around it: it only logs."""

    def note(self, text: str) -> None:
        log.info("control: %s", text)

    def set_tracing(self, on: bool) -> None:
        log.info("control: request trace %s (no trace here)", "on" if on else "off")

    def set_trace_file(self, path: str) -> None:
        log.info("control: trace file %s (no trace here)", path)

    def append_report(self, path: str | None, text: str) -> None:
        raise OSError(f"no files are written here ({path or 'trace'})")

    def check_update_binary(self, path: str) -> str | None:
        return "Live update is not possible here."

    def live_update_started(self) -> None:
        log.info("control: live update started (nothing carries it out here)")


def _arguments(args: list[str], count: int, usage: str) -> None:
    # C counts the strings of the payload, so an empty argument counts too.
    if len(args) != count:
        raise InvalidArgument(usage)


def _help(engine: Engine, args: list[str]) -> str:
    """``help``: the commands and the seed operations' numbers.  No error."""
    usages = {name: usage for name, (_, usage) in COMMANDS.items()}
    usages["live-update"] = LIVE_UPDATE_USAGE
    lines = [f"{name:<12} {usages[name]}" for name in sorted(usages)]
    lines.append(
        f"seed-migration QUIESCE={int(Op.QUIESCE)} "
        f"ADD_DOMAIN_WATCHES={int(Op.ADD_DOMAIN_WATCHES)} "
        f"GET_DOMAIN_WATCHES={int(Op.GET_DOMAIN_WATCHES)}"
    )
    return "\n".join(lines) + "\n"


def _check(engine: Engine, args: list[str]) -> str:
    """``check``: OK if the tree and accounts match a recount.  EINVAL, EIO."""
    _arguments(args, 0, "check takes no argument")
    problems = audit(engine)
    if problems:
        raise InternalError("; ".join(problems[:10]))
    return "OK"


def _log(engine: Engine, args: list[str]) -> str:
    """``log on|off``: switch the request trace; OK.  EINVAL."""
    _arguments(args, 1, "log on|off")
    if args[0] not in ("on", "off"):
        raise InvalidArgument("log on|off")
    engine.operator.set_tracing(args[0] == "on")
    return "OK"


def _print(engine: Engine, args: list[str]) -> str:
    """``print``: write a line to the log; OK.  EINVAL."""
    _arguments(args, 1, "print <string>")
    engine.operator.note(args[0])
    return "OK"


def _logfile(engine: Engine, args: list[str]) -> str:
    """``logfile``: trace to another file; OK.  EINVAL."""
    _arguments(args, 1, "logfile <file>")
    engine.operator.set_trace_file(args[0])
    return "OK"


def _format_limits(limits: Limits) -> str:
    return "".join(
        f"{name:<20} {getattr(limits, attr)}\n" for name, attr in QUOTA_NAMES.items()
    )


def _quota(engine: Engine, args: list[str]) -> str:
    """``quota``: the quotas, a domain's use of them, or set one.  EINVAL, ENOENT."""
    if not args:
        return _format_limits(engine.quotas.defaults)
    if args[0] == "set" and len(args) == 3:
        engine.quotas.set_default(args[1], _number(args[2]))
        return "OK"
    if len(args) == 1:
        domid = parse_domid(args[0])
        if not engine.is_introduced(domid):
            raise NoEntry(f"domain {domid} not introduced")
        used = engine.usage(domid)
        limits = engine.quotas.for_domain(domid)
        return "".join(
            f"{name:<20} {used.get(name, '-')}/{getattr(limits, attr)}\n"
            for name, attr in QUOTA_NAMES.items()
        )
    raise InvalidArgument("quota [set <name> <value>|<domid>]")


def _quota_soft(engine: Engine, args: list[str]) -> str:
    """``quota-soft``: the soft memory quota, or set it.  EINVAL."""
    if not args:
        return f"{'memory':<20} {engine.quotas.defaults.soft_memory}\n"
    if args[0] == "set" and len(args) == 3 and args[1] == "memory":
        engine.quotas.set_default("soft-memory", _number(args[2]))
        return "OK"
    raise InvalidArgument("quota-soft [set memory <value>]")


def _memreport(engine: Engine, args: list[str]) -> str:
    """``memreport``: append the memory report to a file or the trace; OK.  EINVAL."""
    if len(args) > 1:
        raise InvalidArgument("memreport [<file>]")
    text = "".join(f"{key:<20} {value}\n" for key, value in engine.report().items())
    try:
        engine.operator.append_report(args[0] if args else None, text)
    except OSError as error:
        # C fails with EBADF, which has no xenstore name: EINVAL on the wire.
        raise InvalidArgument(f"memreport: {error}") from None
    return "OK"


def _number(text: str) -> int:
    """A quota value: a positive decimal number (C refuses below 1)."""
    value = parse_unsigned(text, "quota value")
    if value < 1:
        raise InvalidArgument(f"bad quota value {text!r}")
    return value


COMMANDS: dict[str, tuple[Command, str]] = {
    "check": (_check, "check the tree and every account against a recount"),
    "help": (_help, "this list"),
    "log": (_log, "on|off: switch the request log"),
    "logfile": (_logfile, "reopen the log file"),
    "memreport": (_memreport, "[<file>]: append the memory report to it or the trace"),
    "print": (_print, "<string>: write a line to the log"),
    "quota": (_quota, "[set <name> <value>|<domid>]: show or set quotas"),
    "quota-soft": (_quota_soft, "[set memory <value>]: soft memory quota"),
}


#: ``help``'s line for ``live-update`` (liveupdate.py), as xenstore-control's.
LIVE_UPDATE_USAGE = (
    "[-c <cmdline>] [-F] [-t <timeout>] <file>: replace the daemon's program"
)


def do_control(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes | None:
    """CONTROL: the answer (for live-update -s, later).  EINVAL, EIO, ENOENT."""
    args = split_args(packet.payload)
    if args and args[0] == "live-update":
        # Apart from COMMANDS: it needs the connection and the request.
        answer = control_live_update(engine, conn, packet, args[1:])
        return None if answer is None else answer.encode() + b"\0"
    if not args or args[0] not in COMMANDS:
        raise InvalidArgument("unknown control command")
    command, _ = COMMANDS[args[0]]
    return command(engine, args[1:]).encode() + b"\0"
