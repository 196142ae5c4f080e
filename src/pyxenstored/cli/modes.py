"""The xenstore-utils modes: read, write, rm, exists, list, ls, chmod, watch.

Each mode takes the flags of ``xenstore-<mode>`` 4.17 and prints what it
prints.  Several keys (or pairs) run in one transaction, redone on EAGAIN,
as the C tools do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NamedTuple

from pyxenstored.cli.common import (
    CliExit,
    atoi,
    path_arg,
    sanitise,
    stdout,
    unsanitise,
    warn,
    why,
)
from pyxenstored.client import Client
from pyxenstored.errors import NoEntry, TransactionConflict, XsError
from pyxenstored.wire.payload import ENCODING

__all__ = ["MODES", "PERFORM", "Job", "Mode", "run"]

TAG_LEN = len(' = "..."')
#: Paths this long cannot be read by xenstore-ls (``XENSTORE_ABS_PATH_MAX+1024``).
STRING_MAX = 4096
INT_MAX = 2**31 - 1


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
            value = job.client.read(path_arg(key), tx)
        except XsError as exc:
            warn(f"couldn't read path {key}: {why(exc)}")
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
                path_arg(key), value if "R" in job.flags else unsanitise(value), tx
            )
        except XsError as exc:
            warn(f"could not write path {key}: {why(exc)}")
            return 1
    return 0


def _remove(job: Job, tx: int, path: str) -> bool:
    try:
        job.client.rm(path, tx)
    except XsError as exc:
        warn(f"could not remove path {path}: {why(exc)}")
        return False
    return True


def _rm(job: Job, tx: int, out: bytearray) -> int:
    for key in job.args:
        path = path_arg(key)
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
            job.client.read(path_arg(key), tx)
        except XsError:
            return 1
    return 0


def _list(job: Job, tx: int, out: bytearray) -> int:
    for key in job.args:
        try:
            names = job.client.directory(path_arg(key), tx)
        except XsError as exc:
            warn(f"could not list path {key}: {why(exc)}")
            return 1
        for name in names:
            if "p" in job.flags:  # 4.17 prints "//name" for "/"
                out += os.fsencode(key) + b"/"
            out += name.encode(ENCODING) + b"\n"
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
        _ls_node(job, out, path_arg(path), 0, width)
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
        raise CliExit(f"xs_directory ({path}): {why(exc)}") from None
    for name in names:
        child = path + ("" if path.endswith("/") else "/") + name
        if "f" in job.flags:
            out += child.encode(ENCODING)
            linewid = 0
        else:
            shown = name.encode(ENCODING)
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
                warn(f"could not access permissions for {name}: {why(exc)}")
            else:
                out += b"  (" + ",".join(map(str, perms)).encode() + b")"
        out += b"\n"
        _ls_node(job, out, child, depth + 1, width)


def _perm(spec: str) -> str:
    if spec[:1] not in ("n", "r", "w", "b"):
        raise CliExit(f"Invalid permission specification: '{spec[:1]}'")
    return f"{spec[0]}{atoi(spec[1:])}"


def _chmod(job: Job, tx: int, out: bytearray) -> int:
    perms = [_perm(spec) for spec in job.args[1:]]
    _set_perms(
        job, tx, path_arg(job.args[0]), perms, "u" in job.flags, "r" in job.flags
    )
    return 0


def _set_perms(
    job: Job, tx: int, path: str, perms: list[str], upto: bool, down: bool
) -> None:
    if not path:
        return
    try:
        job.client.set_perms(path, perms, tx)
    except XsError as exc:
        raise CliExit(
            f"Error occurred setting permissions on '{path}': {why(exc)}"
        ) from None
    if upto:
        if "/" not in path:
            raise CliExit(f"Unable to locate path separator '/' in '{path}'")
        _set_perms(job, tx, path.rpartition("/")[0], perms, True, False)
    if down:
        try:
            names = job.client.directory(path, tx)
        except XsError:
            names = []
        for name in names:
            _set_perms(job, tx, f"{path}/{name}", perms, False, True)


def _watch(job: Job, tx: int, out: bytearray) -> int:
    limit = -1 if job.number is None else atoi(job.number)
    for key in job.args:
        try:
            job.client.watch(path_arg(key), path_arg(key))
        except XsError as exc:
            raise CliExit(f"Unable to add watch on {key}: {why(exc)}") from None
    count = 0
    while limit == -1 or count < limit:
        event = job.client.wait_watch()
        stdout(event.path.encode(ENCODING) + b"\n")
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


def run(job: Job, perform: Perform, transaction: bool) -> int:
    """Run a mode, in a transaction redone on EAGAIN if asked (C ``main``)."""
    while True:
        out = bytearray()
        tx = 0
        if transaction:
            try:
                tx = job.client.transaction_start()
            except XsError as exc:
                raise CliExit(f"couldn't start transaction: {why(exc)}") from None
        try:
            status = perform(job, tx, out)
        except CliExit:
            if not transaction:  # the C tool had printed this much already
                stdout(bytes(out))
            raise
        if transaction:
            try:
                job.client.transaction_end(tx, commit=status == 0)
            except TransactionConflict:
                if status == 0:
                    continue
                raise CliExit("couldn't end transaction") from None
            except XsError as exc:
                raise CliExit(f"couldn't end transaction: {why(exc)}") from None
        stdout(bytes(out))
        return status
