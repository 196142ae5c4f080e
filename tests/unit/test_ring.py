"""The ring page codec (RING.md) on a plain buffer, both sides at once.

The indices are free-running 32-bit counters, so every property is tried
from arbitrary starting indices, wrapping at the 1 KiB ring and at 2**32.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxenstored.wire.packet import HEADER
from pyxenstored.wire.ring import PAGE_SIZE, RING_SIZE, Ring, RingCorrupt

WORDS = struct.Struct("<IIII")  # req_cons, req_prod, rsp_cons, rsp_prod
INDICES_AT = 2048

start_index = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(2**32 - 2 * RING_SIZE, 2**32 - 1),  # about to wrap
)


def page_at(index: int) -> Ring:
    """An empty ring whose four indices all stand at ``index``."""
    page = bytearray(PAGE_SIZE)
    WORDS.pack_into(page, INDICES_AT, index, index, index, index)
    return Ring(memoryview(page))


def message(payload: bytes, op: int = 2) -> bytes:
    return HEADER.pack(op, 7, 0, len(payload)) + payload


@given(start=start_index, payloads=st.lists(st.binary(max_size=200), max_size=5))
def test_read_message_takes_whole_messages_in_order(
    start: int, payloads: list[bytes]
) -> None:
    ring = page_at(start)
    sent = [message(p) for p in payloads]
    stream = b"".join(sent)
    if len(stream) > RING_SIZE:
        sent, stream = sent[:1], sent[0]
    assert ring.write_requests(stream) == len(stream)
    got = []
    while data := ring.read_message():
        got.append(data)
    assert got == sent
    assert ring.requests_pending() == 0


@given(start=start_index, payload=st.binary(max_size=300), cut=st.integers(0, 315))
def test_read_message_leaves_a_partial_message_alone(
    start: int, payload: bytes, cut: int
) -> None:
    ring = page_at(start)
    whole = message(payload)
    cut = min(cut, len(whole) - 1)
    ring.write_requests(whole[:cut])
    assert ring.read_message() == b""
    assert ring.requests_pending() == cut  # nothing was consumed
    ring.write_requests(whole[cut:])
    assert ring.read_message() == whole


@given(start=start_index)
def test_a_message_longer_than_the_ring_is_left_to_the_byte_reader(
    start: int,
) -> None:
    ring = page_at(start)
    whole = message(b"x" * 2000)
    assert ring.write_requests(whole) == RING_SIZE
    assert ring.read_message() == b""
    # The byte-wise reader takes it in pieces, as the server's pump does.
    received = ring.read_requests(RING_SIZE)
    ring.write_requests(whole[RING_SIZE:])
    received += ring.read_requests(RING_SIZE)
    assert received == whole


@pytest.mark.parametrize("apart", [RING_SIZE + 1, 2**31, 2**32 - 1])
def test_inconsistent_indices_are_refused(apart: int) -> None:
    page = bytearray(PAGE_SIZE)
    WORDS.pack_into(page, INDICES_AT, 5, (5 + apart) % 2**32, 0, 0)
    ring = Ring(memoryview(page))
    with pytest.raises(RingCorrupt):
        ring.read_message()
    with pytest.raises(RingCorrupt):
        ring.read_requests()


@given(
    start=start_index,
    data=st.binary(max_size=3000),
    chunks=st.lists(st.integers(1, RING_SIZE), min_size=1, max_size=20),
)
def test_replies_arrive_intact_under_any_chunking(
    start: int, data: bytes, chunks: list[int]
) -> None:
    ring = page_at(start)
    written = received = 0
    out = bytearray()
    i = 0
    while received < len(data):
        written += ring.write_replies(data[written : written + chunks[i % len(chunks)]])
        got = ring.read_replies(chunks[(i + 1) % len(chunks)])
        out += got
        received += len(got)
        i += 1
    assert bytes(out) == data


@pytest.mark.parametrize("before_end", range(1, 20))
@pytest.mark.parametrize("base", [RING_SIZE, 2**32])
def test_a_header_cut_by_the_end_of_the_ring(base: int, before_end: int) -> None:
    # The length field itself may be split between the end and the start.
    ring = page_at((base - before_end) % 2**32)
    whole = message(b"payload")
    ring.write_requests(whole)
    assert ring.read_message() == whole
