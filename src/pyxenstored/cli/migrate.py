"""``pyxenstore migrate``: save, restore, resume and show xenstore state.

The toolstack's commands for non-cooperative migration (MIGRATION.md a.7):

* ``save --domid N [-o FILE | --into FILE]``: on the source, QUIESCE the
  domain and write its nodes and watches as DOMAIN_XENSTORE_DATA records
  of a libxl v2 stream (standard output by default), or insert them before
  the END record of an existing stream.
* ``restore --domid N [-i FILE] [--introduce GFN PORT]``: on the
  destination, validate the whole stream (standard input by default), then
  apply it all or nothing, and optionally INTRODUCE the domain.
* ``resume --domid N [--gfn GFN --port PORT]``: on the source after a
  failed migration, INTRODUCE the quiesced domain so it carries on.
* ``show [FILE]``: a readable listing of any libxl v2 stream.
* ``dump [FILE]``: a readable listing of a xenstore state stream
  (MIGRATION.md b.2-b.5), such as C xenstored's live-update ``state_dump``.

Streams work on files and pipes, so they can go through ``ssh``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import tempfile
from collections.abc import Sequence

from pyxenstored.cli.common import PROG, CliExit
from pyxenstored.client.aio import AsyncClient
from pyxenstored.client.migration import restore_domain, resume_domain, save_domain
from pyxenstored.errors import LocalProtocolError
from pyxenstored.migration.records import NodeData, decode_xenstore_data
from pyxenstored.migration.snapshot import extract, insert_before_end
from pyxenstored.migration.stream import (
    Record,
    RecordType,
    Stream,
    StreamError,
    decode_stream,
    describe,
    encode_record,
    encode_stream,
)
from pyxenstored.migration.xsstate import StateStreamError, decode_state, describe_state
from pyxenstored.wire.payload import ENCODING

__all__ = ["migrate"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliExit(f"{self.prog}: {message}", 2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} migrate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    save = sub.add_parser("save", help="QUIESCE a domain and write its state")
    save.add_argument("--domid", type=int, required=True)
    where = save.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    where.add_argument("--into", metavar="FILE", help="insert before END of FILE")
    restore = sub.add_parser("restore", help="rebuild a domain's state")
    restore.add_argument("--domid", type=int, required=True)
    restore.add_argument("-i", "--input", metavar="FILE", help="default: stdin")
    restore.add_argument(
        "--introduce", nargs=2, type=int, metavar=("GFN", "PORT"), help="then INTRODUCE"
    )
    resume = sub.add_parser("resume", help="undo QUIESCE after a failed migration")
    resume.add_argument("--domid", type=int, required=True)
    resume.add_argument("--gfn", type=int, help="default: store/ring-ref")
    resume.add_argument("--port", type=int, help="default: store/port")
    show = sub.add_parser("show", help="list the records of a stream")
    show.add_argument("file", nargs="?", help="default: stdin")
    dump = sub.add_parser("dump", help="list the records of a xenstore state stream")
    dump.add_argument("file", nargs="?", help="default: stdin")
    return p


def _file_error(path: str, error: OSError) -> CliExit:
    return CliExit(f"{path}: {error.strerror or error}")


def _read(path: str | None) -> bytes:
    if path is None or path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise _file_error(path, error) from None


def _write(path: str | None, data: bytes) -> None:
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    except OSError as error:
        raise _file_error(path, error) from None
    if special:
        # A pipe or a device (/dev/null): write into it, never replace it.
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as error:
            raise _file_error(path, error) from None
        return
    # Write beside the target, then rename: a reader never sees half a stream.
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pyxenstore-")
    except OSError as error:
        raise _file_error(path, error) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as error:
        os.unlink(tmp)
        raise _file_error(path, error) from None
    except BaseException:
        os.unlink(tmp)
        raise


def _decode(data: bytes, what: str) -> Stream:
    try:
        return decode_stream(data)
    except StreamError as error:
        raise CliExit(f"{what}: {error}", 2) from None


def _save(socket: str | None, args: argparse.Namespace) -> int:
    base = _decode(_read(args.into), args.into) if args.into else None
    # The records join the stream in its byte order (MIGRATION.md c.18).
    big_endian = base.big_endian if base is not None else False

    async def run() -> tuple[int, int, list[Record]]:
        async with AsyncClient(socket) as client:
            data = await save_domain(client, args.domid)
        return len(data.nodes), len(data.watches), data.records(big_endian)

    try:
        nodes, watches, records = asyncio.run(run())
    except LocalProtocolError as error:
        raise CliExit(
            f"save: {error}; domain {args.domid} stays quiesced "
            f"('{PROG} migrate resume --domid {args.domid}' undoes that)"
        ) from None
    if base is not None:
        stream = insert_before_end(base, records)
    else:
        stream = Stream(items=[*records, Record(RecordType.END)])
    data = encode_stream(stream)
    _write(args.into or args.output, data)
    print(
        f"{PROG}: saved domain {args.domid}: {nodes} nodes, {watches} watches, "
        f"{sum(len(encode_record(r, big_endian)) for r in records)} bytes of records",
        file=sys.stderr,
    )
    return 0


def _restore(socket: str | None, args: argparse.Namespace) -> int:
    what = args.input or "stdin"
    stream = _decode(_read(args.input), what)
    try:
        state = extract(stream, args.domid)
    except StreamError as error:
        raise CliExit(f"{what}: {error}", 2) from None

    async def run() -> None:
        async with AsyncClient(socket) as client:
            introduce = tuple(args.introduce) if args.introduce else None
            await restore_domain(client, state, introduce)

    asyncio.run(run())
    print(
        f"{PROG}: restored domain {args.domid}: {len(state.nodes)} nodes, "
        f"{len(state.watches)} watches" + (", introduced" if args.introduce else ""),
        file=sys.stderr,
    )
    return 0


def _resume(socket: str | None, args: argparse.Namespace) -> int:
    async def run() -> None:
        async with AsyncClient(socket) as client:
            await resume_domain(client, args.domid, args.gfn, args.port)

    asyncio.run(run())
    return 0


def _show(args: argparse.Namespace) -> int:
    what = args.file or "stdin"
    stream = _decode(_read(args.file), what)
    details = []
    for index, item in enumerate(stream.items):
        if isinstance(item, Record) and item.type == RecordType.DOMAIN_XENSTORE_DATA:
            try:
                sub = decode_xenstore_data(item.body, stream.big_endian)
            except StreamError as error:
                details.append((index, f"INVALID: {error.reason}"))
                continue
            if isinstance(sub, NodeData):
                value = sub.value.decode(ENCODING)
                text = (
                    f'node {sub.path or "(home)"} = "{value}" ({",".join(sub.perms)})'
                )
            else:
                text = f"watch {sub.path} token {sub.token!r}"
            details.append((index, text))
    print(describe(stream, details))
    return 0


def _dump(args: argparse.Namespace) -> int:
    what = args.file or "stdin"
    try:
        state = decode_state(_read(args.file))
    except StateStreamError as error:
        raise CliExit(f"{what}: bad xenstore state stream: {error}") from None
    print("\n".join(describe_state(state)))
    return 0


def migrate(socket: str | None, argv: Sequence[str]) -> int:
    """Run ``pyxenstore migrate ...``; returns the exit status."""
    args = _parser().parse_args(list(argv))
    if args.command == "save":
        return _save(socket, args)
    if args.command == "restore":
        return _restore(socket, args)
    if args.command == "resume":
        return _resume(socket, args)
    if args.command == "dump":
        return _dump(args)
    return _show(args)
