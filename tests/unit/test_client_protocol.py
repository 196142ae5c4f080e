"""The client's sans-IO core: request/reply matching and the command flows.

PROTOCOL.md 1.2 (replies matched by req_id, watch events interleaved with
replies), section 3 (error names), 9 (reply shapes, DIRECTORY_PART).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxenstored.client import commands
from pyxenstored.client.commands import Flow, Request
from pyxenstored.client.protocol import NEED_DATA, ClientProtocol, WatchEvent
from pyxenstored.errors import (
    ERROR_NAMES,
    AlreadyExists,
    BrokenConnection,
    InvalidArgument,
    LocalProtocolError,
    NoEntry,
    NotPermitted,
    NotSupported,
    PermissionDenied,
    RemoteProtocolError,
    TooBig,
    TransactionConflict,
    XsError,
)
from pyxenstored.perms import Access, Perm
from pyxenstored.wire import HEADER, Op
from tests.wiretools import frame


def event(path: str, token: str) -> bytes:
    return frame(Op.WATCH_EVENT, f"{path}\0{token}\0".encode(), 0)


# -- ClientProtocol --


def test_send_frames_request_with_fresh_ids() -> None:
    proto = ClientProtocol()
    id1, data1 = proto.send(Op.READ, b"/a\0", tx_id=7)
    id2, data2 = proto.send(Op.WRITE, b"/a\0v")
    assert id1 != id2
    assert 0 not in (id1, id2)
    assert HEADER.unpack(data1[:16]) == (Op.READ, id1, 7, 3)
    assert data1[16:] == b"/a\0"
    assert HEADER.unpack(data2[:16]) == (Op.WRITE, id2, 0, 4)
    assert proto.outstanding == 2


def test_ids_wrap_and_skip_zero_and_ids_in_use() -> None:
    proto = ClientProtocol(first_id=2**32 - 2)
    a, _ = proto.send(Op.READ, b"/a\0")
    b, _ = proto.send(Op.READ, b"/a\0")
    c, _ = proto.send(Op.READ, b"/a\0")
    assert (a, b, c) == (2**32 - 2, 2**32 - 1, 1)
    proto = ClientProtocol(first_id=5)
    first, _ = proto.send(Op.READ, b"/a\0")
    proto._next_id = 5  # force a collision with the still-pending id 5
    second, _ = proto.send(Op.READ, b"/a\0")
    assert (first, second) == (5, 6)


def test_replies_matched_by_req_id_in_any_order() -> None:
    proto = ClientProtocol()
    a, _ = proto.send(Op.READ, b"/a\0")
    b, _ = proto.send(Op.READ, b"/b\0")
    assert proto.reply(a) is NEED_DATA
    done = proto.receive_data(frame(Op.READ, b"B", b) + frame(Op.READ, b"A", a))
    assert done == [b, a]
    assert proto.reply(a) == b"A"
    assert proto.reply(b) == b"B"
    assert proto.outstanding == 0


def test_take_events_hands_over_every_queued_event_in_order() -> None:
    proto = ClientProtocol()
    proto.receive_data(event("/a", "1") + event("/b", "2"))
    assert proto.take_events() == [WatchEvent("/a", "1"), WatchEvent("/b", "2")]
    assert proto.take_events() == []
    assert proto.next_event() is NEED_DATA


def test_event_before_reply_is_queued_not_mistaken_for_it() -> None:
    # C sends the events a WRITE causes before the WRITE's OK.
    proto = ClientProtocol()
    w, _ = proto.send(Op.WRITE, b"/a\0v")
    proto.receive_data(event("/a", "tok"))
    assert proto.reply(w) is NEED_DATA
    proto.receive_data(frame(Op.WRITE, b"OK\0", w))
    assert proto.reply(w) == b"OK\0"
    assert proto.next_event() == WatchEvent("/a", "tok")
    assert proto.next_event() is NEED_DATA


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_error_reply_raises_class_registered_for_name(name: str) -> None:
    proto = ClientProtocol()
    r, _ = proto.send(Op.READ, b"/a\0")
    proto.receive_data(frame(Op.ERROR, name.encode() + b"\0", r))
    with pytest.raises(XsError) as info:
        proto.reply(r)
    assert info.value.code == name
    assert type(info.value) is XsError.from_code(name).__class__


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ENOENT", NoEntry),
        ("EACCES", PermissionDenied),
        ("EEXIST", AlreadyExists),
        ("EAGAIN", TransactionConflict),
        ("E2BIG", TooBig),
        ("EPERM", NotPermitted),
        ("ENOSYS", NotSupported),
        ("EWHATEVER", InvalidArgument),  # unknown names mean EINVAL
        ("", InvalidArgument),
    ],
)
def test_error_names_map_to_classes(name: str, cls: type[XsError]) -> None:
    proto = ClientProtocol()
    r, _ = proto.send(Op.RM, b"/a\0")
    proto.receive_data(frame(Op.ERROR, name.encode() + b"\0", r))
    with pytest.raises(cls):
        proto.reply(r)


def test_reply_to_unknown_request_breaks_the_stream() -> None:
    proto = ClientProtocol()
    r, _ = proto.send(Op.READ, b"/a\0")
    with pytest.raises(RemoteProtocolError):
        proto.receive_data(frame(Op.READ, b"x", r + 1))
    assert proto.broken is not None
    with pytest.raises(BrokenConnection):
        proto.reply(r)
    with pytest.raises(BrokenConnection):
        proto.send(Op.READ, b"/a\0")


def test_reply_of_wrong_type_breaks_the_stream() -> None:
    proto = ClientProtocol()
    r, _ = proto.send(Op.READ, b"/a\0")
    with pytest.raises(RemoteProtocolError):
        proto.receive_data(frame(Op.WRITE, b"OK\0", r))


def test_oversized_header_breaks_the_stream() -> None:
    proto = ClientProtocol()
    proto.send(Op.READ, b"/a\0")
    with pytest.raises(RemoteProtocolError):
        proto.receive_data(HEADER.pack(Op.READ, 1, 0, 4097))
    assert proto.broken is not None


@pytest.mark.parametrize("payload", [b"", b"/a", b"/a\0"])
def test_malformed_watch_event_breaks_the_stream(payload: bytes) -> None:
    proto = ClientProtocol()
    with pytest.raises(RemoteProtocolError):
        proto.receive_data(frame(Op.WATCH_EVENT, payload, 0))


def test_watch_event_keeps_any_bytes_of_token() -> None:
    proto = ClientProtocol()
    proto.receive_data(frame(Op.WATCH_EVENT, b"/a\0t\xffok\0", 0))
    assert proto.next_event() == WatchEvent("/a", "t\xffok")


def test_forgotten_request_reply_is_dropped_silently() -> None:
    proto = ClientProtocol()
    a, _ = proto.send(Op.READ, b"/a\0")
    b, _ = proto.send(Op.READ, b"/b\0")
    proto.forget(a)
    assert proto.receive_data(frame(Op.READ, b"A", a) + frame(Op.READ, b"B", b)) == [b]
    assert proto.reply(b) == b"B"
    with pytest.raises(LocalProtocolError):
        proto.reply(a)
    # forgetting after the reply came drops the stored reply
    c, _ = proto.send(Op.READ, b"/c\0")
    proto.receive_data(frame(Op.READ, b"C", c))
    proto.forget(c)
    with pytest.raises(LocalProtocolError):
        proto.reply(c)


def test_connection_lost_fails_pending_but_keeps_collected_replies() -> None:
    proto = ClientProtocol()
    a, _ = proto.send(Op.READ, b"/a\0")
    b, _ = proto.send(Op.READ, b"/b\0")
    proto.receive_data(frame(Op.READ, b"A", a) + frame(Op.READ, b"B", b)[:10])
    proto.connection_lost("gone")
    assert proto.reply(a) == b"A"
    with pytest.raises(BrokenConnection, match="gone"):
        proto.reply(b)
    assert proto.receive_data(b"anything") == []


def test_oversized_request_is_e2big_before_sending() -> None:
    proto = ClientProtocol()
    proto.send(Op.WRITE, b"x" * 4096)
    with pytest.raises(TooBig):
        proto.send(Op.WRITE, b"x" * 4097)
    assert proto.outstanding == 1


Conversation = tuple[list[tuple[int, bytes]], list[str], list[int]]


@st.composite
def conversations(draw: st.DrawFn) -> Conversation:
    """The server's answers (READ data or an ERROR name) to some requests,
    some watch events, and the order of all of them on the stream (answer
    ``i`` is ``i``, event ``j`` is ``-1 - j``)."""
    n = draw(st.integers(1, 12))
    answers: list[tuple[int, bytes]] = [
        (
            draw(st.sampled_from([int(Op.READ), int(Op.ERROR)])),
            draw(st.binary(max_size=40).filter(lambda b: b"\0" not in b)),
        )
        for _ in range(n)
    ]
    events = draw(st.lists(st.text("abc/", min_size=1, max_size=8), max_size=6))
    order = draw(st.permutations(list(range(n)) + [-1 - i for i in range(len(events))]))
    return answers, events, order


@given(conversations(), st.lists(st.integers(1, 2000), max_size=12))
def test_interleaved_replies_and_events_any_chunking(
    conversation: Conversation, cuts: list[int]
) -> None:
    answers, events, order = conversation
    proto = ClientProtocol()
    ids = [proto.send(Op.READ, f"/k{i}\0".encode())[0] for i in range(len(answers))]
    stream = bytearray()
    for slot in order:
        if slot >= 0:
            op, body = answers[slot]
            payload = body + b"\0" if op == Op.ERROR else body
            stream += frame(op, payload, ids[slot])
        else:
            stream += event(events[-1 - slot], f"t{-1 - slot}")
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    done: list[int] = []
    for start, end in itertools.pairwise(points):
        done += proto.receive_data(bytes(stream[start:end]))
    assert sorted(done) == sorted(ids)
    for i, (op, body) in enumerate(answers):
        if op == Op.ERROR:
            with pytest.raises(XsError) as info:
                proto.reply(ids[i])
            assert type(info.value) is type(XsError.from_code(body.decode("latin-1")))
        else:
            assert proto.reply(ids[i]) == body
    expected = [WatchEvent(events[-1 - s], f"t{-1 - s}") for s in order if s < 0]
    got = []
    while (ev := proto.next_event()) is not NEED_DATA:
        got.append(ev)
    assert got == expected


# -- command flows --

Responder = Callable[[Request], bytes]


def drive(flow: Flow[object], respond: Responder) -> tuple[object, list[Request]]:
    """Run a flow against a fake server; return its result and requests."""
    sent: list[Request] = []
    try:
        request = next(flow)
        while True:
            sent.append(request)
            try:
                reply = respond(request)
            except XsError as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(reply)
    except StopIteration as stop:
        return stop.value, sent


def ok(request: Request) -> bytes:
    return b"OK\0"


@pytest.mark.parametrize(
    ("flow", "op", "payload"),
    [
        (commands.write("/a", b"v\0x"), Op.WRITE, b"/a\0v\0x"),
        (commands.write("/a", b""), Op.WRITE, b"/a\0"),
        (commands.mkdir("/a"), Op.MKDIR, b"/a\0"),
        (commands.rm("/a/b"), Op.RM, b"/a/b\0"),
        (
            commands.set_perms("/a", ["n0", Perm(Access.READ, 5)]),
            Op.SET_PERMS,
            b"/a\0n0\0r5\0",
        ),
        (commands.watch("/a", "tok"), Op.WATCH, b"/a\0tok\0"),
        (commands.watch("/a", "tok", depth=1), Op.WATCH, b"/a\0tok\x001\0"),
        (commands.unwatch("@releaseDomain", "t"), Op.UNWATCH, b"@releaseDomain\0t\0"),
        (commands.reset_watches(), Op.RESET_WATCHES, b"\0"),
        (commands.transaction_end(True), Op.TRANSACTION_END, b"T\0"),
        (commands.transaction_end(False), Op.TRANSACTION_END, b"F\0"),
        (commands.introduce(3, 4096, 7), Op.INTRODUCE, b"3\x004096\x007\0"),
        (commands.release(3), Op.RELEASE, b"3\0"),
        (commands.resume(3), Op.RESUME, b"3\0"),
        (commands.set_target(3, 4), Op.SET_TARGET, b"3\x004\0"),
        (commands.set_feature(3, 5), Op.SET_FEATURE, b"3\x005\0"),
        (commands.set_quota("nodes", 9), Op.SET_QUOTA, b"nodes\x009\0"),
        (commands.set_quota("nodes", 9, domid=2), Op.SET_QUOTA, b"2\0nodes\x009\0"),
        (commands.quiesce(4), Op.QUIESCE, b"4\0"),
        (
            commands.add_domain_watches(4, [("/a", "t"), ("rel", "u")]),
            Op.ADD_DOMAIN_WATCHES,
            b"4\0/a\0t\0rel\0u\0",
        ),
        (commands.add_domain_watches(4, []), Op.ADD_DOMAIN_WATCHES, b"4\0"),
    ],
)
def test_simple_requests(flow: Flow[object], op: Op, payload: bytes) -> None:
    result, sent = drive(flow, ok)
    assert result is None
    assert sent == [Request(op, payload)]


@pytest.mark.parametrize(
    ("flow", "expected", "reply", "result"),
    [
        (commands.read("/a"), Request(Op.READ, b"/a\0"), b"v\0al", b"v\0al"),
        (
            commands.directory("/a"),
            Request(Op.DIRECTORY, b"/a\0"),
            b"x\0yy\0",
            ["x", "yy"],
        ),
        (commands.directory("/a"), Request(Op.DIRECTORY, b"/a\0"), b"", []),
        (
            commands.get_perms("/a"),
            Request(Op.GET_PERMS, b"/a\0"),
            b"n0\0r5\0b7\0w-1\0",
            [
                Perm(Access.NONE, 0),
                Perm(Access.READ, 5),
                Perm(Access.BOTH, 7),
                Perm(Access.WRITE, -1),
            ],
        ),
        (
            commands.transaction_start(),
            Request(Op.TRANSACTION_START, b"\0"),
            b"12\0",
            12,
        ),
        (
            commands.get_domain_path(5),
            Request(Op.GET_DOMAIN_PATH, b"5\0"),
            b"/local/domain/5\0",
            "/local/domain/5",
        ),
        (
            commands.is_domain_introduced(5),
            Request(Op.IS_DOMAIN_INTRODUCED, b"5\0"),
            b"T\0",
            True,
        ),
        (
            commands.is_domain_introduced(5),
            Request(Op.IS_DOMAIN_INTRODUCED, b"5\0"),
            b"F\0",
            False,
        ),
        (commands.get_feature(), Request(Op.GET_FEATURE, b""), b"7\0", 7),
        (commands.get_feature(2), Request(Op.GET_FEATURE, b"2\0"), b"3\0", 3),
        (
            commands.list_quotas(),
            Request(Op.GET_QUOTA, b""),
            b"nodes watches\0",
            ["nodes", "watches"],
        ),
        (
            commands.get_quota("nodes"),
            Request(Op.GET_QUOTA, b"nodes\0"),
            b"1000\0",
            1000,
        ),
        (
            commands.get_quota("nodes", 4),
            Request(Op.GET_QUOTA, b"4\0nodes\0"),
            b"10\0",
            10,
        ),
        (
            commands.control("print", "hi"),
            Request(Op.CONTROL, b"print\0hi\0"),
            b"OK\0",
            b"OK\0",
        ),
        (
            commands.get_domain_watches(4, 2),
            Request(Op.GET_DOMAIN_WATCHES, b"4\x002\0"),
            b"17\0/a\0t\0rel\0u\0",
            (17, [("/a", "t"), ("rel", "u")]),
        ),
        (
            commands.get_domain_watches(4, 9),
            Request(Op.GET_DOMAIN_WATCHES, b"4\x009\0"),
            b"17\0",
            (17, []),
        ),
    ],
)
def test_requests_with_parsed_replies(
    flow: Flow[object], expected: Request, reply: bytes, result: object
) -> None:
    got, sent = drive(flow, lambda r: reply)
    assert sent == [expected]
    assert got == result


@pytest.mark.parametrize(
    ("flow", "reply"),
    [
        (commands.transaction_start(), b"x1\0"),
        (commands.get_quota("nodes"), b"-1\0"),
        (commands.get_perms("/a"), b"n0\0q5\0"),
        (commands.get_perms("/a"), b"r\0"),
        (commands.get_domain_watches(1, 0), b"3\0/a\0"),
        (commands.get_domain_watches(1, 0), b"x\0"),
    ],
)
def test_malformed_replies_are_protocol_errors(
    flow: Flow[object], reply: bytes
) -> None:
    with pytest.raises(RemoteProtocolError):
        drive(flow, lambda r: reply)


def test_exists_maps_only_enoent_to_false() -> None:
    def missing(r: Request) -> bytes:
        raise NoEntry()

    def denied(r: Request) -> bytes:
        raise PermissionDenied()

    assert drive(commands.exists("/a"), lambda r: b"")[0] is True
    assert drive(commands.exists("/a"), missing)[0] is False
    with pytest.raises(PermissionDenied):
        drive(commands.exists("/a"), denied)


@pytest.mark.parametrize("bad", ["/a\0b", "/\u20ac"])
def test_arguments_that_cannot_go_on_the_wire(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        next(commands.read(bad))
    with pytest.raises(InvalidArgument):
        next(commands.watch("/a", bad))


def test_negative_domid_refused() -> None:
    with pytest.raises(InvalidArgument):
        next(commands.release(-1))


class PagingServer:
    """Answers DIRECTORY with E2BIG and DIRECTORY_PART like C xenstored."""

    def __init__(
        self, names: list[str], part: int, changes: dict[int, list[str]]
    ) -> None:
        self.names = names
        self.part = part
        self.gen = 1
        #: after this many DIRECTORY_PART requests, the list becomes ...
        self.changes = changes
        self.parts = 0

    def __call__(self, request: Request) -> bytes:
        if request.op == Op.DIRECTORY:
            raise TooBig()
        assert request.op == Op.DIRECTORY_PART
        path, offset, _ = request.payload.split(b"\0")
        assert path == b"/big"
        self.parts += 1
        if self.parts in self.changes:
            self.names = self.changes[self.parts]
            self.gen += 1
        listing = b"".join(n.encode() + b"\0" for n in self.names)
        head = b"%d\0" % self.gen
        start = int(offset)
        if start >= len(listing):
            return head + b"\0"
        end = start
        while end < len(listing):
            nxt = listing.index(b"\0", end) + 1
            if nxt - start > self.part and end > start:
                break
            end = nxt
        chunk = listing[start:end]
        return head + chunk + (b"\0" if end == len(listing) else b"")


names_lists = st.lists(
    st.text("abcdefgh0123456789-_", min_size=1, max_size=30), max_size=40
)


@given(names_lists, st.integers(1, 120))
def test_directory_part_fallback_reassembles_any_list(
    names: list[str], part: int
) -> None:
    server = PagingServer(names, part, {})
    result, sent = drive(commands.directory("/big"), server)
    assert result == names
    assert sent[0] == Request(Op.DIRECTORY, b"/big\0")
    offsets = [int(r.payload.split(b"\0")[1]) for r in sent[1:]]
    assert offsets[0] == 0
    assert offsets == sorted(offsets)
    assert all(r.op == Op.DIRECTORY_PART for r in sent[1:])


@given(names_lists, names_lists, st.integers(1, 60), st.integers(2, 5))
def test_directory_part_restarts_when_generation_changes(
    before: list[str], after: list[str], part: int, when: int
) -> None:
    server = PagingServer(before, part, {when: after})
    result, _ = drive(commands.directory("/big"), server)
    if server.parts >= when:
        assert result == after
    else:  # finished before the change
        assert result == before


def test_directory_part_restart_goes_back_to_offset_zero() -> None:
    server = PagingServer(["aaaa", "bbbb", "cccc"], 5, {2: ["dd", "ee"]})
    result, sent = drive(commands.directory("/big"), server)
    assert result == ["dd", "ee"]
    offsets = [r.payload.split(b"\0")[1] for r in sent[1:]]
    assert offsets == [b"0", b"5", b"0", b"3"]


def test_directory_part_unsupported_leaves_e2big() -> None:
    def server(r: Request) -> bytes:
        if r.op == Op.DIRECTORY:
            raise TooBig()
        raise NotSupported()

    with pytest.raises(TooBig):
        drive(commands.directory("/big"), server)


def test_directory_other_errors_propagate() -> None:
    def server(r: Request) -> bytes:
        raise NoEntry()

    with pytest.raises(NoEntry):
        drive(commands.directory("/nope"), server)


def test_directory_part_empty_listing() -> None:
    def server(r: Request) -> bytes:
        if r.op == Op.DIRECTORY:
            raise TooBig()
        return b"5\0\0"

    assert drive(commands.directory("/big"), server)[0] == []
