"""Body coding: raw, or one zstd frame per message with a shared dictionary.

Compressors and decompressors are built once per dictionary and shared by
every connection of the process: per-message compression with a precomputed
dictionary costs microseconds and no per-connection memory, where a
streaming context would cost megabytes per device.

Compressed bodies travel as ``varint dictionary_id`` + a magicless zstd frame
that declares its content size (the 4-byte magic is implied by the frame
flag). Decoding is bomb-proof: the declared size is checked against
``max_body_size`` *before* decompressing, output is bounded by it, the
window is bounded, and the frame must account for every byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import zstandard

from channel.wire.dictionaries import Dictionary, DictionaryStore
from channel.wire.errors import BodyError, ErrorCode
from channel.wire.varint import decode_varint_complete, encode_varint

#: Bodies shorter than this never shrink under zstd (measured), so they go raw.
MIN_COMPRESS_BYTES = 16
#: Level 5 saves ~1 byte per mobile message over 3 for ~1 µs more (stress/wire_size.py).
COMPRESSION_LEVEL = 5
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS

# zstd costs microseconds on a small body and saves nothing on bodies without
# repeats (ids, tokens, numbers, compressed data) unless a dictionary knows
# them; sending those raw gives the same bytes. So the codec keeps, per
# dictionary and size class (16..32 bytes, 32..64, ...; 32 KiB and up), what
# compressing recent bodies saved, stops trying a class that saved less than
# ``min_saving`` of its bytes, and still tries one body in ``YIELD_SAMPLE_EVERY``
# there to notice when the traffic changes. The Rust twin does the same.

#: Share of a size class's bytes compressing must save for the codec to keep trying it.
DEFAULT_MIN_SAVING = 0.01
YIELD_CLASSES = 12
#: A class is judged only once this many of its raw bytes have been tried.
YIELD_WARMUP_BYTES = 16 * 1024
#: Past this many tried bytes a class's counts are halved (recent bodies weigh most).
YIELD_WINDOW_BYTES = 256 * 1024
#: In a class that does not pay, one body in this many is still tried.
YIELD_SAMPLE_EVERY = 32


def yield_class(length: int) -> int:
    """Size class of a body of ``length`` >= 16 bytes: 0 for 16..31, doubling up."""
    return min(length.bit_length() - 5, YIELD_CLASSES - 1)


def _min_saving_q16(fraction: float) -> int:
    return round(min(max(fraction, 0.0), 1.0) * 65536)


#: ``BodyUsage`` key of bodies sent uncompressed (dictionary ids are >= 0; 0: zstd, no dictionary).
RAW_BODY = -1


class BodyUsage:
    """Bodies and bytes by the dictionary that coded them, for one app (metrics).

    ``by_dictionary[id]`` is ``[bodies sent, raw bytes sent, wire bytes sent,
    bodies received, raw bytes received, wire bytes received]``; id
    ``RAW_BODY`` counts bodies that went uncompressed, 0 zstd without a
    dictionary. One object per app, shared by its connections.
    """

    __slots__ = ("by_dictionary",)

    def __init__(self) -> None:
        self.by_dictionary: dict[int, list[int]] = {}

    def _row(self, dict_id: int) -> list[int]:
        row = self.by_dictionary.get(dict_id)
        if row is None:
            row = self.by_dictionary[dict_id] = [0, 0, 0, 0, 0, 0]
        return row

    def sent(self, dict_id: int, raw_bytes: int, wire_bytes: int) -> None:
        row = self._row(dict_id)
        row[0] += 1
        row[1] += raw_bytes
        row[2] += wire_bytes

    def received(self, dict_id: int, raw_bytes: int, wire_bytes: int) -> None:
        row = self._row(dict_id)
        row[3] += 1
        row[4] += raw_bytes
        row[5] += wire_bytes


@dataclass(frozen=True, slots=True)
class EncodedBody:
    compressed: bool
    data: bytes


class BodyCodec:
    """Shared, stateless-per-message body codec over a ``DictionaryStore``."""

    def __init__(
        self,
        dictionaries: DictionaryStore | None = None,
        level: int = COMPRESSION_LEVEL,
        min_saving: float = DEFAULT_MIN_SAVING,
    ):
        self.dictionaries = dictionaries if dictionaries is not None else DictionaryStore()
        self.level = level
        self._compressors: dict[int, zstandard.ZstdCompressor] = {}
        #: ``min_saving`` as a fraction of 2**16 (0: always try).
        self._min_saving_q16 = _min_saving_q16(min_saving)
        #: Per dictionary id, per size class: [tried bytes, saved bytes, bodies judged].
        self._yields: dict[int, list[list[int]]] = {}
        #: Bodies sent raw without trying zstd because their class did not pay.
        self.skipped_bodies = 0
        #: Body bytes handed to ``encode`` and bytes it produced (for a compression ratio).
        self.encoded_raw_bytes = 0
        self.encoded_wire_bytes = 0
        self._decompressors: dict[tuple[int, int], zstandard.ZstdDecompressor] = {}

    def _compressor(self, dict_id: int) -> zstandard.ZstdCompressor:
        compressor = self._compressors.get(dict_id)
        if compressor is None:
            params = self._params()
            zdict = self._zstd_dict(dict_id)
            if zdict is not None:
                zdict.precompute_compress(compression_params=params)
            compressor = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
            self._compressors[dict_id] = compressor
        return compressor

    def _decompressor(self, dict_id: int, max_window_size: int) -> zstandard.ZstdDecompressor:
        key = (dict_id, max_window_size)
        decompressor = self._decompressors.get(key)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor(
                dict_data=self._zstd_dict(dict_id),
                max_window_size=max_window_size,
                format=_FORMAT,
            )
            self._decompressors[key] = decompressor
        return decompressor

    def check_dictionary(self, dictionary: Dictionary) -> None:
        """Raise DICTIONARY_ERROR unless zstd can load ``dictionary`` both ways."""
        try:
            zdict = zstandard.ZstdCompressionDict(dictionary.content)
            zstandard.ZstdDecompressor(dict_data=zdict, format=_FORMAT).decompress(
                zstandard.ZstdCompressor(
                    dict_data=zdict, compression_params=self._params()
                ).compress(b"dictionary check")
            )
        except zstandard.ZstdError as exc:
            raise BodyError(
                ErrorCode.DICTIONARY_ERROR,
                f"dictionary {dictionary.dict_id} does not load in zstd: {exc}",
            ) from None

    def _params(self) -> zstandard.ZstdCompressionParameters:
        return zstandard.ZstdCompressionParameters.from_level(
            self.level,
            format=_FORMAT,
            write_content_size=True,
            write_checksum=False,
            write_dict_id=False,
        )

    def _zstd_dict(self, dict_id: int) -> zstandard.ZstdCompressionDict | None:
        if dict_id == 0:
            return None
        dictionary = self.dictionaries.get(dict_id)
        if dictionary is None:
            raise BodyError(ErrorCode.UNKNOWN_DICTIONARY, f"dictionary {dict_id} is not loaded")
        return zstandard.ZstdCompressionDict(dictionary.content)

    def encode(self, body: bytes, dict_id: int) -> EncodedBody:
        """Compress with ``dict_id`` (0: no dictionary) when that makes it smaller."""
        encoded = self._encode(body, dict_id)
        self.encoded_raw_bytes += len(body)
        self.encoded_wire_bytes += len(encoded.data)
        return encoded

    def _encode(self, body: bytes, dict_id: int) -> EncodedBody:
        if len(body) < MIN_COMPRESS_BYTES:
            return EncodedBody(False, body)
        classes = self._yields.get(dict_id)
        if classes is None:
            self._compressor(dict_id)  # an unknown dictionary fails here
            classes = self._yields[dict_id] = [[0, 0, 0] for _ in range(YIELD_CLASSES)]
        counts = classes[yield_class(len(body))]
        if not self._worth_trying(counts):
            self.skipped_bodies += 1
            return EncodedBody(False, body)
        frame = self._compressor(dict_id).compress(body)
        prefix = encode_varint(dict_id)
        wire = len(prefix) + len(frame)
        _note_yield(counts, len(body), wire)
        if wire >= len(body):
            return EncodedBody(False, body)
        return EncodedBody(True, prefix + frame)

    def _worth_trying(self, counts: list[int]) -> bool:
        """Always while the class is young or pays, else one body in YIELD_SAMPLE_EVERY."""
        tried = counts[0]
        if self._min_saving_q16 == 0 or tried < YIELD_WARMUP_BYTES:
            return True
        if counts[1] << 16 >= tried * self._min_saving_q16:
            return True
        judged = counts[2]
        counts[2] = judged + 1
        return judged % YIELD_SAMPLE_EVERY == YIELD_SAMPLE_EVERY - 1

    def decode(self, data: bytes, max_body_size: int, max_window_size: int) -> bytes:
        """Decode a compressed body (``dict id`` + frame); raise ``BodyError`` on anything off."""
        dict_id, offset = decode_varint_complete(data, 0)
        if dict_id != 0 and dict_id not in self.dictionaries:
            raise BodyError(
                ErrorCode.UNKNOWN_DICTIONARY, f"body compressed with unknown dictionary {dict_id}"
            )
        frame = data[offset:]
        try:
            params = zstandard.get_frame_parameters(frame, format=_FORMAT)
        except zstandard.ZstdError as exc:
            raise BodyError(ErrorCode.COMPRESSION_ERROR, f"bad zstd frame header: {exc}") from None
        declared = params.content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            raise BodyError(
                ErrorCode.COMPRESSION_ERROR, "zstd frame does not declare its content size"
            )
        if declared > max_body_size:
            raise BodyError(
                ErrorCode.BODY_TOO_LARGE,
                f"body declares {declared} bytes, max_body_size is {max_body_size}",
            )
        # One-shot decoding writes straight into a buffer of the declared size,
        # so memory is bounded by max_body_size; the window limit only stops
        # frames asking for more than either bound (a single-segment frame's
        # window is its content size, which max_body_size already allows).
        window_limit = _next_power_of_two(max(max_window_size, max_body_size))
        if params.window_size > window_limit:
            raise BodyError(
                ErrorCode.COMPRESSION_ERROR,
                f"zstd window {params.window_size} exceeds {window_limit}",
            )
        try:
            decompressor = self._decompressor(dict_id, window_limit)
            # With a declared size the output buffer is exactly that size, so a
            # frame that lies about its size fails here instead of expanding.
            body = decompressor.decompress(frame, max_output_size=max(declared, 1))
            trailing = decompressor.decompressobj()
            trailing.decompress(frame)
        except zstandard.ZstdError as exc:
            raise BodyError(ErrorCode.COMPRESSION_ERROR, f"zstd: {exc}") from None
        if len(body) != declared:
            raise BodyError(
                ErrorCode.COMPRESSION_ERROR,
                f"zstd frame declared {declared} bytes but held {len(body)}",
            )
        if trailing.unused_data:
            raise BodyError(ErrorCode.COMPRESSION_ERROR, "bytes after the end of the zstd frame")
        return bytes(body)


def _note_yield(counts: list[int], raw: int, wire: int) -> None:
    """Count one try: ``raw`` body bytes became ``wire`` bytes."""
    tried = counts[0] + raw
    saved = counts[1] + max(raw - wire, 0)
    if tried > YIELD_WINDOW_BYTES:
        tried //= 2
        saved //= 2
    counts[0] = tried
    counts[1] = saved


def _next_power_of_two(value: int) -> int:
    return 1 << max(10, (value - 1).bit_length())
