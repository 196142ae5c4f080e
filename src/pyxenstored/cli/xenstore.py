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
tools warn and carry on.  ``control`` behaves as ``xenstore-control``.
"""

from __future__ import annotations

import getopt
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from pyxenstored.client import Client
from pyxenstored.errors import (
    InvalidArgument,
    NoEntry,
    TransactionConflict,
    XenstoreError,
    XsError,
)

__all__ = ["main", "sanitise", "unsanitise"]

PROG = "pyxenstore"
#: The global options and their value's name.  A new transport (such as a
#: guest's shared-memory ring) adds its options here and a branch in
#: :func:`connect`.
GLOBAL_OPTIONS = {"--socket": "PATH"}
_SHORT = "hfspturn:R"
_LONG = ["help", "flat", "prefix", "tidy", "upto", "recurse", "number=", "raw"]
_LONG_LETTER = {"--number": "n", "--raw": "R"}
TAG_LEN = len(' = "..."')
#: Paths this long cannot be read by xenstore-ls (``XENSTORE_ABS_PATH_MAX+1024``).
STRING_MAX = 4096
INT_MAX = 2**31 - 1


class _Exit(Exception):
    """Stop with a message on stderr (C ``errx``) and an exit status."""

    def __init__(self, message: str | None, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Mode(NamedTuple):
    usage: str
    #: Option letters the mode accepts besides ``-h`` and ``-s``.
    flags: str
    #: Operand count above which the work runs in a transaction.
    tx_above: int | None


MODES = {
    "read": Mode("[-h] [-p] [-s] [-R] key [...]", "pR", 1),
    "write": Mode("[-h] [-s] [-R] key value [...]", "R", 2),
    "rm": Mode("[-h] [-s] [-t] key [...]", "t", 0),
    "exists": Mode("[-h] [-p] [-s] key [...]", "", 0),
    "list": Mode("[-h] [-p] [-s] key [...]", "p", 0),
    "ls": Mode("[-h] [-f] [-p] [-s] [path]", "fp", None),
    "chmod": Mode("[-h] [-u] [-r] [-s] key <mode [modes...]>", "ur", 0),
    "watch": Mode("[-h] [-n NR] key", "n", None),
}


# -- escaping (xenstore-utils' sanitise_value / unsanitise_value behaviour) --


def _escape(c: int) -> bytes:
    if 0x20 <= c <= 0x7E and c != 0x5C:
        return bytes([c])
    named = {0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r", 0x5C: b"\\\\"}
    if c in named:
        return named[c]
    return b"\\%03o" % c if c < 8 else b"\\x%02x" % c


_ESCAPED = [_escape(c) for c in range(256)]
_UNESCAPED = {ord("t"): 0x09, ord("n"): 0x0A, ord("r"): 0x0D, ord("\\"): 0x5C}
_HEX = re.compile(rb"[ \t\n\v\f\r]*(?:(0[xX])|([+-]?[0-9a-fA-F]{1,2}))")


def sanitise(value: bytes) -> bytes:
    """Escape a value for printing, as ``xenstore-read`` does."""
    return b"".join([_ESCAPED[c] for c in value])


def _scan_hex(spec: bytes, i: int) -> tuple[int, int]:
    """glibc ``sscanf("%2x")`` at ``spec[i:]``: (value, bytes used, 0 = none)."""
    match = _HEX.match(spec, i)
    if match is None:
        return 0, 0
    if match[1] is not None:  # "0x" fills the field width: the value is 0
        return 0, match.end() - i
    digits = match[2][:2]  # a sign counts towards the width
    return int(digits, 16), match.start(2) + len(digits) - i


def unsanitise(spec: bytes) -> bytes:
    """Undo :func:`sanitise` on a command-line value, as ``xenstore-write``.

    Unknown escapes give the escaped character; a trailing backslash gives
    a NUL byte, exactly like the C tool.
    """
    out = bytearray()
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        i += 1
        if c != 0x5C:
            out.append(c)
        elif i == n:
            out.append(0)
        elif spec[i] == ord("x"):
            value, used = _scan_hex(spec, i + 1)
            out.append(value & 0xFF if used else spec[i])
            i += 1 + used
        elif 0x30 <= spec[i] <= 0x37:
            end = i
            while end < n and end - i < 3 and 0x30 <= spec[end] <= 0x37:
                end += 1
            out.append(int(spec[i:end], 8) & 0xFF)
            i = end
        else:
            out.append(_UNESCAPED.get(spec[i], spec[i]))
            i += 1
    return bytes(out)


def _atoi(text: str) -> int:
    """C ``atoi``: leading number or 0, wrapped to a 32-bit int."""
    match = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if match is None:
        return 0
    value = max(min(int(match[1]), 2**63 - 1), -(2**63)) & 0xFFFFFFFF
    return value - 2**32 if value > INT_MAX else value


# -- helpers --


def _path(arg: str) -> str:
    """A command-line path as the protocol ``str`` (its original bytes)."""
    return os.fsencode(arg).decode("latin-1")


def _why(exc: XenstoreError) -> str:
    if isinstance(exc, XsError):
        reason = f"{os.strerror(exc.errno)} ({exc.code})"
        return f"{reason}: {exc.message}" if exc.message else reason
    return str(exc) or type(exc).__name__


def _warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _stdout(data: bytes) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        sys.stdout.write(data.decode("utf-8", "surrogateescape"))
    else:
        sys.stdout.flush()
        stream.write(data)
    sys.stdout.flush()


class Job(NamedTuple):
    """What one mode runs with (parsed options and operands)."""

    client: Client
    flags: str
    number: str | None
    args: list[str]


# -- modes --

Perform = Callable[[Job, int, bytearray], int]


def _read(job: Job, tx: int, out: bytearray) -> int:
    for key in job.args:
        try:
            value = job.client.read(_path(key), tx)
        except XsError as exc:
            _warn(f"couldn't read path {key}: {_why(exc)}")
            return 1
        if "p" in job.flags:
            out += os.fsencode(key) + b": "
        out += value if "R" in job.flags else sanitise(value) + b"\n"
    return 0


def _write(job: Job, tx: int, out: bytearray) -> int:
    for key, spec in zip(job.args[::2], job.args[1::2], strict=True):
        value = os.fsencode(spec)
        try:
            job.client.write(
                _path(key), value if "R" in job.flags else unsanitise(value), tx
            )
        except XsError as exc:
            _warn(f"could not write path {key}: {_why(exc)}")
            return 1
    return 0


def _remove(job: Job, tx: int, path: str) -> bool:
    try:
        job.client.rm(path, tx)
    except XsError as exc:
        _warn(f"could not remove path {path}: {_why(exc)}")
        return False
    return True


def _rm(job: Job, tx: int, out: bytearray) -> int:
    for key in job.args:
        path = _path(key)
        if not _remove(job, tx, path):
            return 1
        # -t: also remove parents left with no value and no children.
        while "t" in job.flags and "/" in path:
            path = path.rpartition("/")[0]
            try:
                if job.client.read(path, tx) or job.client.directory(path, tx):
                    break
            except XsError:
                break
            if not _remove(job, tx, path):
                return 1
    return 0


def _exists(job: Job, tx: int, out: bytearray) -> int:
    for key in job.args:
        try:
            job.client.read(_path(key), tx)
        except XsError:
            return 1
    return 0


def _list(job: Job, tx: int, out: bytearray) -> int:
    for key in job.args:
        try:
            names = job.client.directory(_path(key), tx)
        except XsError as exc:
            _warn(f"could not list path {key}: {_why(exc)}")
            return 1
        for name in names:
            if "p" in job.flags:  # 4.17 prints "//name" for "/"
                out += os.fsencode(key) + b"/"
            out += name.encode("latin-1") + b"\n"
    return 0


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns - 2
    except (OSError, ValueError, AttributeError):
        return 80


def _ls(job: Job, tx: int, out: bytearray) -> int:
    flat = "f" in job.flags
    width = (INT_MAX // 2, 0) if flat else (_terminal_width(), 60)
    for path in job.args or ["/"]:
        _ls_node(job, out, _path(path), 0, width)
    return 0


def _ls_node(
    job: Job, out: bytearray, path: str, depth: int, width: tuple[int, int]
) -> None:
    max_width, desired_width = width
    client, show_perms = job.client, "p" in job.flags
    try:
        names = client.directory(path)
    except XsError as exc:
        if depth and isinstance(exc, NoEntry):
            return  # removed while we walk the tree
        raise _Exit(f"xs_directory ({path}): {_why(exc)}") from None
    for name in names:
        child = path + ("" if path.endswith("/") else "/") + name
        if "f" in job.flags:
            out += child.encode("latin-1")
            linewid = 0
        else:
            shown = name.encode("latin-1")
            room = max_width - TAG_LEN - depth
            shown = shown[:room] if room >= 0 else shown  # C: negative precision
            out += b" " * depth + shown
            linewid = depth + len(shown)
        value = None
        if len(child) < STRING_MAX:
            try:
                value = client.read(child)
            except XsError:
                pass
        if value is None:
            out += b":\n"
        elif 0 <= max_width < linewid + len(value) + TAG_LEN:  # C compares unsigned
            room = max_width - TAG_LEN - linewid
            text = sanitise(value)
            out += b' = "' + (text[:room] if room >= 0 else text) + b'\\..."'
        else:
            shown = b' = "' + sanitise(value) + b'"'
            out += shown
            linewid += len(shown)
            if show_perms:
                out += b" "
                for column in range(linewid + 1, min(desired_width, max_width)):
                    out += b"." if column & 1 else b" "
        if show_perms:
            try:
                perms = client.get_perms(child)
            except XsError as exc:
                _warn(f"could not access permissions for {name}: {_why(exc)}")
            else:
                out += b"  (" + ",".join(map(str, perms)).encode() + b")"
        out += b"\n"
        _ls_node(job, out, child, depth + 1, width)


def _perm(spec: str) -> str:
    if spec[:1] not in ("n", "r", "w", "b"):
        raise _Exit(f"Invalid permission specification: '{spec[:1]}'")
    return f"{spec[0]}{_atoi(spec[1:])}"


def _chmod(job: Job, tx: int, out: bytearray) -> int:
    perms = [_perm(spec) for spec in job.args[1:]]
    _set_perms(job, tx, _path(job.args[0]), perms, "u" in job.flags, "r" in job.flags)
    return 0


def _set_perms(
    job: Job, tx: int, path: str, perms: list[str], upto: bool, down: bool
) -> None:
    if not path:
        return
    try:
        job.client.set_perms(path, perms, tx)
    except XsError as exc:
        raise _Exit(
            f"Error occurred setting permissions on '{path}': {_why(exc)}"
        ) from None
    if upto:
        if "/" not in path:
            raise _Exit(f"Unable to locate path separator '/' in '{path}'")
        _set_perms(job, tx, path.rpartition("/")[0], perms, True, False)
    if down:
        try:
            names = job.client.directory(path, tx)
        except XsError:
            names = []
        for name in names:
            _set_perms(job, tx, f"{path}/{name}", perms, False, True)


def _watch(job: Job, tx: int, out: bytearray) -> int:
    limit = -1 if job.number is None else _atoi(job.number)
    for key in job.args:
        try:
            job.client.watch(_path(key), _path(key))
        except XsError as exc:
            raise _Exit(f"Unable to add watch on {key}: {_why(exc)}") from None
    count = 0
    while limit == -1 or count < limit:
        event = job.client.wait_watch()
        _stdout(event.path.encode("latin-1") + b"\n")
        count += 1
    return 0


PERFORM: dict[str, Perform] = {
    "read": _read,
    "write": _write,
    "rm": _rm,
    "exists": _exists,
    "list": _list,
    "ls": _ls,
    "chmod": _chmod,
    "watch": _watch,
}


def _run(job: Job, perform: Perform, transaction: bool) -> int:
    """Run a mode, in a transaction redone on EAGAIN if asked (C ``main``)."""
    while True:
        out = bytearray()
        tx = 0
        if transaction:
            try:
                tx = job.client.transaction_start()
            except XsError as exc:
                raise _Exit(f"couldn't start transaction: {_why(exc)}") from None
        try:
            status = perform(job, tx, out)
        except _Exit:
            if not transaction:  # the C tool had printed this much already
                _stdout(bytes(out))
            raise
        if transaction:
            try:
                job.client.transaction_end(tx, commit=status == 0)
            except TransactionConflict:
                if status == 0:
                    continue
                raise _Exit("couldn't end transaction") from None
            except XsError as exc:
                raise _Exit(f"couldn't end transaction: {_why(exc)}") from None
        _stdout(bytes(out))
        return status


# -- control (xenstore-control) --


def _control(client: Client, args: list[str]) -> int:
    if args[0] == "live-update":
        return _live_update(client, args[1:])
    try:
        reply = client.control(*args)
    except XsError as exc:
        if not isinstance(exc, InvalidArgument):
            print(f"Error {exc.errno} when trying to execute command.", file=sys.stderr)
            return 3
        try:
            help_text = client.control("help").split(b"\0", 1)[0].decode("latin-1")
        except XsError:
            print("Error when executing command.", file=sys.stderr)
            return 3
        print(
            f"Command not supported. Valid commands are:\n{help_text}", file=sys.stderr
        )
        return 3
    text = reply.split(b"\0", 1)[0]
    if text:
        _stdout(text + b"\n")
    return 0


def _lu_step(client: Client, *args: str) -> str:
    try:
        return client.control("live-update", *args).split(b"\0", 1)[0].decode("latin-1")
    except XsError as exc:
        return os.strerror(exc.errno)


def _live_update(client: Client, args: list[str]) -> int:
    """The daemon (not stub domain) flavour of ``xenstore-control live-update``."""
    binary, cmdline, force, timeout = None, None, False, 60
    it = iter(args)
    for arg in it:
        if arg in ("-c", "-t"):
            value = next(it, None)
            if value is None:
                what = "command line" if arg == "-c" else "timeout"
                print(f"Missing {what} value", file=sys.stderr)
                return 2
            cmdline, timeout = (
                (value, timeout) if arg == "-c" else (cmdline, _atoi(value))
            )
        elif arg == "-F":
            force = True
        else:
            binary = arg
    if binary is None:
        print("Missing binary specification", file=sys.stderr)
        return 2
    if client.exists("/tool/xenstored/domid"):
        raise _Exit("live update of a xenstore stub domain is not supported")
    reply = _lu_step(client, "-f", binary)
    if reply != "OK":
        print(f"Setting update binary failed:\n{reply}", file=sys.stderr)
        return 3
    if cmdline is not None and (reply := _lu_step(client, "-c", cmdline)) != "OK":
        message = f"Setting update binary failed:\n{reply}"
    else:
        reply, start = "BUSY", time.monotonic()
        while reply == "BUSY" and time.monotonic() - start < timeout:
            reply = _lu_step(
                client, "-s", "-t", str(timeout), *(["-F"] if force else [])
            )
            if reply == "BUSY":
                time.sleep(1)
        if reply == "OK":
            return 0
        message = f"Starting live update failed:\n{reply}"
    print(message, file=sys.stderr)
    _lu_step(client, "-a")
    return 3


# -- command line --


def _parse_globals(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    i = 0
    while (
        i < len(argv) and argv[i].startswith("--") and argv[i] not in ("--", "--help")
    ):
        name, eq, value = argv[i].partition("=")
        if name not in GLOBAL_OPTIONS:
            raise _Exit(f"unknown option {name}; {_global_usage()}")
        if not eq:
            i += 1
            if i == len(argv):
                raise _Exit(f"option {name} needs a {GLOBAL_OPTIONS[name]}")
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
        _Exit: the daemon cannot be reached.
    """
    path = options.get("--socket")
    try:
        return Client(path)
    except OSError as exc:
        raise _Exit(f"xs_open: {exc.strerror or exc}") from None


def _parse_mode(mode: str, argv: list[str]) -> tuple[str, str | None, list[str]]:
    spec = MODES[mode]
    usage = _Exit(f"Usage: {PROG} {mode} {spec.usage}")
    try:
        opts, args = getopt.gnu_getopt(argv, _SHORT, _LONG)
    except getopt.GetoptError as exc:
        raise _Exit(f"{exc.msg}; Usage: {PROG} {mode} {spec.usage}") from None
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
        raise _Exit(_global_usage())
    mode, args = rest[0], rest[1:]
    if mode == "control":
        if not args:
            print(f"Usage:\n{PROG} control <command> [<arg>...]", file=sys.stderr)
            return 2
        with connect(options) as client:
            return _control(client, args)
    if mode not in MODES:
        raise _Exit(f"unknown mode {mode}")
    flags, number, args = _parse_mode(mode, args)
    tx_above = MODES[mode].tx_above
    with connect(options) as client:
        job = Job(client, flags, number, args)
        return _run(job, PERFORM[mode], tx_above is not None and len(args) > tx_above)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyxenstore``; returns the exit status."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except _Exit as exc:
        if exc.message:
            _warn(exc.message)
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
        _warn(_why(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
