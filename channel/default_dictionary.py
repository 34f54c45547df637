"""The compression dictionary shipped inside the package.

``channel/dictionaries/default-1.mmtpdict`` is trained on the synthetic corpus
(see ``channel/dictionaries/README.md`` for the exact command). A deployment
with real traffic should train its own with a larger id; this one makes a fresh
install compress well from the first message.
"""

from __future__ import annotations

from importlib import resources

from channel.wire.dictionaries import Dictionary

DEFAULT_DICTIONARY_ID = 1
DEFAULT_DICTIONARY_FILE = f"default-{DEFAULT_DICTIONARY_ID}.mmtpdict"


def load_default_dictionary() -> Dictionary:
    """Read the packaged default dictionary (id 1)."""
    data = resources.files("channel").joinpath("dictionaries", DEFAULT_DICTIONARY_FILE).read_bytes()
    dictionary = Dictionary.from_file_bytes(data)
    if dictionary.dict_id != DEFAULT_DICTIONARY_ID:
        raise ValueError(
            f"{DEFAULT_DICTIONARY_FILE} holds id {dictionary.dict_id}, expected "
            f"{DEFAULT_DICTIONARY_ID}: the packaged file was replaced by a different dictionary"
        )
    return dictionary
