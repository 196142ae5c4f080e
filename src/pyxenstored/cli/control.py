"""``pyxenstore control``: what ``xenstore-control`` does."""

from __future__ import annotations

import os
import sys
import time

from pyxenstored.cli.common import CliExit, atoi, stdout
from pyxenstored.client import Client
from pyxenstored.client.commands import parse_string
from pyxenstored.errors import InvalidArgument, XsError

__all__ = ["control"]


def control(client: Client, args: list[str]) -> int:
    if args[0] == "live-update":
        return _live_update(client, args[1:])
    try:
        reply = client.control(*args)
    except XsError as exc:
        if not isinstance(exc, InvalidArgument):
            print(f"Error {exc.errno} when trying to execute command.", file=sys.stderr)
            return 3
        try:
            help_text = parse_string(client.control("help"))
        except XsError:
            print("Error when executing command.", file=sys.stderr)
            return 3
        print(
            f"Command not supported. Valid commands are:\n{help_text}", file=sys.stderr
        )
        return 3
    text = reply.split(b"\0", 1)[0]
    if text:
        stdout(text + b"\n")
    return 0


def _lu_step(client: Client, *args: str) -> str:
    try:
        return parse_string(client.control("live-update", *args))
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
                (value, timeout) if arg == "-c" else (cmdline, atoi(value))
            )
        elif arg == "-F":
            force = True
        else:
            binary = arg
    if binary is None:
        print("Missing binary specification", file=sys.stderr)
        return 2
    if client.exists("/tool/xenstored/domid"):
        raise CliExit("live update of a xenstore stub domain is not supported")
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
