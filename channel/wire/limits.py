"""Every limit the wire core enforces, with its default, in one place.

Each side enforces its own ``Limits`` on what it *receives* and announces the
relevant ones to the peer in HELLO / HELLO_ACK so the peer never has to
guess. The table in ``protocol_spec/mmtp-v1.md`` ("Limits") mirrors these
defaults; ``tests/test_spec_consistency.py`` keeps them in step.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every HPACK table starts at this size (RFC 7541's default); presets are
#: loaded into it, so announced table sizes may not go below it.
INITIAL_HEADER_TABLE_SIZE = 4096


@dataclass(frozen=True)
class Limits:
    """Receive-side limits of one connection endpoint."""

    #: Largest frame payload accepted (bytes after the length field).
    max_frame_size: int = 256 * 1024
    #: Largest HPACK dynamic table the peer's encoder may use towards us.
    header_table_size: int = INITIAL_HEADER_TABLE_SIZE
    #: Largest decoded header list (RFC 7541 size: name + value + 32 per field).
    max_header_list_size: int = 16 * 1024
    #: Largest body after decompression.
    max_body_size: int = 1024 * 1024
    #: Largest zstd window a compressed body may ask for.
    max_zstd_window_size: int = 1 << 20
    #: Streams the peer may have open towards us at once.
    max_concurrent_streams: int = 64
    #: Longest device id / app id / app version / platform string in HELLO.
    max_identity_length: int = 128
    #: Longest token or resume ticket in HELLO.
    max_credential_length: int = 2048
    #: Largest HELLO payload a server accepts (refused from the frame's length,
    #: before it is read): a device not yet authenticated is held to a small frame.
    max_hello_size: int = 8 * 1024
    #: Longest push message id.
    max_message_id_length: int = 64
    #: Largest dictionary the peer may deliver with DICT frames.
    max_dictionary_size: int = 256 * 1024
    #: Most delivery ids in one ACK frame.
    max_acks_per_frame: int = 1024
    #: Largest list of connection-scoped headers (RFC 7541 size) a client may set;
    #: the server holds that list for the connection's life (spec 9.11).
    max_connection_header_list_size: int = 2048

    def __post_init__(self) -> None:
        if self.max_frame_size < 1024:
            raise ValueError("max_frame_size must be at least 1024 bytes")
        if self.header_table_size < INITIAL_HEADER_TABLE_SIZE:
            raise ValueError(f"header_table_size must be at least {INITIAL_HEADER_TABLE_SIZE}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if self.max_header_list_size < 256:
            raise ValueError("max_header_list_size must be at least 256")
        if self.max_hello_size < 1024:
            raise ValueError("max_hello_size must be at least 1024 bytes")
