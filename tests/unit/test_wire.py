"""The wire codec: framing, the decoder's guards and the payload helpers.

PROTOCOL.md 1.1 (header layout, PAYLOAD_MAX in both directions) and 1.3
(NUL-terminated strings, EINVAL for a missing NUL or extra strings).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxenstored.errors import InvalidArgument, LocalProtocolError, RemoteProtocolError
from pyxenstored.wire import (
    HEADER,
    HEADER_SIZE,
    NEED_DATA,
    PAYLOAD_MAX,
    Op,
    Packet,
    PacketDecoder,
    encode_packet,
)
from pyxenstored.wire.payload import join_args, one_arg, split_args, split_value

U32 = st.integers(0, 2**32 - 1)

packets = st.builds(
    Packet,
    op=U32,
    req_id=U32,
    tx_id=U32,
    payload=st.binary(max_size=600),
)


def drain(decoder: PacketDecoder, out: list[Packet] | None = None) -> list[Packet]:
    """Every whole packet buffered now, appended to ``out``."""
    out = [] if out is None else out
    while True:
        item = decoder.next_packet()
        if item is NEED_DATA:
            return out
        assert isinstance(item, Packet)
        out.append(item)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for end in bounds:
        pieces.append(data[start:end])
        start = end
    pieces.append(data[start:])
    return pieces


# -- framing ---------------------------------------------------------------


def test_header_layout_is_four_little_endian_u32() -> None:
    """PROTOCOL.md 1.1 in literal bytes: the other tests frame with HEADER."""
    wire = encode_packet(Op.READ, 0x01020304, 0x0A0B0C0D, b"/a\0")
    assert wire == (
        b"\x02\x00\x00\x00\x04\x03\x02\x01\x0d\x0c\x0b\x0a\x03\x00\x00\x00/a\0"
    )
    assert HEADER.unpack(wire[:16]) == (Op.READ, 0x01020304, 0x0A0B0C0D, 3)
    assert HEADER_SIZE == HEADER.size == 16


def test_largest_payload_is_accepted_and_one_more_refused() -> None:
    wire = encode_packet(Op.WRITE, 1, 0, b"x" * PAYLOAD_MAX)
    assert len(wire) == 16 + 4096
    with pytest.raises(LocalProtocolError):
        encode_packet(Op.WRITE, 1, 0, b"x" * (PAYLOAD_MAX + 1))


@given(st.lists(packets, max_size=8), st.lists(st.integers(0, 6000), max_size=12))
def test_any_chunking_gives_back_the_same_packets(
    sent: list[Packet], cuts: list[int]
) -> None:
    stream = b"".join(encode_packet(*p) for p in sent)
    decoder = PacketDecoder()
    received: list[Packet] = []
    for piece in split_at(stream, cuts):
        decoder.receive_data(piece)
        received.extend(drain(decoder))
    assert received == sent
    assert decoder.buffered == 0
    assert not decoder.partial


@given(packets)
def test_byte_at_a_time(packet: Packet) -> None:
    decoder = PacketDecoder()
    wire = encode_packet(*packet)
    for i, byte in enumerate(wire):
        assert decoder.next_packet() is NEED_DATA
        decoder.receive_data(bytes([byte]))
        assert decoder.buffered == (i + 1 if i + 1 < len(wire) else len(wire))
    assert decoder.next_packet() == packet
    assert decoder.next_packet() is NEED_DATA


def _header(op: int, length: int) -> bytes:
    return HEADER.pack(op, 7, 0, length)


#: Byte streams that look like traffic: headers with small or huge lengths,
#: random bodies, and plain noise.
garbage = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.builds(_header, U32, st.integers(0, 64)),
        st.builds(_header, U32, st.sampled_from([4095, 4096, 4097, 65536, 2**32 - 1])),
    ),
    max_size=10,
).map(b"".join)


@given(garbage, st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_give_packets_or_remote_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    """The h11 fuzz property: nothing but packets or RemoteProtocolError."""
    decoder = PacketDecoder()
    got: list[Packet] = []
    failed = False
    for piece in split_at(data, cuts):
        decoder.receive_data(piece)
        try:
            drain(decoder, got)
        except RemoteProtocolError:
            failed = True
            break
    consumed = b"".join(encode_packet(*p) for p in got)
    # What came out is exactly a prefix of what went in, re-encoded.
    assert data.startswith(consumed)
    rest = data[len(consumed) :]
    if failed:
        # Only a header announcing more than PAYLOAD_MAX ends the stream.
        assert HEADER.unpack_from(rest)[3] > PAYLOAD_MAX
    else:
        assert decoder.buffered == len(rest)
        if len(rest) >= 16:
            length = HEADER.unpack_from(rest)[3]
            assert length <= PAYLOAD_MAX
            assert len(rest) < 16 + length


@pytest.mark.parametrize("length", [4097, 5000, 65536, 2**32 - 1])
def test_oversized_header_is_refused_before_the_body_arrives(length: int) -> None:
    decoder = PacketDecoder()
    decoder.receive_data(HEADER.pack(Op.WRITE, 1, 0, length))
    # Nothing of the body has been sent: the header alone is enough.
    with pytest.raises(RemoteProtocolError):
        decoder.next_packet()
    assert decoder.buffered == 16


def test_oversized_header_after_a_good_packet() -> None:
    decoder = PacketDecoder()
    good = Packet(Op.READ, 1, 0, b"/a\0")
    decoder.receive_data(encode_packet(*good) + HEADER.pack(Op.READ, 2, 0, 4097))
    assert decoder.next_packet() == good
    with pytest.raises(RemoteProtocolError):
        decoder.next_packet()


def test_header_at_the_limit_waits_for_its_body() -> None:
    decoder = PacketDecoder()
    decoder.receive_data(HEADER.pack(Op.WRITE, 1, 0, PAYLOAD_MAX))
    assert decoder.next_packet() is NEED_DATA
    decoder.receive_data(b"z" * (PAYLOAD_MAX - 1))
    assert decoder.next_packet() is NEED_DATA
    decoder.receive_data(b"z")
    assert decoder.next_packet() == Packet(Op.WRITE, 1, 0, b"z" * PAYLOAD_MAX)


def test_short_header_is_need_data_and_partial() -> None:
    decoder = PacketDecoder()
    decoder.receive_data(b"\x02\x00\x00")
    assert decoder.next_packet() is NEED_DATA
    assert decoder.partial
    assert decoder.clear() == b"\x02\x00\x00"
    assert not decoder.partial


def test_unknown_types_survive_decoding() -> None:
    decoder = PacketDecoder()
    decoder.receive_data(encode_packet(0xFFFFFFFF, 3, 4, b""))
    assert decoder.next_packet() == Packet(0xFFFFFFFF, 3, 4, b"")


# -- payload helpers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"/a\0", "/a"), (b"\0", ""), (b"\xe9\0", "\xe9")],
)
def test_one_arg(payload: bytes, expected: str) -> None:
    assert one_arg(payload) == expected


@pytest.mark.parametrize(
    "payload", [b"", b"/a", b"/a\0b\0", b"/a\0\0", b"\0/a\0", b"/a\0b"]
)
def test_one_arg_refuses_missing_nul_or_extra_strings(payload: bytes) -> None:
    with pytest.raises(InvalidArgument):
        one_arg(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", []),
        (b"a\0", ["a"]),
        (b"a\0b\0", ["a", "b"]),
        (b"a\0\0", ["a", ""]),
        (b"\0", [""]),
    ],
)
def test_split_args(payload: bytes, expected: list[str]) -> None:
    assert split_args(payload) == expected


@pytest.mark.parametrize("payload", [b"a", b"a\0b", b"a\0b\0c"])
def test_split_args_refuses_unterminated_last_string(payload: bytes) -> None:
    with pytest.raises(InvalidArgument):
        split_args(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"/a\0", ("/a", b"")),
        (b"/a\0v", ("/a", b"v")),
        (b"/a\0v\0w\0", ("/a", b"v\0w\0")),
        (b"\0\0", ("", b"\0")),
    ],
)
def test_split_value_keeps_everything_after_the_first_nul(
    payload: bytes, expected: tuple[str, bytes]
) -> None:
    assert split_value(payload) == expected


def test_split_value_needs_a_nul() -> None:
    with pytest.raises(InvalidArgument):
        split_value(b"/a")


@given(st.lists(st.text(st.characters(min_codepoint=1, max_codepoint=255)), max_size=6))
@settings(max_examples=60)
def test_join_then_split_round_trip(args: list[str]) -> None:
    payload = join_args(*args)
    assert payload.count(0) == len(args)
    assert split_args(payload) == args


@given(st.binary(min_size=1).filter(lambda b: 0 not in b))
@settings(max_examples=60)
def test_strings_keep_every_byte(raw: bytes) -> None:
    """Tokens must be echoed unchanged, whatever their bytes."""
    assert join_args(one_arg(raw + b"\0")) == raw + b"\0"
