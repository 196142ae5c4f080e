"""``pyxenstore``: Debian's xenstore-utils 4.17 client tools as sub-commands.

``pyxenstore [--socket PATH] <mode> [options] args`` takes the flags of
``xenstore-<mode>`` and prints what it prints: same stdout, same exit
status, and stderr messages worded like it (with the reason added).
Behaviour observed on the real tools (tools/xs-clients in Xen 4.17):

* read, rm, exists, list and chmod with several keys, and write with
  several pairs, run in one transaction, redone on EAGAIN; read and list
  buffer their output and print it at the end, even after a failure.
* Values are escaped on output (``\\t \\n \\r \\\\``, ``\\ooo`` below 8,
  ``\\xhh`` for other non-printables) and unescaped on input unless ``-R``.
* ``ls`` truncates lines to the terminal width minus 2, or 80 columns when
  stdout is not a terminal; ``-f`` never truncates.
* Options may follow operands (GNU getopt); ``-s`` is accepted and ignored.

One deliberate difference: an unknown option is an error (exit 1); the C
tools warn and carry on.  ``control`` behaves as ``xenstore-control``, and
``migrate`` holds the toolstack's migration commands (:mod:`.migrate`).

``--ring DIR --domid N`` makes the tool act as guest N over its shared
ring in the emulated host directory DIR (EMULATION.md) instead of dom0
on the socket.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Sequence

from pyxenstored.cli.common import PROG, CliExit, sanitise, unsanitise, warn, why
from pyxenstored.cli.control import control
from pyxenstored.cli.migrate import migrate
from pyxenstored.cli.modes import MODES, PERFORM, Job, run
from pyxenstored.client import Client
from pyxenstored.errors import InvalidArgument, XenstoreError
from pyxenstored.sim.ring import GuestRing
from pyxenstored.wire.payload import parse_unsigned

__all__ = ["main", "sanitise", "unsanitise"]

#: The global options and their value's name.
GLOBAL_OPTIONS = {"--socket": "PATH", "--ring": "DIR", "--domid": "N"}
_SHORT = "hfspturn:R"
_LONG = ["help", "flat", "prefix", "tidy", "upto", "recurse", "number=", "raw"]
_LONG_LETTER = {"--number": "n", "--raw": "R"}


# -- command line --


def _parse_globals(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    i = 0
    while (
        i < len(argv) and argv[i].startswith("--") and argv[i] not in ("--", "--help")
    ):
        name, eq, value = argv[i].partition("=")
        if name not in GLOBAL_OPTIONS:
            raise CliExit(f"unknown option {name}; {_global_usage()}")
        if not eq:
            i += 1
            if i == len(argv):
                raise CliExit(f"option {name} needs a {GLOBAL_OPTIONS[name]}")
            value = argv[i]
        options[name] = value
        i += 1
    return options, argv[i + (i < len(argv) and argv[i] == "--") :]


def _global_usage() -> str:
    opts = " ".join(f"[{name} {meta}]" for name, meta in GLOBAL_OPTIONS.items())
    return f"Usage: {PROG} {opts} <mode> [-h] [...]"


def connect(options: dict[str, str]) -> Client:
    """Open the client the global options ask for.

    Raises:
        CliExit: the daemon cannot be reached.
    """
    ring, domid = options.get("--ring"), options.get("--domid")
    if (ring is None) != (domid is None):
        raise CliExit("--ring and --domid go together")
    try:
        if ring is not None and domid is not None:
            try:
                number = parse_unsigned(domid)
            except InvalidArgument:
                raise CliExit(f"--domid takes a number, not {domid!r}") from None
            return Client(transport=GuestRing(ring, number))
        return Client(options.get("--socket"))
    except OSError as exc:
        raise CliExit(f"xs_open: {exc.strerror or exc}") from None


def _parse_mode(mode: str, argv: list[str]) -> tuple[str, str | None, list[str]]:
    spec = MODES[mode]
    usage = CliExit(f"Usage: {PROG} {mode} {spec.usage}")
    try:
        opts, args = getopt.gnu_getopt(argv, _SHORT, _LONG)
    except getopt.GetoptError as exc:
        raise CliExit(f"{exc.msg}; Usage: {PROG} {mode} {spec.usage}") from None
    flags, number = "", None
    for opt, value in opts:
        letter = _LONG_LETTER.get(opt, opt[2:3] if opt.startswith("--") else opt[1])
        if letter == "s":
            continue
        if letter not in spec.flags:
            raise usage
        flags += letter
        number = value if letter == "n" else number
    if (mode != "ls" and not args) or (mode == "write" and len(args) % 2):
        raise usage
    return flags, number, args


def _main(argv: list[str]) -> int:
    options, rest = _parse_globals(argv)
    if not rest or rest[0] in ("-h", "--help"):  # C: usage, status 1
        raise CliExit(_global_usage())
    mode, args = rest[0], rest[1:]
    if mode == "migrate":
        return migrate(options.get("--socket"), args)
    if mode == "control":
        if not args:
            print(f"Usage:\n{PROG} control <command> [<arg>...]", file=sys.stderr)
            return 2
        with connect(options) as client:
            return control(client, args)
    if mode not in MODES:
        raise CliExit(f"unknown mode {mode}")
    flags, number, args = _parse_mode(mode, args)
    tx_above = MODES[mode].tx_above
    with connect(options) as client:
        job = Job(client, flags, number, args)
        return run(job, PERFORM[mode], tx_above is not None and len(args) > tx_above)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyxenstore``; returns the exit status."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except CliExit as exc:
        if exc.message:
            warn(exc.message)
        return exc.status
    except BrokenPipeError:
        # Like Lib/json/tool.py: stop quietly, and keep the interpreter
        # from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except XenstoreError as exc:
        warn(why(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
