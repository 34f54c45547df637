//! Unsigned LEB128 varints (spec section 2.2), the only integer encoding MMTP
//! uses outside HPACK: minimal, at most 8 bytes, so values up to 2^56 - 1.

use crate::errors::{perr, ErrorCode, ProtocolError};

pub const MAX_VARINT_BYTES: usize = 8;
pub const MAX_VARINT: u64 = (1 << (7 * MAX_VARINT_BYTES)) - 1;

/// Append the minimal encoding of `value`; values above [`MAX_VARINT`] must be
/// refused by the caller first (every public entry point does).
#[inline]
pub fn encode_varint(out: &mut Vec<u8>, mut value: u64) {
    debug_assert!(value <= MAX_VARINT);
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `encode_varint(value)` takes.
#[inline]
pub fn varint_size(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Why a varint could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum VarintError {
    /// The buffer ends inside the varint: wait for more bytes.
    NeedMoreData,
    /// Overlong or non-minimal: a `VARINT_ERROR`.
    Invalid(ProtocolError),
}

/// Decode one varint at `offset`; `(value, offset after it)`.
#[inline]
pub fn decode_varint(data: &[u8], offset: usize) -> Result<(u64, usize), VarintError> {
    if let Some(&first) = data.get(offset) {
        if first < 0x80 {
            return Ok((first as u64, offset + 1));
        }
    }
    let mut value = 0u64;
    let mut position = offset;
    loop {
        let Some(&byte) = data.get(position) else {
            if position - offset >= MAX_VARINT_BYTES {
                break;
            }
            return Err(VarintError::NeedMoreData);
        };
        value |= ((byte & 0x7f) as u64) << (7 * (position - offset));
        position += 1;
        if byte < 0x80 {
            if byte == 0 && position - offset > 1 {
                return Err(VarintError::Invalid(ProtocolError::new(
                    ErrorCode::VarintError,
                    "non-minimal varint encoding",
                )));
            }
            return Ok((value, position));
        }
        if position - offset >= MAX_VARINT_BYTES {
            break;
        }
    }
    Err(VarintError::Invalid(ProtocolError::new(
        ErrorCode::VarintError,
        "varint longer than 8 bytes",
    )))
}

/// Like [`decode_varint`] for data known to be complete (a frame payload): a
/// varint cut short is a `FIELD_ERROR`.
#[inline]
pub fn decode_varint_complete(data: &[u8], offset: usize) -> Result<(u64, usize), ProtocolError> {
    match decode_varint(data, offset) {
        Ok(found) => Ok(found),
        Err(VarintError::Invalid(error)) => Err(error),
        Err(VarintError::NeedMoreData) => {
            perr(ErrorCode::FieldError, "payload ends inside a varint")
        }
    }
}
