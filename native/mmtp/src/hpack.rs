//! HPACK (RFC 7541) header blocks with preset tables, never-indexed names,
//! limits and context-free blocks (spec section 9).
//!
//! The encoder makes exactly the reference implementation's choices (spec
//! section 9.10): indexed when an identical entry exists (static first, then
//! the lowest dynamic index), else a literal whose name is the lowest static
//! index, else the lowest dynamic index, else a literal name; literals with
//! incremental indexing except for never-indexed names; each string literal
//! Huffman-coded only when that is strictly shorter.
//!
//! The decoder accepts what the reference's decoder accepts, with RFC 7541's
//! structural rule on top: at most two table size updates, only at the start
//! of a block.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::errors::{perr, ErrorCode, ProtocolError};
use crate::headers::{HeaderList, Headers};
use crate::huffman;
use crate::limits::{
    BLOCK_BYTES_PER_LIST_BYTE, MAX_TABLE_SIZE_UPDATES_PER_BLOCK, SIZE_UPDATES_MAX_BYTES,
};
use crate::presets::{PresetTable, ENTRY_OVERHEAD};

/// RFC 7541 Appendix A: the static table (index = position + 1).
pub(crate) const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Position of the first static entry named `name`, and how many share the name.
#[inline]
fn static_names(name: &[u8]) -> Option<(usize, usize)> {
    Some(match name {
        b":authority" => (0, 1),
        b":method" => (1, 2),
        b":path" => (3, 2),
        b":scheme" => (5, 2),
        b":status" => (7, 7),
        b"accept-charset" => (14, 1),
        b"accept-encoding" => (15, 1),
        b"accept-language" => (16, 1),
        b"accept-ranges" => (17, 1),
        b"accept" => (18, 1),
        b"access-control-allow-origin" => (19, 1),
        b"age" => (20, 1),
        b"allow" => (21, 1),
        b"authorization" => (22, 1),
        b"cache-control" => (23, 1),
        b"content-disposition" => (24, 1),
        b"content-encoding" => (25, 1),
        b"content-language" => (26, 1),
        b"content-length" => (27, 1),
        b"content-location" => (28, 1),
        b"content-range" => (29, 1),
        b"content-type" => (30, 1),
        b"cookie" => (31, 1),
        b"date" => (32, 1),
        b"etag" => (33, 1),
        b"expect" => (34, 1),
        b"expires" => (35, 1),
        b"from" => (36, 1),
        b"host" => (37, 1),
        b"if-match" => (38, 1),
        b"if-modified-since" => (39, 1),
        b"if-none-match" => (40, 1),
        b"if-range" => (41, 1),
        b"if-unmodified-since" => (42, 1),
        b"last-modified" => (43, 1),
        b"link" => (44, 1),
        b"location" => (45, 1),
        b"max-forwards" => (46, 1),
        b"proxy-authenticate" => (47, 1),
        b"proxy-authorization" => (48, 1),
        b"range" => (49, 1),
        b"referer" => (50, 1),
        b"refresh" => (51, 1),
        b"retry-after" => (52, 1),
        b"server" => (53, 1),
        b"set-cookie" => (54, 1),
        b"strict-transport-security" => (55, 1),
        b"transfer-encoding" => (56, 1),
        b"user-agent" => (57, 1),
        b"vary" => (58, 1),
        b"via" => (59, 1),
        b"www-authenticate" => (60, 1),
        _ => return None,
    })
}

const STATIC_LEN: usize = 61;
/// Index of the newest dynamic entry.
const FIRST_DYNAMIC: usize = STATIC_LEN + 1;

/// Names sent as never-indexed literals (spec section 9.6).
#[inline]
pub fn is_never_indexed(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "cookie"
            | "set-cookie"
            | "token"
            | "sign"
            | "signature"
            | "trace-id"
            | "request-id"
            | "message-id"
            | "ts"
            | "server-time"
    )
}

// ------------------------------------------------------------ dynamic table

/// The connection's own entries, oldest first, stored in one byte buffer: an
/// entry costs 12 bytes of bookkeeping plus its octets, not two allocations.
#[derive(Default)]
struct EntryRing {
    bytes: Vec<u8>,
    /// Start of the oldest live entry in `bytes` (evicted bytes before it).
    head: usize,
    /// (start, name length, value length), oldest first.
    spans: VecDeque<(u32, u32, u32)>,
}

impl EntryRing {
    fn len(&self) -> usize {
        self.spans.len()
    }

    /// The `i`-th newest entry.
    #[inline]
    fn newest(&self, i: usize) -> (&[u8], &[u8]) {
        let (start, name_len, value_len) = self.spans[self.spans.len() - 1 - i];
        let (start, name_end) = (start as usize, (start + name_len) as usize);
        (
            &self.bytes[start..name_end],
            &self.bytes[name_end..name_end + value_len as usize],
        )
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let need = name.len() + value.len();
        if self.head > 0 && self.bytes.len() + need > self.bytes.capacity() {
            // Reuse the space of evicted entries before growing.
            self.bytes.drain(..self.head);
            let head = self.head as u32;
            for span in &mut self.spans {
                span.0 -= head;
            }
            self.head = 0;
        }
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.spans
            .push_back((start, name.len() as u32, value.len() as u32));
    }

    /// Drop the oldest entry; return its size as a table entry.
    fn pop_oldest(&mut self) -> usize {
        let Some((_, name_len, value_len)) = self.spans.pop_front() else {
            return 0;
        };
        match self.spans.front() {
            Some(&(start, _, _)) => self.head = start as usize,
            None => self.clear(),
        }
        (name_len + value_len) as usize + ENTRY_OVERHEAD
    }

    fn clear(&mut self) {
        // Freed, not kept: an idle connection's empty table holds no memory.
        *self = EntryRing::default();
    }

    fn shrink_to_fit(&mut self) {
        if self.head > 0 {
            self.bytes.drain(..self.head);
            let head = self.head as u32;
            for span in &mut self.spans {
                span.0 -= head;
            }
            self.head = 0;
        }
        self.bytes.shrink_to_fit();
        self.spans.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * std::mem::size_of::<(u32, u32, u32)>()
    }
}

/// One HPACK dynamic table: the connection's own entries (newest) followed by
/// the part of the shared preset that has not been evicted yet (oldest).
pub(crate) struct DynTable {
    preset: Arc<PresetTable>,
    /// How many of the preset's newest entries are still in the table.
    preset_live: usize,
    own: EntryRing,
    size: usize,
    max_size: usize,
}

impl DynTable {
    /// A 4096-byte table with the preset loaded (spec section 9.3).
    pub(crate) fn with_preset(preset: Arc<PresetTable>) -> Self {
        let mut table = DynTable {
            preset_live: preset.len(),
            size: preset.table_bytes(),
            preset,
            own: EntryRing::default(),
            max_size: crate::limits::INITIAL_HEADER_TABLE_SIZE as usize,
        };
        table.shrink();
        table
    }

    pub(crate) fn len(&self) -> usize {
        self.own.len() + self.preset_live
    }

    pub(crate) fn max_size(&self) -> usize {
        self.max_size
    }

    /// The `i`-th newest entry (dynamic index 62 + i).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let own = self.own.len();
        if i < own {
            Some(self.own.newest(i))
        } else if i - own < self.preset_live {
            Some(self.preset.newest(i - own))
        } else {
            None
        }
    }

    pub(crate) fn add(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.own.clear();
            self.preset_live = 0;
            self.size = 0;
            return;
        }
        self.own.push(name, value);
        self.size += size;
        self.shrink();
    }

    pub(crate) fn set_max_size(&mut self, max_size: usize) {
        let old = self.max_size;
        self.max_size = max_size;
        if max_size == 0 {
            self.own.clear();
            self.preset_live = 0;
            self.size = 0;
        } else if old > max_size {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        while self.size > self.max_size {
            if self.preset_live > 0 {
                let (name, value) = self.preset.newest(self.preset_live - 1);
                self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
                self.preset_live -= 1;
            } else {
                self.size -= self.own.pop_oldest();
            }
        }
    }

    /// Entries, newest first (tests and debugging).
    pub(crate) fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..self.len())
            .filter_map(|i| self.get(i))
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.own.shrink_to_fit();
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.own.heap_bytes()
    }

    /// Search as the reference encoder does; see [`Found`].
    fn search(&self, name: &[u8], value: &[u8]) -> Found {
        let mut partial = None;
        if let Some((first, count)) = static_names(name) {
            for (i, entry) in STATIC_TABLE[first..first + count].iter().enumerate() {
                if entry.1.as_bytes() == value {
                    return Found::Field(first + i + 1);
                }
            }
            partial = Some(first + 1);
        }
        for i in 0..self.len() {
            let Some((n, v)) = self.get(i) else { break };
            if n == name {
                if v == value {
                    return Found::Field(FIRST_DYNAMIC + i);
                }
                if partial.is_none() {
                    partial = Some(FIRST_DYNAMIC + i);
                }
            }
        }
        match partial {
            Some(index) => Found::Name(index),
            None => Found::Nothing,
        }
    }

    /// Entry at an HPACK index (static or dynamic).
    #[inline]
    fn by_index(&self, index: u64) -> Option<(&[u8], &[u8])> {
        let index = usize::try_from(index).ok()?;
        if index == 0 {
            None
        } else if index <= STATIC_LEN {
            let (n, v) = STATIC_TABLE[index - 1];
            Some((n.as_bytes(), v.as_bytes()))
        } else {
            self.get(index - FIRST_DYNAMIC)
        }
    }
}

enum Found {
    /// An identical entry at this index.
    Field(usize),
    /// An entry with the same name at this index.
    Name(usize),
    Nothing,
}

// --------------------------------------------------------------- primitives

/// RFC 7541 section 5.1 integer with an `n`-bit prefix; `flags` fills the
/// first byte's other bits.
#[inline]
pub(crate) fn encode_integer(out: &mut Vec<u8>, mut value: u64, prefix_bits: u32, flags: u8) {
    let max = (1u64 << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value & 127) as u8 | 128);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string literal, Huffman-coded exactly when that is strictly shorter.
#[inline]
pub(crate) fn encode_string(out: &mut Vec<u8>, raw: &[u8]) {
    let coded_len = huffman::encoded_len(raw);
    if coded_len < raw.len() {
        encode_integer(out, coded_len as u64, 7, 0x80);
        huffman::encode(out, raw);
    } else {
        encode_integer(out, raw.len() as u64, 7, 0);
        out.extend_from_slice(raw);
    }
}

/// Decode an integer as the reference's decoder (the `hpack` package) does:
/// at most 5 continuation bytes. `None` if truncated or too long.
#[inline]
pub(crate) fn decode_integer(data: &[u8], prefix_bits: u32) -> Option<(u64, usize)> {
    let max = (1u64 << prefix_bits) - 1;
    let mut number = (*data.first()? as u64) & max;
    let mut index = 1;
    if number == max {
        let mut shift = 0;
        loop {
            let next = *data.get(index)?;
            index += 1;
            number += ((next & 0x7f) as u64) << shift;
            if next < 0x80 {
                break;
            }
            shift += 7;
            if index > 5 {
                return None;
            }
        }
    }
    Some((number, index))
}

fn truncated() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::HeaderError,
        "bad header block: Truncated header block",
    )
}

fn bad_integer() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::HeaderError,
        "bad header block: Unable to decode HPACK integer representation",
    )
}

fn bad_huffman() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::HeaderError,
        "bad header block: Invalid Huffman string",
    )
}

fn bad_index(index: u64) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::HeaderError,
        format!("bad header block: Invalid table index {index}"),
    )
}

fn write_size_update(out: &mut Vec<u8>, smallest: usize, last: usize) {
    encode_integer(out, smallest as u64, 5, 0x20);
    if last != smallest {
        encode_integer(out, last as u64, 5, 0x20);
    }
}

// ------------------------------------------------------------------ encoder

/// Sender side of one direction's HPACK context.
pub struct Encoder {
    table: DynTable,
    /// Table size changes since the last block: (smallest, final).
    pending_update: Option<(usize, usize)>,
    /// Our own cap on the table the peer lets us use.
    cap: usize,
}

impl Encoder {
    pub fn new(preset: Arc<PresetTable>, cap: u64) -> Self {
        Encoder {
            table: DynTable::with_preset(preset),
            pending_update: None,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
        }
    }

    /// Grow (or shrink) to what the peer's decoder announced, within our cap.
    pub fn use_peer_table_size(&mut self, peer_table_size: u64) {
        let size = usize::try_from(peer_table_size)
            .unwrap_or(usize::MAX)
            .min(self.cap);
        if size == self.table.max_size() {
            return;
        }
        self.table.set_max_size(size);
        self.pending_update = Some(match self.pending_update {
            None => (size, size),
            Some((smallest, _)) => (smallest.min(size), size),
        });
    }

    /// Whether a size update is owed to the next block.
    pub fn owes_size_update(&self) -> bool {
        self.pending_update.is_some()
    }

    /// Append the size update this encoder owes (for a block built elsewhere,
    /// a context-free one); it is then no longer owed.
    pub fn take_size_update(&mut self, out: &mut Vec<u8>) {
        if let Some((smallest, last)) = self.pending_update.take() {
            write_size_update(out, smallest, last);
        }
    }

    /// Append a header block for fields `[0, count)` of `headers` that `keep` selects.
    pub(crate) fn encode<H: HeaderList + ?Sized>(
        &mut self,
        out: &mut Vec<u8>,
        headers: &H,
        keep: impl Fn(&str, &str) -> bool,
    ) {
        self.take_size_update(out);
        for i in 0..headers.field_count() {
            let (name, value) = headers.field(i);
            if keep(name, value) {
                self.encode_field(out, name, value);
            }
        }
    }

    /// Whether this encoder sends `name` as a never-indexed literal (the
    /// spec's list and the preset's own names).
    pub fn never_indexes(&self, name: &str) -> bool {
        is_never_indexed(name) || self.table.preset.never_indexes(name)
    }

    fn encode_field(&mut self, out: &mut Vec<u8>, name: &str, value: &str) {
        let (name_b, value_b) = (name.as_bytes(), value.as_bytes());
        let never = self.never_indexes(name);
        match self.table.search(name_b, value_b) {
            Found::Field(index) => encode_integer(out, index as u64, 7, 0x80),
            Found::Name(index) => {
                if never {
                    encode_integer(out, index as u64, 4, 0x10);
                } else {
                    encode_integer(out, index as u64, 6, 0x40);
                }
                encode_string(out, value_b);
                if !never {
                    self.table.add(name_b, value_b);
                }
            }
            Found::Nothing => {
                out.push(if never { 0x10 } else { 0x40 });
                encode_string(out, name_b);
                encode_string(out, value_b);
                if !never {
                    self.table.add(name_b, value_b);
                }
            }
        }
    }

    pub(crate) fn table(&self) -> &DynTable {
        &self.table
    }

    pub(crate) fn table_mut(&mut self) -> &mut DynTable {
        &mut self.table
    }

    /// Append a header block for every field of `headers`.
    pub fn encode_all<H: HeaderList + ?Sized>(&mut self, out: &mut Vec<u8>, headers: &H) {
        self.encode(out, headers, |_, _| true);
    }

    /// The dynamic table, newest first.
    pub fn table_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.table.entries()
    }
}

/// A block valid in any decoder state (spec section 9.7): literals without
/// indexing (never indexed for the names of section 9.6), names as the lowest
/// static index or a literal.
pub fn encode_context_free<H: HeaderList + ?Sized>(out: &mut Vec<u8>, headers: &H) {
    encode_context_free_with(out, headers, is_never_indexed);
}

/// `encode_context_free` with `never_indexed` deciding the never-indexed names
/// (a connection header block: the spec's list and the preset's).
pub fn encode_context_free_with<H: HeaderList + ?Sized>(
    out: &mut Vec<u8>,
    headers: &H,
    never_indexed: impl Fn(&str) -> bool,
) {
    for i in 0..headers.field_count() {
        let (name, value) = headers.field(i);
        let pattern = if never_indexed(name) { 0x10 } else { 0x00 };
        match static_names(name.as_bytes()) {
            Some((first, _)) => encode_integer(out, first as u64 + 1, 4, pattern),
            None => {
                out.push(pattern);
                encode_string(out, name.as_bytes());
            }
        }
        encode_string(out, value.as_bytes());
    }
}

// ------------------------------------------------------------------ decoder

/// Receiver side of one direction's HPACK context, with limits.
pub struct Decoder {
    table: DynTable,
    /// Largest table the peer's encoder may use (our announced size).
    max_allowed: usize,
}

impl Decoder {
    pub fn new(preset: Arc<PresetTable>, max_allowed: u64) -> Self {
        Decoder {
            table: DynTable::with_preset(preset),
            max_allowed: usize::try_from(max_allowed).unwrap_or(usize::MAX),
        }
    }

    /// Change the largest table the peer's encoder may use (SETTINGS).
    pub fn allow_table_size(&mut self, max_allowed: u64) {
        self.max_allowed = usize::try_from(max_allowed).unwrap_or(usize::MAX);
    }

    pub(crate) fn table(&self) -> &DynTable {
        &self.table
    }

    pub(crate) fn table_mut(&mut self) -> &mut DynTable {
        &mut self.table
    }

    /// The dynamic table, newest first.
    pub fn table_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.table.entries()
    }

    /// Decode `block`, appending its fields to `out`; returns the list's RFC
    /// 7541 size. Stops with `HEADER_LIST_TOO_LARGE` as soon as the running
    /// size exceeds `max_list_size`.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_size: u64,
        out: &mut Headers,
    ) -> Result<u64, ProtocolError> {
        check_structure(block, max_list_size)?;
        let mut pos = 0;
        let mut list_size = 0u64;
        let mut any_field = false;
        let mut updates = 0usize;
        let mut utf8_ok = true;
        let mut empty_name = false;
        // Huffman output and names that must outlive a table insertion.
        let mut name_buf: Vec<u8> = Vec::new();
        let mut value_buf: Vec<u8> = Vec::new();
        while pos < block.len() {
            let data = &block[pos..];
            let first = data[0];
            let field_size;
            if first & 0x80 != 0 {
                let (index, used) = decode_integer(data, 7).ok_or_else(bad_integer)?;
                let (name, value) = self.table.by_index(index).ok_or_else(|| bad_index(index))?;
                field_size = name.len() + value.len() + ENTRY_OVERHEAD;
                empty_name |= name.is_empty();
                utf8_ok &= push_field(out, name, value);
                pos += used;
            } else if first & 0x40 != 0 || first & 0x20 == 0 {
                let indexing = first & 0x40 != 0;
                let used = self.decode_literal(data, indexing, &mut name_buf, &mut value_buf)?;
                field_size = name_buf.len() + value_buf.len() + ENTRY_OVERHEAD;
                empty_name |= name_buf.is_empty();
                utf8_ok &= push_field(out, &name_buf, &value_buf);
                pos += used;
            } else {
                if any_field {
                    return perr(
                        ErrorCode::HeaderError,
                        "bad header block: Table size update not at the start of the block",
                    );
                }
                updates += 1;
                if updates > MAX_TABLE_SIZE_UPDATES_PER_BLOCK {
                    return perr(
                        ErrorCode::HeaderError,
                        "bad header block: more than two table size updates",
                    );
                }
                let (size, used) = decode_integer(data, 5).ok_or_else(bad_integer)?;
                if size > self.max_allowed as u64 {
                    return perr(
                        ErrorCode::TableSizeError,
                        "Encoder exceeded max allowable table size",
                    );
                }
                self.table.set_max_size(size as usize);
                pos += used;
                continue;
            }
            any_field = true;
            list_size += field_size as u64;
            if list_size > max_list_size {
                return Err(ProtocolError::new(
                    ErrorCode::HeaderListTooLarge,
                    format!("A header list larger than {max_list_size} has been received"),
                ));
            }
        }
        if self.table.max_size() > self.max_allowed {
            return perr(
                ErrorCode::TableSizeError,
                "Encoder did not shrink table size to within the max",
            );
        }
        if !utf8_ok {
            return perr(
                ErrorCode::HeaderError,
                "bad header block: Unable to decode headers as UTF-8",
            );
        }
        if empty_name {
            return perr(ErrorCode::HeaderError, "header with an empty name");
        }
        Ok(list_size)
    }

    /// A literal field; its name and value land in the two buffers.
    fn decode_literal(
        &mut self,
        data: &[u8],
        indexing: bool,
        name_buf: &mut Vec<u8>,
        value_buf: &mut Vec<u8>,
    ) -> Result<usize, ProtocolError> {
        let prefix_bits = if indexing { 6 } else { 4 };
        let name_index = (data[0] & ((1 << prefix_bits) - 1)) != 0;
        let mut total;
        let rest;
        name_buf.clear();
        if name_index {
            let (index, used) = decode_integer(data, prefix_bits).ok_or_else(bad_integer)?;
            let (name, _) = self.table.by_index(index).ok_or_else(|| bad_index(index))?;
            name_buf.extend_from_slice(name);
            total = used;
            rest = &data[used..];
        } else {
            let after = &data[1..];
            let (used, end) = read_string(after, name_buf)?;
            total = 1 + end;
            let _ = used;
            rest = &after[end..];
        }
        value_buf.clear();
        let (_, end) = read_string(rest, value_buf)?;
        total += end;
        if indexing {
            self.table.add(name_buf, value_buf);
        }
        Ok(total)
    }
}

/// Refuse, before decoding, a block whose work is out of proportion to what
/// it can carry (spec section 9.2): longer than any header list within the
/// limit could be encoded as, or opening with more than two size updates.
fn check_structure(block: &[u8], max_list_size: u64) -> Result<(), ProtocolError> {
    let limit = BLOCK_BYTES_PER_LIST_BYTE
        .saturating_mul(max_list_size)
        .saturating_add(SIZE_UPDATES_MAX_BYTES);
    if block.len() as u64 > limit {
        return Err(ProtocolError::new(
            ErrorCode::HeaderListTooLarge,
            format!(
                "header block of {} bytes cannot decode to a header list within \
                 max_header_list_size {max_list_size}",
                block.len()
            ),
        ));
    }
    let mut offset = 0;
    let mut updates = 0;
    while offset < block.len() && block[offset] & 0xe0 == 0x20 {
        updates += 1;
        if updates > MAX_TABLE_SIZE_UPDATES_PER_BLOCK {
            return perr(
                ErrorCode::HeaderError,
                "more than 2 dynamic table size updates open the header block (RFC 7541 4.2)",
            );
        }
        offset = skip_integer(block, offset, 0x1f);
    }
    Ok(())
}

/// Offset after the integer at `offset` (the block's end if it does not end
/// within 8 continuation bytes: no table size the decoder accepts is longer).
fn skip_integer(block: &[u8], offset: usize, prefix_mask: u8) -> usize {
    if block[offset] & prefix_mask != prefix_mask {
        return offset + 1;
    }
    let end = block.len().min(offset + 1 + 8);
    (offset + 1..end)
        .find(|&position| block[position] & 0x80 == 0)
        .map_or(block.len(), |position| position + 1)
}

/// Read a string literal into `into`; returns (length prefix size, bytes used).
fn read_string(data: &[u8], into: &mut Vec<u8>) -> Result<(usize, usize), ProtocolError> {
    let (length, used) = decode_integer(data, 7).ok_or_else(bad_integer)?;
    let end = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(used))
        .filter(|&end| end <= data.len())
        .ok_or_else(truncated)?;
    let raw = &data[used..end];
    if data[0] & 0x80 != 0 {
        huffman::decode(into, raw).map_err(|_| bad_huffman())?;
    } else {
        into.extend_from_slice(raw);
    }
    Ok((used, end))
}

/// Append a field if it is UTF-8; `false` if it is not (the block then fails
/// once it has been read to the end, as the reference's decoder does).
#[inline]
fn push_field(out: &mut Headers, name: &[u8], value: &[u8]) -> bool {
    match (std::str::from_utf8(name), std::str::from_utf8(value)) {
        (Ok(name), Ok(value)) => {
            out.push(name, value);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::Presets;

    fn preset(id: u64) -> Arc<PresetTable> {
        Presets::builtin().get(id).unwrap().clone()
    }

    #[test]
    fn spec_9_9_example_prefers_raw_utf8() {
        let mut encoder = Encoder::new(preset(0), 4096);
        let mut out = Vec::new();
        encoder.encode(&mut out, &[("x-city", "上海")], |_, _| true);
        assert_eq!(
            out,
            [0x40, 0x85, 0xf2, 0xb1, 0x0c, 0x9f, 0x5f, 0x06, 0xe4, 0xb8, 0x8a, 0xe6, 0xb5, 0xb7]
        );
    }

    #[test]
    fn preset_entries_are_indexed_and_evicted_oldest_first() {
        let mut encoder = Encoder::new(preset(1), 4096);
        let mut decoder = Decoder::new(preset(1), 4096);
        let mut out = Vec::new();
        encoder.encode(
            &mut out,
            &[(":op", "user.get"), ("locale", "zh-CN")],
            |_, _| true,
        );
        assert_eq!(out[0], 0x7e); // literal, name index 62
        assert_eq!(*out.last().unwrap(), 0xc1); // index 65
        let mut headers = Headers::new();
        decoder.decode(&out, 16384, &mut headers).unwrap();
        assert_eq!(headers.to_vec()[1], ("locale".into(), "zh-CN".into()));
        assert_eq!(encoder.table().entries(), decoder.table().entries());
        // Shrinking evicts the first listed preset entries.
        encoder.use_peer_table_size(100); // cap 4096: takes effect
        assert!(encoder.table().len() < 16);
    }

    #[test]
    fn size_updates_only_at_start_and_at_most_two() {
        let mut decoder = Decoder::new(preset(0), 4096);
        let mut headers = Headers::new();
        // 3 updates to 4096 (0x3f e1 1f each).
        let three = [0x3f, 0xe1, 0x1f, 0x3f, 0xe1, 0x1f, 0x3f, 0xe1, 0x1f];
        let e = decoder.decode(&three, 16384, &mut headers).unwrap_err();
        assert_eq!(e.code, ErrorCode::HeaderError);
        let after_field = [0x82, 0x3f, 0xe1, 0x1f];
        let e = decoder
            .decode(&after_field, 16384, &mut headers)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::HeaderError);
        let two = [0x3f, 0xe1, 0x1f, 0x3f, 0xe1, 0x1f, 0x82];
        assert!(decoder.decode(&two, 16384, &mut headers).is_ok());
    }
}
