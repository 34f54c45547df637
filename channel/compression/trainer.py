"""Retraining: a candidate dictionary from samples, published only if it pays.

The samples are split by device (a device's bodies all land on one side), a
candidate is trained on 80 % and both it and the app's current dictionary
compress the other 20 % one body at a time, as the wire does. The candidate is
published under a new id only when it makes them at least ``min_saving``
smaller; otherwise nothing changes. Used by the gateway's retraining job and
by ``channel dict retrain``.
"""

from __future__ import annotations

from dataclasses import dataclass

from channel.dicttrain import evaluate, train_dictionary
from channel.wire.body import COMPRESSION_LEVEL
from channel.wire.dictionaries import Dictionary

#: Share of devices whose samples are held out for the evaluation.
HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class Verdict:
    """What a retraining found: the bytes of the held-out samples each way."""

    candidate: Dictionary
    samples: int
    held_out: int
    current_id: int
    current_bytes: int
    candidate_bytes: int

    @property
    def saving(self) -> float:
        """Share of the current dictionary's bytes the candidate saves (negative: worse)."""
        if not self.current_bytes:
            return 1.0 if self.candidate_bytes else 0.0
        return 1 - self.candidate_bytes / self.current_bytes

    def pays(self, min_saving: float) -> bool:
        return self.saving >= min_saving

    def describe(self) -> str:
        return (
            f"candidate {self.candidate.dict_id} vs current {self.current_id}: "
            f"{self.candidate_bytes:,} vs {self.current_bytes:,} bytes on {self.held_out:,} "
            f"held-out samples ({self.saving:+.1%})"
        )


def split_by_device(samples: list[tuple[int, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """(training bodies, held-out bodies): a device's samples stay on one side."""
    train: list[bytes] = []
    held: list[bytes] = []
    for device, body in samples:
        (held if device % 100 < HELD_OUT_SHARE * 100 else train).append(body)
    return train, held


def retrain(
    samples: list[tuple[int, bytes]],
    current: Dictionary | None,
    new_id: int,
    dict_size_bytes: int,
) -> Verdict:
    """Train a candidate as ``new_id`` and measure it against ``current`` (CPU-bound:
    run it in a thread)."""
    train, held = split_by_device(samples)
    if len(train) < 8 or not held:
        raise ValueError(
            f"{len(samples)} samples from too few devices to train and evaluate "
            "(need at least 8 to train and 1 held out)"
        )
    candidate = train_dictionary(train, new_id, dict_size_bytes, threads=1)
    mine = evaluate(candidate, held, COMPRESSION_LEVEL)
    if current is None:
        theirs_bytes = mine.compressed_bytes_without_dict
        current_id = 0
    else:
        theirs_bytes = evaluate(current, held, COMPRESSION_LEVEL).compressed_bytes_with_dict
        current_id = current.dict_id
    return Verdict(
        candidate,
        len(samples),
        len(held),
        current_id,
        theirs_bytes,
        mine.compressed_bytes_with_dict,
    )
