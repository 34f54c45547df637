//! Payload layouts of the non-handshake frames (spec section 6).

use crate::errors::{perr, ErrorCode, ProtocolError};
use crate::frames::{FLAG_CONN, FLAG_HEADERS, FLAG_TYPED, FLAG_ZSTD};
use crate::limits::{MAX_SETTINGS_PAIRS, MAX_SETTINGS_PAYLOAD};
use crate::varint::{decode_varint_complete, encode_varint};

/// Header block, connection header block, typed section and body of a
/// message frame, still encoded.
pub(crate) struct MessageTail<'a> {
    pub header_block: &'a [u8],
    pub conn_block: &'a [u8],
    pub typed_section: &'a [u8],
    pub body: &'a [u8],
    pub compressed: bool,
}

fn section<'a>(
    payload: &'a [u8],
    offset: usize,
    what: &str,
) -> Result<(&'a [u8], usize), ProtocolError> {
    let (length, offset) = decode_varint_complete(payload, offset)?;
    if length == 0 || length > (payload.len() - offset) as u64 {
        return Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!("{what} length is 0 or past the frame"),
        ));
    }
    let end = offset + length as usize;
    Ok((&payload[offset..end], end))
}

pub(crate) fn decode_tail(
    payload: &[u8],
    mut offset: usize,
    flags: u8,
) -> Result<MessageTail<'_>, ProtocolError> {
    let mut tail = MessageTail {
        header_block: &[],
        conn_block: &[],
        typed_section: &[],
        body: &[],
        compressed: flags & FLAG_ZSTD != 0,
    };
    if flags & FLAG_HEADERS != 0 {
        (tail.header_block, offset) = section(payload, offset, "header block")?;
    }
    if flags & FLAG_CONN != 0 {
        (tail.conn_block, offset) = section(payload, offset, "connection header block")?;
    }
    if flags & FLAG_TYPED != 0 {
        (tail.typed_section, offset) = section(payload, offset, "typed section")?;
    }
    tail.body = &payload[offset..];
    Ok(tail)
}

pub(crate) fn decode_stream_id(payload: &[u8]) -> Result<(u64, usize), ProtocolError> {
    let (stream_id, offset) = decode_varint_complete(payload, 0)?;
    if stream_id == 0 {
        return perr(ErrorCode::StreamIdError, "stream id 0 is reserved");
    }
    Ok((stream_id, offset))
}

/// Decode an ACK's ids into `ids`.
pub(crate) fn decode_ack(
    payload: &[u8],
    max_ids: u64,
    ids: &mut Vec<u64>,
) -> Result<(), ProtocolError> {
    let mut offset = 0;
    let mut count = 0u64;
    while offset < payload.len() {
        let (delivery_id, next) = decode_varint_complete(payload, offset)?;
        offset = next;
        count += 1;
        if count > max_ids {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("ACK carries more than {max_ids} ids"),
            ));
        }
        ids.push(delivery_id);
    }
    if count == 0 {
        return perr(ErrorCode::FieldError, "ACK carries no delivery id");
    }
    Ok(())
}

pub(crate) fn encode_error(
    out: &mut Vec<u8>,
    stream_id: u64,
    code: u64,
    retry_after_ms: u64,
    message: &str,
) {
    encode_varint(out, stream_id);
    encode_varint(out, code);
    encode_varint(out, retry_after_ms);
    out.extend_from_slice(message.as_bytes());
}

pub(crate) struct ErrorPayload {
    pub stream_id: u64,
    pub code: u64,
    pub retry_after_ms: u64,
    pub message: String,
}

pub(crate) fn decode_error(payload: &[u8]) -> Result<ErrorPayload, ProtocolError> {
    let (stream_id, offset) = decode_varint_complete(payload, 0)?;
    let (code, offset) = decode_varint_complete(payload, offset)?;
    let (retry_after_ms, offset) = decode_varint_complete(payload, offset)?;
    Ok(ErrorPayload {
        stream_id,
        code,
        retry_after_ms,
        message: text(&payload[offset..], "ERROR message")?,
    })
}

pub(crate) fn encode_goaway(
    out: &mut Vec<u8>,
    code: u64,
    reconnect_after_ms: u64,
    alternate_endpoint: &str,
    message: &str,
) {
    encode_varint(out, code);
    encode_varint(out, reconnect_after_ms);
    encode_varint(out, alternate_endpoint.len() as u64);
    out.extend_from_slice(alternate_endpoint.as_bytes());
    out.extend_from_slice(message.as_bytes());
}

pub(crate) struct GoAwayPayload {
    pub code: u64,
    pub reconnect_after_ms: u64,
    pub alternate_endpoint: String,
    pub message: String,
}

pub(crate) fn decode_goaway(payload: &[u8]) -> Result<GoAwayPayload, ProtocolError> {
    let (code, offset) = decode_varint_complete(payload, 0)?;
    let (reconnect_after_ms, offset) = decode_varint_complete(payload, offset)?;
    let (length, offset) = decode_varint_complete(payload, offset)?;
    if length > (payload.len() - offset) as u64 {
        return perr(
            ErrorCode::FieldError,
            "GOAWAY alternate endpoint runs past the frame",
        );
    }
    let end = offset + length as usize;
    Ok(GoAwayPayload {
        code,
        reconnect_after_ms,
        alternate_endpoint: text(&payload[offset..end], "GOAWAY alternate endpoint")?,
        message: text(&payload[end..], "GOAWAY message")?,
    })
}

pub(crate) struct DictChunk<'a> {
    pub dict_id: u64,
    pub total_size: u64,
    pub offset: u64,
    pub chunk: &'a [u8],
}

pub(crate) fn decode_dict_chunk(payload: &[u8]) -> Result<DictChunk<'_>, ProtocolError> {
    let (dict_id, offset) = decode_varint_complete(payload, 0)?;
    let (total_size, offset) = decode_varint_complete(payload, offset)?;
    let (chunk_offset, offset) = decode_varint_complete(payload, offset)?;
    Ok(DictChunk {
        dict_id,
        total_size,
        offset: chunk_offset,
        chunk: &payload[offset..],
    })
}

/// Why SETTINGS pairs break the frame rules (at most 16, each id once).
pub(crate) fn settings_problem(settings: &[(u64, u64)]) -> Option<String> {
    if settings.len() > MAX_SETTINGS_PAIRS {
        return Some(format!(
            "SETTINGS carries more than {MAX_SETTINGS_PAIRS} pairs"
        ));
    }
    for (i, (key, _)) in settings.iter().enumerate() {
        if settings[..i].iter().any(|(k, _)| k == key) {
            return Some("SETTINGS carries an id twice".into());
        }
    }
    None
}

/// Decode SETTINGS pairs into `pairs` (spec section 6.9): a payload longer
/// than 16 pairs can be is refused from its length, before decoding.
pub(crate) fn decode_settings(
    payload: &[u8],
    pairs: &mut Vec<(u64, u64)>,
) -> Result<(), ProtocolError> {
    if payload.len() > MAX_SETTINGS_PAYLOAD {
        return Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!(
                "SETTINGS payload of {} bytes is longer than {MAX_SETTINGS_PAIRS} pairs can be",
                payload.len()
            ),
        ));
    }
    let mut offset = 0;
    while offset < payload.len() {
        let (key, next) = decode_varint_complete(payload, offset)?;
        let (value, next) = decode_varint_complete(payload, next)?;
        offset = next;
        pairs.push((key, value));
    }
    if let Some(problem) = settings_problem(pairs) {
        return Err(ProtocolError::new(ErrorCode::FieldError, problem));
    }
    Ok(())
}

fn text(raw: &[u8], what: &str) -> Result<String, ProtocolError> {
    match std::str::from_utf8(raw) {
        Ok(text) => Ok(text.to_owned()),
        Err(_) => Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!("{what} is not valid UTF-8"),
        )),
    }
}
