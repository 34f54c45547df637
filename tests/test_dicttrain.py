"""Dictionary training: it helps on unseen traffic, files round-trip, bad input is named."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import zstandard

from channel.corpus import (
    HELDOUT_SEED,
    TRAIN_SEED,
    generate_corpus,
    message_body_bytes,
    write_corpus,
)
from channel.default_dictionary import load_default_dictionary
from channel.dicttrain import (
    CorpusError,
    evaluate,
    evaluate_dictionary,
    read_jsonl_samples,
    train_dictionary,
)
from channel.wire.dictionaries import Dictionary

SMALL_DICT_BYTES = 4096


@pytest.fixture(scope="module")
def train_samples() -> list[bytes]:
    return [message_body_bytes(m) for m in generate_corpus(100, seed=TRAIN_SEED)]


@pytest.fixture(scope="module")
def heldout_samples() -> list[bytes]:
    return [message_body_bytes(m) for m in generate_corpus(80, seed=HELDOUT_SEED)]


@pytest.fixture(scope="module")
def small_dictionary(train_samples: list[bytes]) -> Dictionary:
    return train_dictionary(train_samples, dict_id=5, dict_size_bytes=SMALL_DICT_BYTES)


def test_trained_dictionary_has_the_id_and_size(small_dictionary: Dictionary) -> None:
    assert small_dictionary.dict_id == 5
    assert len(small_dictionary.content) == SMALL_DICT_BYTES
    # The zstd header carries the same id, so zstd tools report it too.
    assert zstandard.ZstdCompressionDict(small_dictionary.content).dict_id() == 5


def test_training_is_reproducible(train_samples: list[bytes], small_dictionary: Dictionary) -> None:
    again = train_dictionary(train_samples, dict_id=5, dict_size_bytes=SMALL_DICT_BYTES, threads=1)
    assert again.content == small_dictionary.content


def test_file_round_trip(small_dictionary: Dictionary) -> None:
    assert Dictionary.from_file_bytes(small_dictionary.to_file_bytes()) == small_dictionary


def test_dictionary_beats_no_dictionary_on_heldout_data(
    small_dictionary: Dictionary, heldout_samples: list[bytes]
) -> None:
    result = evaluate(small_dictionary, heldout_samples)
    assert result.samples == len(heldout_samples)
    assert result.raw_bytes == sum(map(len, heldout_samples))
    # Per-message zstd without a dictionary barely compresses small JSON; with
    # one trained on other sessions it must at least halve what remains.
    assert result.compressed_bytes_with_dict < 0.6 * result.compressed_bytes_without_dict
    assert result.ratio_with_dict < 0.4


def test_evaluation_uses_the_wire_frame_format(
    small_dictionary: Dictionary, heldout_samples: list[bytes]
) -> None:
    sample = heldout_samples[0]
    one = evaluate_dictionary(small_dictionary, [sample])
    # Magicless frames with no checksum and no dict id: a zstd1 frame minus 4+4+ bytes.
    plain = zstandard.ZstdCompressor(
        level=3, dict_data=zstandard.ZstdCompressionDict(small_dictionary.content)
    ).compress(sample)
    assert one["compressed_bytes_with_dict"] <= len(plain) - 4
    assert set(one) >= {"raw_bytes", "compressed_bytes_with_dict", "compressed_bytes_without_dict"}


def test_default_dictionary_loads_and_helps(heldout_samples: list[bytes]) -> None:
    dictionary = load_default_dictionary()
    assert dictionary.dict_id == 1
    assert len(dictionary.content) == 16384
    result = evaluate(dictionary, heldout_samples)
    assert result.ratio_with_dict < 0.3


def test_read_jsonl_samples_encodes_bodies_compactly(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    write_corpus(path, 3, seed=9)
    expected = [message_body_bytes(m) for m in generate_corpus(3, seed=9)]
    assert list(read_jsonl_samples(path)) == expected


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [("{not json", "not valid JSON"), ('["a list"]', '"body" field'), ('{"op": "x"}', '"body"')],
)
def test_bad_jsonl_line_is_named(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"body": {"a": 1}}\n\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=f"line 3: .*{reason}"):
        list(read_jsonl_samples(path))


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"body": {"a": 1}}\n{"body": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="line 2: not UTF-8"):
        list(read_jsonl_samples(path))


def test_missing_file_is_a_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="cannot read"):
        list(read_jsonl_samples(tmp_path / "absent.jsonl"))


def test_too_few_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8 samples"):
        train_dictionary([b'{"a":1}'], dict_id=1)


# sha256 of the bodies default-1.mmtpdict was trained on (seed 1, 1,250 sessions).
DEFAULT_TRAINING_BODIES_SHA256 = "6f7389eac120d98ffd2cf64485c33203342c577349f379fbedba54053376eb5b"


def test_shipped_dictionary_matches_its_readme_and_training_corpus() -> None:
    readme = (Path(__file__).parents[1] / "channel" / "dictionaries" / "README.md").read_text(
        encoding="utf-8"
    )
    assert f"sha256:  {load_default_dictionary().sha256}" in readme
    digest = hashlib.sha256()
    for message in generate_corpus(1250, seed=TRAIN_SEED):
        digest.update(message_body_bytes(message) + b"\n")
    assert digest.hexdigest() == DEFAULT_TRAINING_BODIES_SHA256, (
        "the corpus generator's output changed, so the documented command no longer "
        "reproduces channel/dictionaries/default-1.mmtpdict: follow its README.md, "
        "then update DEFAULT_TRAINING_BODIES_SHA256"
    )
