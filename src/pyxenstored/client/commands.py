"""Request builders and reply parsers, shared by both client façades.

Every command is a *flow*: a generator that yields the
:class:`Request`\\ s it needs and is sent back each reply payload (or has
the server's :class:`~pyxenstored.errors.XsError` thrown into it); its
return value is the command's result.  Most flows are one request long;
:func:`directory` is the one that needs several (the DIRECTORY_PART
fallback).  Writing the multi-step logic once as a generator keeps the
blocking and the asyncio client identical: each only drives flows
(the psycopg ``generators.py`` idea; STYLE.md 4.9).

Paths and tokens are ``str`` (encoded as Latin-1, so any byte survives);
values are ``bytes``.  A flow never does I/O and never knows the
transaction id: the façade puts it in the header of every request.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from typing import Generic, NamedTuple, TypeVar, cast

from pyxenstored.errors import (
    InvalidArgument,
    NoEntry,
    NotSupported,
    RemoteProtocolError,
    TooBig,
    XsError,
)
from pyxenstored.perms import Access, Perm
from pyxenstored.wire.ops import Op
from pyxenstored.wire.payload import ENCODING, join_args, parse_unsigned, split_args

__all__ = [
    "Flow",
    "FlowDriver",
    "Request",
    "add_domain_watches",
    "control",
    "directory",
    "encode_args",
    "exists",
    "get_domain_path",
    "get_domain_watches",
    "get_feature",
    "get_perms",
    "get_quota",
    "introduce",
    "is_domain_introduced",
    "list_quotas",
    "mkdir",
    "parse_int",
    "parse_perms",
    "parse_string",
    "parse_strings",
    "quiesce",
    "read",
    "release",
    "reset_watches",
    "resume",
    "rm",
    "set_feature",
    "set_perms",
    "set_quota",
    "set_target",
    "transaction_end",
    "transaction_start",
    "unwatch",
    "watch",
    "write",
]

T = TypeVar("T")


class Request(NamedTuple):
    """One request a flow wants sent: its type and payload."""

    op: Op
    payload: bytes


#: A command: yields requests, receives reply payloads, returns a result.
Flow = Generator[Request, bytes, T]


class FlowDriver(Generic[T]):
    """Steps a flow for a client: the request it wants next, then its result.

    Both clients drive flows with it, each with its own round trip (one
    blocking, one awaited)::

        driver = FlowDriver(flow)
        while (request := driver.request) is not None:
            driver.feed(exchange(request))  # the reply, or the XsError
        return driver.result
    """

    __slots__ = ("_flow", "_result", "request")

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._result: T | None = None
        #: The request to send next; None once the flow has returned.
        self.request: Request | None = None
        self._step(None)

    def feed(self, outcome: bytes | XsError) -> None:
        """Give the flow the reply to :attr:`request`, or its error reply
        (raised inside the flow, which may catch it)."""
        self._step(outcome)

    @property
    def result(self) -> T:
        """What the flow returned (once :attr:`request` is None)."""
        return cast(T, self._result)

    def _step(self, outcome: bytes | XsError | None) -> None:
        flow = self._flow
        try:
            if outcome is None:
                self.request = next(flow)
            elif isinstance(outcome, XsError):
                self.request = flow.throw(outcome)
            else:
                self.request = flow.send(outcome)
        except StopIteration as stop:
            self.request = None
            self._result = stop.value


# -- encoding and parsing --


def encode_args(*args: str) -> bytes:
    """Encode strings as NUL-terminated payload arguments.

    Raises:
        InvalidArgument: an argument contains a NUL (it would split into two
            arguments on the wire) or a character outside Latin-1.
    """
    for arg in args:
        if "\0" in arg:
            raise InvalidArgument(f"NUL in argument {arg!r}")
    try:
        return join_args(*args)
    except UnicodeEncodeError as error:
        raise InvalidArgument(f"argument {error.object!r} is not Latin-1") from None


def parse_strings(payload: bytes) -> list[str]:
    """A reply made of NUL-terminated strings (DIRECTORY, GET_PERMS); the
    last NUL may be missing."""
    if payload and payload[-1] != 0:
        payload += b"\0"
    return split_args(payload)


def parse_string(payload: bytes) -> str:
    """A reply holding one string, with or without its terminating NUL."""
    return payload.split(b"\0", 1)[0].decode(ENCODING)


def parse_int(payload: bytes) -> int:
    """A reply holding one unsigned decimal number.

    Raises:
        RemoteProtocolError: it is not a decimal number.
    """
    try:
        return parse_unsigned(parse_string(payload))
    except InvalidArgument:
        raise RemoteProtocolError(f"expected a number, got {payload!r}") from None


_PERM = re.compile(r"([nrwb])(-?[0-9]+)")
_ACCESS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}


def parse_perms(payload: bytes) -> list[Perm]:
    """A GET_PERMS reply: one ``<letter><domid>`` string per entry, owner first.

    Lenient about the domid: C xenstored stores and reports whatever
    ``atoi`` made of a client's string, negative numbers included.

    Raises:
        RemoteProtocolError: an entry is not a letter and a number.
    """
    perms = []
    for text in parse_strings(payload):
        match = _PERM.fullmatch(text)
        if match is None:
            raise RemoteProtocolError(f"malformed permission {text!r}")
        perms.append(Perm(_ACCESS[match[1]], int(match[2])))
    return perms


def _domid(domid: int) -> str:
    if domid < 0:
        raise InvalidArgument(f"bad domid {domid}")
    return str(domid)


def _call(op: Op, payload: bytes) -> Flow[bytes]:
    """One request; the flow's result is the raw reply payload."""
    reply = yield Request(op, payload)
    return reply


def _done(op: Op, payload: bytes) -> Flow[None]:
    """One request whose reply (``OK``) carries nothing of interest."""
    yield Request(op, payload)


# -- nodes --


def read(path: str) -> Flow[bytes]:
    """READ: the node's value."""
    return _call(Op.READ, encode_args(path))


def exists(path: str) -> Flow[bool]:
    """READ, answering only whether the node exists (as ``xenstore-exists``)."""
    try:
        yield Request(Op.READ, encode_args(path))
    except NoEntry:
        return False
    return True


def write(path: str, value: bytes) -> Flow[None]:
    """WRITE: ``path\\0`` followed by the value bytes (no NUL added)."""
    return _done(Op.WRITE, encode_args(path) + value)


def mkdir(path: str) -> Flow[None]:
    """MKDIR: create the node (and its parents) if missing."""
    return _done(Op.MKDIR, encode_args(path))


def rm(path: str) -> Flow[None]:
    """RM: remove the node and its whole subtree."""
    return _done(Op.RM, encode_args(path))


def directory(path: str) -> Flow[list[str]]:
    """DIRECTORY, falling back to DIRECTORY_PART on E2BIG like libxenstore.

    A child list longer than a payload makes DIRECTORY fail with E2BIG.
    libxenstore then asks for the list in parts, by byte offset; each part
    starts with the node's generation, and if that changes between parts
    the node changed under us and the listing restarts from offset 0.  The
    last part ends with an extra NUL.  A server without DIRECTORY_PART
    (ENOSYS) leaves the caller with the original E2BIG.
    """
    arg = encode_args(path)
    try:
        reply = yield Request(Op.DIRECTORY, arg)
    except TooBig:
        listing = yield from _directory_parts(path)
        return listing
    return parse_strings(reply)


def _directory_parts(path: str) -> Flow[list[str]]:
    gen = b""
    listing = bytearray()
    while True:
        offset = len(listing)
        try:
            reply = yield Request(Op.DIRECTORY_PART, encode_args(path, str(offset)))
        except NotSupported:
            raise TooBig("child list too long and DIRECTORY_PART unsupported") from None
        reply_gen, _, data = reply.partition(b"\0")
        if offset == 0:
            gen = reply_gen
        elif reply_gen != gen:
            listing.clear()
            continue
        listing += data
        if len(listing) <= 1 or listing[-2] == 0:
            break
    # Drop the end-of-list NUL; a lone NUL is an empty list.
    return parse_strings(bytes(listing[:-1]) if len(listing) > 1 else b"")


def get_perms(path: str) -> Flow[list[Perm]]:
    """GET_PERMS: the permission list, owner first."""
    reply = yield Request(Op.GET_PERMS, encode_args(path))
    return parse_perms(reply)


def set_perms(path: str, perms: Iterable[str | Perm]) -> Flow[None]:
    """SET_PERMS: strings such as ``"n0"``, ``"r5"`` are sent as given."""
    return _done(Op.SET_PERMS, encode_args(path, *(str(p) for p in perms)))


# -- watches and transactions --


def watch(path: str, token: str, depth: int | None = None) -> Flow[None]:
    """WATCH; ``depth`` needs the server's watch-depth feature."""
    args = [path, token] if depth is None else [path, token, str(depth)]
    return _done(Op.WATCH, encode_args(*args))


def unwatch(path: str, token: str) -> Flow[None]:
    """UNWATCH the watch registered with the same path and token."""
    return _done(Op.UNWATCH, encode_args(path, token))


def reset_watches() -> Flow[None]:
    """RESET_WATCHES: drop every watch *and transaction* of the connection."""
    return _done(Op.RESET_WATCHES, b"\0")


def transaction_start() -> Flow[int]:
    """TRANSACTION_START (send it with tx_id 0): the new transaction id."""
    reply = yield Request(Op.TRANSACTION_START, b"\0")
    return parse_int(reply)


def transaction_end(commit: bool) -> Flow[None]:
    """TRANSACTION_END (send it with the transaction's id): ``T`` or ``F``."""
    return _done(Op.TRANSACTION_END, b"T\0" if commit else b"F\0")


# -- domains --


def get_domain_path(domid: int) -> Flow[str]:
    """GET_DOMAIN_PATH: ``/local/domain/<domid>``."""
    reply = yield Request(Op.GET_DOMAIN_PATH, encode_args(_domid(domid)))
    return parse_string(reply)


def is_domain_introduced(domid: int) -> Flow[bool]:
    """IS_DOMAIN_INTRODUCED: anything but ``F`` means yes (libxenstore)."""
    reply = yield Request(Op.IS_DOMAIN_INTRODUCED, encode_args(_domid(domid)))
    return parse_string(reply) != "F"


def introduce(domid: int, gfn: int, port: int) -> Flow[None]:
    """INTRODUCE a domain's ring page frame and event channel."""
    return _done(Op.INTRODUCE, encode_args(_domid(domid), str(gfn), str(port)))


def release(domid: int) -> Flow[None]:
    """RELEASE a domain (destructive for the nodes it owns)."""
    return _done(Op.RELEASE, encode_args(_domid(domid)))


def resume(domid: int) -> Flow[None]:
    """RESUME: clear a domain's shutdown-reported flag."""
    return _done(Op.RESUME, encode_args(_domid(domid)))


def set_target(domid: int, target: int) -> Flow[None]:
    """SET_TARGET: let ``domid`` act with ``target``'s permissions."""
    return _done(Op.SET_TARGET, encode_args(_domid(domid), _domid(target)))


def get_feature(domid: int | None = None) -> Flow[int]:
    """GET_FEATURE of the caller's own connection, or of a domain."""
    payload = b"" if domid is None else encode_args(_domid(domid))
    reply = yield Request(Op.GET_FEATURE, payload)
    return parse_int(reply)


def set_feature(domid: int, value: int) -> Flow[None]:
    """SET_FEATURE: the features a domain gets at INTRODUCE."""
    return _done(Op.SET_FEATURE, encode_args(_domid(domid), str(value)))


def list_quotas() -> Flow[list[str]]:
    """GET_QUOTA without arguments: the names of the supported quotas."""
    reply = yield Request(Op.GET_QUOTA, b"")
    return parse_string(reply).split()


def get_quota(name: str, domid: int | None = None) -> Flow[int]:
    """GET_QUOTA: the global default, or a domain's value."""
    args = [name] if domid is None else [_domid(domid), name]
    reply = yield Request(Op.GET_QUOTA, encode_args(*args))
    return parse_int(reply)


def set_quota(name: str, value: int, domid: int | None = None) -> Flow[None]:
    """SET_QUOTA: the global default, or a domain's value (0 = unlimited)."""
    args = [name, str(value)] if domid is None else [_domid(domid), name, str(value)]
    return _done(Op.SET_QUOTA, encode_args(*args))


# -- seed migration operations (MIGRATION.md a.3-a.5; our numbers) --


def quiesce(domid: int) -> Flow[None]:
    """QUIESCE: stop taking requests from a domain's ring."""
    return _done(Op.QUIESCE, encode_args(_domid(domid)))


def add_domain_watches(domid: int, watches: Iterable[tuple[str, str]]) -> Flow[None]:
    """ADD_DOMAIN_WATCHES: register ``(path, token)`` watches for a domain."""
    pairs = [text for pair in watches for text in pair]
    return _done(Op.ADD_DOMAIN_WATCHES, encode_args(_domid(domid), *pairs))


def get_domain_watches(
    domid: int, index: int
) -> Flow[tuple[int, list[tuple[str, str]]]]:
    """GET_DOMAIN_WATCHES: the list's generation and the watches from number
    ``index`` on that fit one reply (none past the end).

    Raises:
        RemoteProtocolError: a path without its token, or a bad generation.
    """
    reply = yield Request(Op.GET_DOMAIN_WATCHES, encode_args(_domid(domid), str(index)))
    gen, _, rest = reply.partition(b"\0")
    texts = parse_strings(rest)
    if len(texts) % 2:
        raise RemoteProtocolError(f"odd number of strings in {reply!r}")
    return parse_int(gen), list(zip(texts[::2], texts[1::2], strict=True))


def control(command: str, *args: str) -> Flow[bytes]:
    """CONTROL: ``command\\0arg\\0...``; the reply is implementation-defined."""
    return _call(Op.CONTROL, encode_args(command, *args))
