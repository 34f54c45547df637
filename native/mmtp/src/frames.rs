//! Frame layer (spec section 4): `type << 4 | flags`, a varint payload
//! length, the payload. The scanner refuses a frame as soon as its length
//! field announces more than `max_frame_size`, before buffering it.

use crate::errors::{ErrorCode, ProtocolError};
use crate::varint::{decode_varint, encode_varint, VarintError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x0,
    HelloAck = 0x1,
    Request = 0x2,
    Response = 0x3,
    Push = 0x4,
    Ack = 0x5,
    Ping = 0x6,
    Pong = 0x7,
    Settings = 0x8,
    GoAway = 0x9,
    Error = 0xA,
    Cancel = 0xB,
    Dict = 0xC,
}

pub const FRAME_TYPE_COUNT: usize = 13;

const TYPES: [FrameType; FRAME_TYPE_COUNT] = [
    FrameType::Hello,
    FrameType::HelloAck,
    FrameType::Request,
    FrameType::Response,
    FrameType::Push,
    FrameType::Ack,
    FrameType::Ping,
    FrameType::Pong,
    FrameType::Settings,
    FrameType::GoAway,
    FrameType::Error,
    FrameType::Cancel,
    FrameType::Dict,
];

const NAMES: [&str; FRAME_TYPE_COUNT] = [
    "HELLO",
    "HELLO_ACK",
    "REQUEST",
    "RESPONSE",
    "PUSH",
    "ACK",
    "PING",
    "PONG",
    "SETTINGS",
    "GOAWAY",
    "ERROR",
    "CANCEL",
    "DICT",
];

impl FrameType {
    pub fn from_u8(value: u8) -> Option<FrameType> {
        TYPES.get(value as usize).copied()
    }

    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    /// Flags this type may carry; any other bit is a `PROTOCOL_ERROR`.
    pub fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Request => FLAG_HEADERS | FLAG_ZSTD | FLAG_TYPED | FLAG_CONN,
            FrameType::Response | FrameType::Push => FLAG_HEADERS | FLAG_ZSTD | FLAG_TYPED,
            FrameType::Settings => FLAG_SETTINGS_ACK,
            FrameType::Dict => FLAG_DICT_LAST,
            _ => 0,
        }
    }

    /// Bit of this type in a set of types.
    #[inline]
    pub(crate) fn bit(self) -> u16 {
        1 << self as u16
    }
}

pub const FLAG_HEADERS: u8 = 0x1;
pub const FLAG_ZSTD: u8 = 0x2;
pub const FLAG_TYPED: u8 = 0x4;
/// REQUEST from a client: a connection header block follows the header block (spec 9.11).
pub const FLAG_CONN: u8 = 0x8;
pub const FLAG_SETTINGS_ACK: u8 = 0x1;
pub const FLAG_DICT_LAST: u8 = 0x1;

/// Append one whole frame.
pub fn encode_frame(out: &mut Vec<u8>, frame_type: FrameType, flags: u8, payload: &[u8]) {
    out.push(((frame_type as u8) << 4) | flags);
    encode_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// One frame found by [`scan`]: where its payload lies in the buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameRef {
    pub frame_type: FrameType,
    pub flags: u8,
    pub start: usize,
    pub end: usize,
}

/// Read the frame header at `offset`: `Ok(None)` if the buffer ends before the
/// frame does, the frame if it is complete, the error if it is invalid.
#[inline]
pub(crate) fn next_frame(
    buffer: &[u8],
    offset: usize,
    max_frame_size: u64,
) -> Result<Option<FrameRef>, ProtocolError> {
    let first = buffer[offset];
    let Some(frame_type) = FrameType::from_u8(first >> 4) else {
        return Err(ProtocolError::new(
            ErrorCode::UnknownFrameType,
            format!("unknown frame type 0x{:x}", first >> 4),
        ));
    };
    let flags = first & 0x0f;
    if flags & !frame_type.allowed_flags() != 0 {
        return Err(ProtocolError::new(
            ErrorCode::ProtocolError,
            format!(
                "{} frame with undefined flags 0x{flags:x}",
                frame_type.name()
            ),
        ));
    }
    let (length, start) = match decode_varint(buffer, offset + 1) {
        Ok(found) => found,
        Err(VarintError::NeedMoreData) => return Ok(None),
        Err(VarintError::Invalid(error)) => return Err(error),
    };
    if length > max_frame_size {
        return Err(ProtocolError::new(
            ErrorCode::FrameSizeError,
            format!(
                "{} frame of {length} bytes exceeds max_frame_size {max_frame_size}",
                frame_type.name()
            ),
        ));
    }
    let available = (buffer.len() - start) as u64;
    if length > available {
        return Ok(None);
    }
    Ok(Some(FrameRef {
        frame_type,
        flags,
        start,
        end: start + length as usize,
    }))
}

/// Check every frame header in `buffer`; return the end of the last complete
/// frame. As the reference's parser does, a buffer is split into frames (and
/// every frame header checked) before any of its frames is handled.
/// At most `max_frames` frames are read (their headers checked); the rest
/// is left for later, its headers not yet read. Returns (end, frames read).
pub(crate) fn scan(
    buffer: &[u8],
    mut offset: usize,
    max_frame_size: u64,
    max_frames: usize,
) -> Result<(usize, usize), ProtocolError> {
    let mut count = 0;
    while offset < buffer.len() && count < max_frames {
        match next_frame(buffer, offset, max_frame_size)? {
            Some(frame) => {
                offset = frame.end;
                count += 1;
            }
            None => break,
        }
    }
    Ok((offset, count))
}
