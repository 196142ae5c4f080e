"""CONTROL (``xenstore-control``) sub-commands.

The reply of each command is implementation-defined text (PROTOCOL.md 8.3);
these follow C's command names.  ``help`` also announces the seed
migration operations so a toolstack can recognise this daemon before it
sends them (PROTOCOL.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxenstored.engine.audit import audit
from pyxenstored.errors import InvalidArgument, IOError_
from pyxenstored.perms import parse_domid
from pyxenstored.store.quota import QUOTA_NAMES, Limits
from pyxenstored.wire.ops import Op
from pyxenstored.wire.packet import Packet
from pyxenstored.wire.payload import split_args

if TYPE_CHECKING:
    from pyxenstored.engine.connections import Connection
    from pyxenstored.engine.engine import Engine
    from pyxenstored.store.transaction import Transaction

__all__ = ["COMMANDS", "do_control"]

Command = Callable[["Engine", list[str]], str]


def _help(engine: Engine, args: list[str]) -> str:
    lines = [f"{name:<12} {usage}" for name, (_, usage) in COMMANDS.items()]
    lines.append(
        f"seed-migration QUIESCE={int(Op.QUIESCE)} "
        f"ADD_DOMAIN_WATCHES={int(Op.ADD_DOMAIN_WATCHES)} "
        f"GET_DOMAIN_WATCHES={int(Op.GET_DOMAIN_WATCHES)}"
    )
    return "\n".join(lines) + "\n"


def _check(engine: Engine, args: list[str]) -> str:
    problems = audit(engine)
    if problems:
        raise IOError_("; ".join(problems[:10]))
    return "OK"


def _log(engine: Engine, args: list[str]) -> str:
    if args == ["on"]:
        engine.logging_enabled = True
    elif args == ["off"]:
        engine.logging_enabled = False
    else:
        raise InvalidArgument("log on|off")
    return "OK"


def _print(engine: Engine, args: list[str]) -> str:
    if len(args) != 1:
        raise InvalidArgument("print <string>")
    engine.messages.append(args[0])
    return "OK"


def _logfile(engine: Engine, args: list[str]) -> str:
    engine.messages.append("reopen log file")
    return "OK"


def _format_limits(limits: Limits) -> str:
    return "".join(
        f"{name:<20} {getattr(limits, attr)}\n" for name, attr in QUOTA_NAMES.items()
    )


def _quota(engine: Engine, args: list[str]) -> str:
    if not args:
        return _format_limits(engine.quotas.defaults)
    if args[0] == "set" and len(args) == 3:
        engine.quotas.set_default(args[1], _number(args[2]))
        return "OK"
    if len(args) == 1:
        domid = parse_domid(args[0])
        if not engine.is_introduced(domid):
            raise InvalidArgument(f"domain {domid} not introduced")
        used = engine.usage(domid)
        limits = engine.quotas.for_domain(domid)
        return "".join(
            f"{name:<20} {used.get(name, '-')}/{getattr(limits, attr)}\n"
            for name, attr in QUOTA_NAMES.items()
        )
    raise InvalidArgument("quota [set <name> <value>|<domid>]")


def _quota_soft(engine: Engine, args: list[str]) -> str:
    if not args:
        return f"{'memory':<20} {engine.quotas.defaults.soft_memory}\n"
    if args[0] == "set" and len(args) == 3 and args[1] == "memory":
        engine.quotas.set_default("soft-memory", _number(args[2]))
        return "OK"
    raise InvalidArgument("quota-soft [set memory <value>]")


def _memreport(engine: Engine, args: list[str]) -> str:
    return "".join(f"{key:<20} {value}\n" for key, value in engine.report().items())


def _number(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(f"bad number {text!r}")
    return int(text)


COMMANDS: dict[str, tuple[Command, str]] = {
    "check": (_check, "check the tree and every account against a recount"),
    "help": (_help, "this list"),
    "log": (_log, "on|off: switch the request log"),
    "logfile": (_logfile, "reopen the log file"),
    "memreport": (_memreport, "nodes, watches, connections and bytes in use"),
    "print": (_print, "<string>: write a line to the log"),
    "quota": (_quota, "[set <name> <value>|<domid>]: show or set quotas"),
    "quota-soft": (_quota_soft, "[set memory <value>]: soft memory quota"),
}


def do_control(
    engine: Engine, conn: Connection, packet: Packet, tx: Transaction | None
) -> bytes:
    args = split_args(packet.payload)
    if not args or args[0] not in COMMANDS:
        raise InvalidArgument("unknown control command")
    command, _ = COMMANDS[args[0]]
    return command(engine, args[1:]).encode() + b"\0"
