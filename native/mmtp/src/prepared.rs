//! Pushes encoded once for many connections (spec section 9.7).

use std::sync::{Arc, RwLock};

use crate::body::BodyCodec;
use crate::errors::LocalError;
use crate::frames::{FLAG_HEADERS, FLAG_ZSTD};
use crate::headers::{header_list_size, HeaderList};
use crate::hpack::encode_context_free;
use crate::varint::{encode_varint, varint_size};

/// Everything of a PUSH payload after the delivery id, for one dictionary.
#[derive(Debug)]
pub(crate) struct PreparedTail {
    pub flags: u8,
    pub bytes: Vec<u8>,
    /// Where the (encoded) body starts in `bytes`.
    body_start: usize,
}

impl PreparedTail {
    /// Bytes of the encoded body.
    pub fn body_len(&self) -> usize {
        self.bytes.len() - self.body_start
    }
}

/// A push whose header block uses only context-free representations (static
/// table names, literals without indexing), so the same bytes are valid on
/// every connection whatever its dynamic table holds; the body is compressed
/// once per dictionary id and cached. Shareable across threads.
#[derive(Debug)]
pub struct PreparedPush {
    message_id: Vec<u8>,
    header_block: Vec<u8>,
    body: Vec<u8>,
    /// RFC 7541 size of the headers, checked against each peer's limit.
    header_list_size: u64,
    codec: Arc<BodyCodec>,
    tails: RwLock<Vec<(u32, Arc<PreparedTail>)>>,
}

impl PreparedPush {
    /// Encode a push once, for [`send_prepared_push`](crate::Connection::send_prepared_push)
    /// on any connection that shares `codec`'s dictionaries.
    pub fn new<H: HeaderList + ?Sized>(
        message_id: &[u8],
        body: &[u8],
        headers: &H,
        codec: Arc<BodyCodec>,
    ) -> Self {
        let mut header_block = Vec::new();
        encode_context_free(&mut header_block, headers);
        PreparedPush {
            message_id: message_id.to_vec(),
            header_block,
            body: body.to_vec(),
            header_list_size: header_list_size(headers),
            codec,
            tails: RwLock::new(Vec::new()),
        }
    }

    pub fn message_id(&self) -> &[u8] {
        &self.message_id
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn header_block(&self) -> &[u8] {
        &self.header_block
    }

    pub fn header_list_size(&self) -> u64 {
        self.header_list_size
    }

    /// The tail for a connection compressing with `dict_id` (cached).
    pub(crate) fn tail(&self, dict_id: u32) -> Result<Arc<PreparedTail>, LocalError> {
        {
            let tails = self.tails.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, tail)) = tails.iter().find(|(id, _)| *id == dict_id) {
                return Ok(tail.clone());
            }
        }
        let tail = Arc::new(self.build_tail(dict_id)?);
        let mut tails = self.tails.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, existing)) = tails.iter().find(|(id, _)| *id == dict_id) {
            return Ok(existing.clone());
        }
        tails.push((dict_id, tail.clone()));
        Ok(tail)
    }

    fn build_tail(&self, dict_id: u32) -> Result<PreparedTail, LocalError> {
        let encoded = self.codec.encode(&self.body, dict_id)?;
        let flags = if encoded.compressed() { FLAG_ZSTD } else { 0 };
        Ok(self.assemble(flags, &[], encoded.data()))
    }

    /// `tail` with `size_update` in front of its header block: a connection's
    /// owed HPACK size update (not cached: it belongs to one connection).
    pub(crate) fn with_size_update(&self, tail: &PreparedTail, size_update: &[u8]) -> PreparedTail {
        self.assemble(
            tail.flags & FLAG_ZSTD,
            size_update,
            &tail.bytes[tail.body_start..],
        )
    }

    fn assemble(&self, flags: u8, size_update: &[u8], body: &[u8]) -> PreparedTail {
        let mut flags = flags;
        let block_len = size_update.len() + self.header_block.len();
        let mut bytes = Vec::with_capacity(
            varint_size(self.message_id.len() as u64)
                + self.message_id.len()
                + varint_size(block_len as u64)
                + block_len
                + body.len(),
        );
        encode_varint(&mut bytes, self.message_id.len() as u64);
        bytes.extend_from_slice(&self.message_id);
        if block_len > 0 {
            flags |= FLAG_HEADERS;
            encode_varint(&mut bytes, block_len as u64);
            bytes.extend_from_slice(size_update);
            bytes.extend_from_slice(&self.header_block);
        }
        let body_start = bytes.len();
        bytes.extend_from_slice(body);
        PreparedTail {
            flags,
            bytes,
            body_start,
        }
    }
}
