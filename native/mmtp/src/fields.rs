//! Tagged fields (spec section 7.1), the extensible encoding of HELLO and
//! HELLO_ACK: `varint key = number << 1 | kind`, then a varint (kind 0) or a
//! length-prefixed byte string (kind 1). Unknown numbers are skipped.

use crate::errors::{ErrorCode, ProtocolError};
use crate::varint::{decode_varint_complete, encode_varint};

pub const KIND_VARINT: u64 = 0;
pub const KIND_BYTES: u64 = 1;

/// One field's value, borrowed from the payload.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FieldValue<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// How a frame's known fields look: `(kind, most occurrences)` by field number.
pub(crate) type FieldSpecs = fn(u64) -> Option<(u64, usize)>;

/// Walk a field list, handing every known field to `visit` in order.
///
/// Errors as the reference's `decode_fields`: a known field of the wrong kind
/// a non-repeated field given twice or a repeated one more often than allowed
/// is a `FIELD_ERROR`, as is a length past the payload; `max_unknown` fields of
/// unknown number are skipped, one more is a `FIELD_ERROR`.
pub(crate) fn decode_fields<'a>(
    payload: &'a [u8],
    frame_name: &str,
    specs: FieldSpecs,
    max_unknown: u64,
    mut visit: impl FnMut(u64, FieldValue<'a>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let mut offset = 0;
    let mut seen = [0usize; 64]; // occurrences by (known, so small) number
    let mut unknown = 0u64;
    while offset < payload.len() {
        let (key, next) = decode_varint_complete(payload, offset)?;
        offset = next;
        let (number, kind) = (key >> 1, key & 1);
        let value = if kind == KIND_VARINT {
            let (value, next) = decode_varint_complete(payload, offset)?;
            offset = next;
            FieldValue::Int(value)
        } else {
            let (length, next) = decode_varint_complete(payload, offset)?;
            offset = next;
            if length > (payload.len() - offset) as u64 {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("{frame_name} field {number} runs past the frame"),
                ));
            }
            let end = offset + length as usize;
            let bytes = &payload[offset..end];
            offset = end;
            FieldValue::Bytes(bytes)
        };
        let Some((spec_kind, most)) = specs(number) else {
            unknown += 1;
            if unknown > max_unknown {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("{frame_name} has more than {max_unknown} fields of unknown numbers"),
                ));
            }
            continue;
        };
        if spec_kind != kind {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("{frame_name} field {number} has the wrong kind"),
            ));
        }
        let count = &mut seen[number as usize % 64];
        if *count >= 1 && most == 1 {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("{frame_name} field {number} appears twice"),
            ));
        }
        if *count >= most {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("{frame_name} field {number} appears more than {most} times"),
            ));
        }
        *count += 1;
        visit(number, value)?;
    }
    Ok(())
}

pub(crate) fn put_int(out: &mut Vec<u8>, number: u64, value: u64) {
    encode_varint(out, number << 1 | KIND_VARINT);
    encode_varint(out, value);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, number: u64, value: &[u8]) {
    encode_varint(out, number << 1 | KIND_BYTES);
    encode_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}
