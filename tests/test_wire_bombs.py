"""Decompression and header bombs: refused early, with the right code, without allocating."""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from functools import cache

import pytest
import zstandard
from helpers import ConnectionPair, connection_error
from hpack.hpack import encode_integer

from channel.wire import BodyCodec, ErrorCode, Hello, Limits, ProtocolError
from channel.wire.frames import FLAG_HEADERS, FLAG_ZSTD, FrameType, encode_frame
from channel.wire.messages import encode_dict_chunk
from channel.wire.varint import encode_varint

MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS
MAX_BODY = 1 << 20
MAX_WINDOW = 1 << 20
BOMB_SIZE = 256 << 20
MEMORY_BUDGET = 64 << 20

# Built in a child process: a level-19 compressor's own tables (~100 MB) would
# otherwise raise this process's peak RSS and blunt the memory check below.
_BUILD_BOMB = f"""
import sys, zstandard
params = zstandard.ZstdCompressionParameters.from_level(
    19, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=True
)
compressor = zstandard.ZstdCompressor(compression_params=params)
out = sys.stdout.buffer
with compressor.stream_writer(out, size={BOMB_SIZE}, closefd=False) as writer:
    chunk = bytes(1 << 20)
    for _ in range({BOMB_SIZE} >> 20):
        writer.write(chunk)
"""


@cache
def zeros_bomb() -> bytes:
    """A ~8 KB magicless zstd frame that declares and holds 256 MiB of zeros."""
    result = subprocess.run(
        [sys.executable, "-c", _BUILD_BOMB], capture_output=True, check=True, timeout=60
    )
    return result.stdout


def frame_header_length(frame: bytes) -> int:
    """Length of a magicless zstd frame header (RFC 8878 section 3.1.1.1)."""
    descriptor = frame[0]
    fcs_flag = descriptor >> 6
    single_segment = bool(descriptor & 0x20)
    dict_id_size = (0, 1, 2, 4)[descriptor & 0x03]
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    return 1 + (0 if single_segment else 1) + dict_id_size + fcs_size


def compress(body: bytes, **kwargs: bool) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, format=MAGICLESS, write_content_size=kwargs.get("write_content_size", True)
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(body)


def body_code(data: bytes, max_body: int = MAX_BODY, max_window: int = MAX_WINDOW) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        BodyCodec().decode(data, max_body, max_window)
    return info.value.code


def measure(action: Callable[[], object]) -> tuple[int, int]:
    """Run ``action``; return (peak Python allocations, growth of peak RSS) in bytes."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        action()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    return peak, rss_growth


def open_pair(
    *, client_limits: Limits | None = None, server_limits: Limits | None = None
) -> ConnectionPair:
    pair = ConnectionPair(client_limits=client_limits, server_limits=server_limits)
    pair.handshake(Hello(device_id="bomb-test"))
    return pair


# ------------------------------------------------------------ zstd bombs


def test_the_bomb_is_what_it_claims() -> None:
    bomb = zeros_bomb()
    assert len(bomb) < 16 * 1024
    params = zstandard.get_frame_parameters(bomb, format=MAGICLESS)
    assert params.content_size == BOMB_SIZE


def test_declared_size_bomb_refused_without_allocating() -> None:
    data = b"\x00" + zeros_bomb()
    codes: list[ErrorCode] = []

    def attempt() -> None:
        try:
            BodyCodec().decode(data, MAX_BODY, MAX_WINDOW)
        except ProtocolError as exc:
            codes.append(exc.code)

    peak, rss_growth = measure(attempt)
    assert codes == [ErrorCode.BODY_TOO_LARGE]
    assert peak < MEMORY_BUDGET
    assert rss_growth < MEMORY_BUDGET


def test_declared_size_bomb_through_a_connection() -> None:
    pair = open_pair()
    frame = encode_frame(
        FrameType.PUSH, FLAG_ZSTD, encode_varint(1) + b"\x01m" + b"\x00" + zeros_bomb()
    )
    errors: list[ProtocolError] = []

    def attempt() -> None:
        try:
            pair.client.receive_data(frame)
        except ProtocolError as exc:
            errors.append(exc)

    peak, rss_growth = measure(attempt)
    assert [e.code for e in errors] == [ErrorCode.BODY_TOO_LARGE]
    assert peak < MEMORY_BUDGET and rss_growth < MEMORY_BUDGET
    assert connection_error(pair.client.data_to_send()).code == ErrorCode.BODY_TOO_LARGE
    assert pair.client.closed


def test_bomb_patched_to_declare_zero_is_refused_without_expanding() -> None:
    bomb = zeros_bomb()
    blocks = bomb[frame_header_length(bomb) :]
    lie = bytes([0x20, 0x00]) + blocks  # single segment, 1-byte content size 0
    assert zstandard.get_frame_parameters(lie, format=MAGICLESS).content_size == 0
    codes: list[ErrorCode] = []

    def attempt() -> None:
        try:
            BodyCodec().decode(b"\x00" + lie, MAX_BODY, MAX_WINDOW)
        except ProtocolError as exc:
            codes.append(exc.code)

    peak, rss_growth = measure(attempt)
    assert codes == [ErrorCode.COMPRESSION_ERROR]
    assert peak < MEMORY_BUDGET and rss_growth < MEMORY_BUDGET


def test_frame_that_lies_small() -> None:
    """Declares 100 bytes (header of a 100-byte frame) but its blocks hold 10 KB."""
    small = compress(bytes(range(100)))
    big_body = bytes(range(256)) * 40
    big = compress(big_body)
    assert zstandard.get_frame_parameters(small, format=MAGICLESS).content_size == 100
    lie = small[: frame_header_length(small)] + big[frame_header_length(big) :]
    assert zstandard.get_frame_parameters(lie, format=MAGICLESS).content_size == 100
    assert body_code(b"\x00" + lie) is ErrorCode.COMPRESSION_ERROR
    # The honest frame decodes, so it is the lie that is refused.
    assert BodyCodec().decode(b"\x00" + big, MAX_BODY, MAX_WINDOW) == big_body


def test_frame_that_lies_large() -> None:
    """Declares 10 KB but its blocks hold 100 bytes."""
    small = compress(b"q" * 60 + bytes(range(40)))
    big = compress(bytes(range(256)) * 40)
    lie = big[: frame_header_length(big)] + small[frame_header_length(small) :]
    assert body_code(b"\x00" + lie) is ErrorCode.COMPRESSION_ERROR


def test_frame_without_content_size() -> None:
    frame = compress(b"abc" * 1000, write_content_size=False)
    assert (
        zstandard.get_frame_parameters(frame, format=MAGICLESS).content_size
        == zstandard.CONTENTSIZE_UNKNOWN
    )
    assert body_code(b"\x00" + frame) is ErrorCode.COMPRESSION_ERROR


@pytest.mark.parametrize(
    "trailer", [b"\x00", b"junk", compress(b"second frame " * 10), b"\x00" * 1000]
)
def test_trailing_bytes_after_the_frame(trailer: bytes) -> None:
    frame = compress(b"first frame " * 10)
    assert BodyCodec().decode(b"\x00" + frame, MAX_BODY, MAX_WINDOW) == b"first frame " * 10
    assert body_code(b"\x00" + frame + trailer) is ErrorCode.COMPRESSION_ERROR


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_truncated_frame(cut: int) -> None:
    frame = compress(bytes(range(256)) * 8)
    assert body_code(b"\x00" + frame[:-cut]) is ErrorCode.COMPRESSION_ERROR


def _with_window(frame: bytes, window_log: int) -> bytes:
    """Rewrite a single-segment frame's header to carry an explicit window descriptor."""
    descriptor = frame[0]
    assert descriptor & 0x20, "expected a single-segment frame"
    fcs_flag = descriptor >> 6
    assert fcs_flag == 1, "expected a 2-byte content size"
    header_length = frame_header_length(frame)
    window_descriptor = (window_log - 10) << 3  # exponent, mantissa 0
    return (
        bytes([descriptor & ~0x20 & 0xFF, window_descriptor])
        + frame[1:header_length]
        + frame[header_length:]
    )


def test_window_too_large() -> None:
    body = b"window test " * 300
    frame = compress(body)
    honest = _with_window(frame, 20)  # 1 MiB: allowed
    assert zstandard.get_frame_parameters(honest, format=MAGICLESS).window_size == 1 << 20
    assert BodyCodec().decode(b"\x00" + honest, MAX_BODY, MAX_WINDOW) == body
    greedy = _with_window(frame, 27)  # 128 MiB window for a 3.6 KB body
    assert zstandard.get_frame_parameters(greedy, format=MAGICLESS).window_size == 1 << 27
    assert body_code(b"\x00" + greedy) is ErrorCode.COMPRESSION_ERROR
    # The limit is the larger of max_zstd_window_size and max_body_size.
    assert body_code(b"\x00" + honest, 1 << 19, 1 << 19) is ErrorCode.COMPRESSION_ERROR
    assert BodyCodec().decode(b"\x00" + honest, 1 << 20, 1 << 19) == body


def test_raw_body_too_large_through_a_connection() -> None:
    pair = open_pair(server_limits=Limits(max_body_size=2000))
    pair.client.peer_max_body_size = 10_000  # lie to our own sender to get it out
    pair.client.send_request("upload", random.Random(1).randbytes(2001))  # stays raw
    with pytest.raises(ProtocolError) as info:
        pair.client_to_server()
    assert info.value.code is ErrorCode.BODY_TOO_LARGE
    assert connection_error(pair.server.data_to_send()).code == ErrorCode.BODY_TOO_LARGE


def test_compressed_body_within_max_body_size_but_above_window() -> None:
    """A single-segment frame's window is its content size: max_body_size bounds it."""
    limits = Limits(max_body_size=4 << 20, max_frame_size=1 << 20)
    pair = ConnectionPair(client_limits=limits, server_limits=limits)
    pair.handshake(Hello(device_id="big", max_frame_size=1 << 20))
    body = b'{"k":"value","n":12345},' * (2 * 1024 * 1024 // 24)
    pair.client.send_request("upload", body)
    (event,) = pair.client_to_server()
    assert getattr(event, "body", None) == body


# ------------------------------------------------------------ HPACK bombs


def _string(raw: bytes) -> bytes:
    return bytes(encode_integer(len(raw), 7)) + raw


_OP = b"\x00" + _string(b":op") + _string(b"op")  # literal without indexing


def _request(stream_id: int, block: bytes) -> bytes:
    payload = encode_varint(stream_id) + encode_varint(len(block)) + block
    return encode_frame(FrameType.REQUEST, FLAG_HEADERS, payload)


def test_table_size_bomb_through_a_connection() -> None:
    pair = open_pair()
    update = bytearray(encode_integer(1 << 30, 5))
    update[0] |= 0x20
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(_request(1, bytes(update) + _OP))
    assert info.value.code is ErrorCode.TABLE_SIZE_ERROR
    error = connection_error(pair.server.data_to_send())
    assert error.code == ErrorCode.TABLE_SIZE_ERROR
    assert pair.server.closed


def test_header_list_bomb_through_a_connection() -> None:
    pair = open_pair(server_limits=Limits(max_header_list_size=16 * 1024))
    insert = _OP + b"\x40" + _string(b"x-big") + _string(b"A" * 3000)
    (request,) = pair.server.receive_data(_request(1, insert))
    assert getattr(request, "headers", None) == (("x-big", "A" * 3000),)
    bomb = _OP + b"\xbe" * 200  # 200 bytes that would expand to ~600 KB of headers
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(_request(3, bomb))
    assert info.value.code is ErrorCode.HEADER_LIST_TOO_LARGE
    error = connection_error(pair.server.data_to_send())
    assert error.code == ErrorCode.HEADER_LIST_TOO_LARGE


# ------------------------------------------------------------ other resource bombs


def test_frame_length_bomb_through_a_connection() -> None:
    pair = open_pair()
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(b"\x20" + encode_varint(2**56 - 1))
    assert info.value.code is ErrorCode.FRAME_SIZE_ERROR
    assert connection_error(pair.server.data_to_send()).code == ErrorCode.FRAME_SIZE_ERROR


def test_dictionary_size_bomb() -> None:
    pair = open_pair(client_limits=Limits(max_dictionary_size=4096))
    chunk = encode_dict_chunk(9, 4097, 0, b"d" * 100)
    with pytest.raises(ProtocolError) as info:
        pair.client.receive_data(encode_frame(FrameType.DICT, 0, chunk))
    assert info.value.code is ErrorCode.DICTIONARY_ERROR
    assert connection_error(pair.client.data_to_send()).code == ErrorCode.DICTIONARY_ERROR


def test_dictionary_chunks_beyond_declared_total() -> None:
    pair = open_pair()
    first = encode_frame(FrameType.DICT, 0, encode_dict_chunk(9, 150, 0, b"d" * 100))
    second = encode_frame(FrameType.DICT, 0, encode_dict_chunk(9, 150, 100, b"d" * 100))
    with pytest.raises(ProtocolError) as info:
        pair.client.receive_data(first + second)
    assert info.value.code is ErrorCode.DICTIONARY_ERROR


def test_ack_count_bomb() -> None:
    pair = open_pair(server_limits=Limits(max_acks_per_frame=16))
    payload = b"".join(encode_varint(i) for i in range(1, 18))
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(encode_frame(FrameType.ACK, 0, payload))
    assert info.value.code is ErrorCode.FIELD_ERROR
    assert connection_error(pair.server.data_to_send()).code == ErrorCode.FIELD_ERROR


def test_typed_section_counts_against_max_header_list_size() -> None:
    """Typed fields count against max_header_list_size (a typed section of 2-byte 'ts'
    entries once bypassed it: 20000 headers from a 40 KB section)."""
    from channel.wire.frames import FLAG_TYPED

    pair = open_pair(server_limits=Limits(max_header_list_size=16 * 1024))
    typed = b"\x02\x00" * 20_000  # key 2 (ts), zigzag delta 0: 20000 headers
    payload = encode_varint(1) + encode_varint(len(_OP)) + _OP + encode_varint(len(typed)) + typed
    frame = encode_frame(FrameType.REQUEST, FLAG_HEADERS | FLAG_TYPED, payload)
    with pytest.raises(ProtocolError) as info:
        pair.server.receive_data(frame)
    assert info.value.code is ErrorCode.HEADER_LIST_TOO_LARGE
