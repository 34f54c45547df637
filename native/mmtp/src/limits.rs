//! Every limit the protocol core enforces, with its default (spec section 15).
//!
//! Each side enforces its own [`Limits`] on what it *receives* and announces the
//! relevant ones to the peer in HELLO / HELLO_ACK / SETTINGS.

/// Every HPACK table starts at this size (RFC 7541's default); presets are
/// loaded into it, so announced table sizes may not go below it.
pub const INITIAL_HEADER_TABLE_SIZE: u64 = 4096;
/// Smallest `max_frame_size` anyone may announce or configure.
pub const MIN_MAX_FRAME_SIZE: u64 = 1024;
/// Smallest `max_header_list_size` (SETTINGS, and the reference's `Limits`).
pub const MIN_MAX_HEADER_LIST_SIZE: u64 = 256;
/// Largest PING payload.
pub const MAX_PING_PAYLOAD: usize = 8;
/// Presets leave a quarter of the initial table for the connection's own entries.
pub const MAX_PRESET_TABLE_BYTES: usize = 3072;

// Structural caps against CPU exhaustion by one peer (issue 10). They bound work
// per frame that no size limit bounds: a 256 KiB frame could otherwise carry
// ~262,000 table size updates or ~131,000 SETTINGS pairs.

/// Dynamic table size updates allowed at the start of one header block
/// (RFC 7541 section 4.2: the smallest size since the last block, then the
/// final one); more, or one after a field, is a `HEADER_ERROR`.
pub const MAX_TABLE_SIZE_UPDATES_PER_BLOCK: usize = 2;
/// A header block longer than 4 × `max_header_list_size` + 12 bytes cannot
/// decode to a list within the limit (a Huffman code takes at most 30 bits per
/// octet; prefixes and lengths fit in the 32 bytes a field counts besides its
/// octets): `HEADER_LIST_TOO_LARGE`, refused before decoding.
pub const BLOCK_BYTES_PER_LIST_BYTE: u64 = 4;
pub const SIZE_UPDATES_MAX_BYTES: u64 = 12;
/// Most pairs in one SETTINGS frame, each id at most once (spec section 6.9).
pub const MAX_SETTINGS_PAIRS: usize = 16;
/// Longest SETTINGS payload 16 pairs can take; longer is refused from its length.
pub const MAX_SETTINGS_PAYLOAD: usize = MAX_SETTINGS_PAIRS * 2 * 8;
/// Fields of unknown number allowed in one HELLO or HELLO_ACK (spec section 7.1).
pub const MAX_UNKNOWN_FIELDS: u64 = 32;
/// Most dictionary ids one HELLO may list (spec section 7.2).
pub const MAX_HELLO_DICTIONARIES: usize = 32;

/// Limits of one endpoint. Sizes are bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted (bytes after the length field).
    pub max_frame_size: u64,
    /// Largest HPACK dynamic table the peer's encoder may use towards us.
    pub header_table_size: u64,
    /// Largest decoded header list (RFC 7541 size: name + value + 32 per field).
    pub max_header_list_size: u64,
    /// Largest body after decompression.
    pub max_body_size: u64,
    /// Largest zstd window a compressed body may ask for.
    pub max_zstd_window_size: u64,
    /// Streams the peer may have open towards us at once.
    pub max_concurrent_streams: u64,
    /// Longest device id / app id / app version / platform string in HELLO.
    pub max_identity_length: u64,
    /// Longest token or resume ticket in HELLO.
    pub max_credential_length: u64,
    /// Longest push message id.
    pub max_message_id_length: u64,
    /// Largest dictionary the peer may deliver with DICT frames.
    pub max_dictionary_size: u64,
    /// Most delivery ids in one ACK frame.
    pub max_acks_per_frame: u64,
    /// Largest HELLO payload a server accepts: its first frame is read under
    /// min(`max_frame_size`, this), so a longer one is a `FRAME_SIZE_ERROR`
    /// from its length alone (spec section 4.1).
    pub max_hello_size: u64,
    /// Largest connection-scoped header list (RFC 7541 size) a client may set;
    /// the server holds it for the connection's life (spec section 9.11).
    pub max_connection_header_list_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 256 * 1024,
            header_table_size: INITIAL_HEADER_TABLE_SIZE,
            max_header_list_size: 16 * 1024,
            max_body_size: 1024 * 1024,
            max_zstd_window_size: 1 << 20,
            max_concurrent_streams: 64,
            max_identity_length: 128,
            max_credential_length: 2048,
            max_message_id_length: 64,
            max_dictionary_size: 256 * 1024,
            max_acks_per_frame: 1024,
            max_hello_size: 8192,
            max_connection_header_list_size: 2048,
        }
    }
}

impl Limits {
    /// Refuse limits the protocol does not allow (the reference's
    /// `Limits.__post_init__`), naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_size < MIN_MAX_FRAME_SIZE {
            return Err("max_frame_size must be at least 1024 bytes".into());
        }
        if self.header_table_size < INITIAL_HEADER_TABLE_SIZE {
            return Err(format!(
                "header_table_size must be at least {INITIAL_HEADER_TABLE_SIZE}"
            ));
        }
        if self.max_concurrent_streams < 1 {
            return Err("max_concurrent_streams must be at least 1".into());
        }
        if self.max_header_list_size < MIN_MAX_HEADER_LIST_SIZE {
            return Err("max_header_list_size must be at least 256".into());
        }
        if self.max_hello_size < MIN_MAX_FRAME_SIZE {
            return Err("max_hello_size must be at least 1024 bytes".into());
        }
        Ok(())
    }
}
