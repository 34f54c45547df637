//! Typed header fields (spec section 9.8): binary forms for canonical hex ids
//! and decimal millisecond timestamps, in a section after the header block.

use crate::errors::{perr, ErrorCode, ProtocolError};
use crate::headers::{HeaderList, Headers};
use crate::varint::{decode_varint_complete, encode_varint, MAX_VARINT};

pub const KEY_TRACE_ID: u64 = 1;
pub const KEY_TS: u64 = 2;
pub const KEY_SERVER_TIME: u64 = 3;
pub const KEY_SIGN: u64 = 4;
pub const KEY_TRACE_ID_ECHO: u64 = 5;
pub const KEY_REQUEST_ID: u64 = 6;

pub const TRACE_ID: &str = "trace-id";
pub const MAX_HEX_BYTES: usize = 64;
const MAX_TIME: i64 = 10_000_000_000_000_000;

fn hex_key(name: &str) -> Option<u64> {
    match name {
        "trace-id" => Some(KEY_TRACE_ID),
        "sign" => Some(KEY_SIGN),
        "request-id" => Some(KEY_REQUEST_ID),
        _ => None,
    }
}

fn time_key(name: &str) -> Option<u64> {
    match name {
        "ts" => Some(KEY_TS),
        "server-time" => Some(KEY_SERVER_TIME),
        _ => None,
    }
}

fn canonical_hex(value: &str) -> bool {
    let len = value.len();
    len > 0
        && len <= 2 * MAX_HEX_BYTES
        && len % 2 == 0
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The value of a canonical TIME field (digits, no leading zero, < 10^16).
fn canonical_time(value: &str) -> Option<i64> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 16 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    let parsed: i64 = value.parse().ok()?;
    (parsed < MAX_TIME).then_some(parsed)
}

#[cfg(test)]
fn zigzag(value: i64) -> u64 {
    if value >= 0 {
        (value as u64) << 1
    } else {
        ((-(value as i128)) * 2 - 1) as u64
    }
}

fn unzigzag(value: u64) -> i64 {
    if value % 2 == 0 {
        (value / 2) as i64
    } else {
        -(value.div_ceil(2) as i64)
    }
}

/// How one outgoing field travels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Typed {
    /// Through HPACK.
    No,
    Hex(u64),
    Time(u64, i64),
    Echo,
}

/// The typed form of a field, if it has one (the reference's `split_typed`).
#[inline]
pub(crate) fn classify(name: &str, value: &str, echo_trace_id: Option<&str>) -> Typed {
    if let Some(key) = hex_key(name) {
        if canonical_hex(value) {
            if key == KEY_TRACE_ID && Some(value) == echo_trace_id {
                return Typed::Echo;
            }
            return Typed::Hex(key);
        }
    }
    if let Some(key) = time_key(name) {
        if let Some(time) = canonical_time(value) {
            return Typed::Time(key, time);
        }
    }
    Typed::No
}

/// A TIME delta that does not fit a varint (an epoch absurdly far from the
/// value): the reference fails with a `ValueError` here.
pub(crate) fn time_fits(time: i64, epoch_ms: u64) -> bool {
    zigzag_delta(time, epoch_ms) <= MAX_VARINT as u128
}

fn zigzag_delta(time: i64, epoch_ms: u64) -> u128 {
    let delta = time as i128 - epoch_ms as i128;
    if delta >= 0 {
        (delta as u128) << 1
    } else {
        ((-delta) as u128) * 2 - 1
    }
}

/// Append the typed section's entries for the fields that have a typed form.
pub(crate) fn encode_typed<H: HeaderList + ?Sized>(
    out: &mut Vec<u8>,
    headers: &H,
    epoch_ms: u64,
    echo_trace_id: Option<&str>,
) {
    for i in 0..headers.field_count() {
        let (name, value) = headers.field(i);
        match classify(name, value, echo_trace_id) {
            Typed::No => {}
            Typed::Echo => encode_varint(out, KEY_TRACE_ID_ECHO),
            Typed::Hex(key) => {
                encode_varint(out, key);
                encode_varint(out, (value.len() / 2) as u64);
                out.extend(
                    value
                        .as_bytes()
                        .chunks(2)
                        .map(|pair| (hex_digit(pair[0]) << 4) | hex_digit(pair[1])),
                );
            }
            Typed::Time(key, time) => {
                encode_varint(out, key);
                encode_varint(out, zigzag_delta(time, epoch_ms) as u64);
            }
        }
    }
}

fn hex_digit(c: u8) -> u8 {
    if c.is_ascii_digit() {
        c - b'0'
    } else {
        c - b'a' + 10
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Decode a typed section, appending its fields to `out`. Decoded fields count
/// against `budget` (what `max_header_list_size` leaves after the HPACK
/// fields) with RFC 7541 sizes: a one-byte ECHO counts a whole trace-id.
pub(crate) fn decode_typed(
    section: &[u8],
    epoch_ms: u64,
    echo_trace_id: Option<&str>,
    budget: i128,
    out: &mut Headers,
) -> Result<(), ProtocolError> {
    let mut offset = 0;
    let mut list_size: i128 = 0;
    let mut value = String::new();
    while offset < section.len() {
        let (key, next) = decode_varint_complete(section, offset)?;
        offset = next;
        let name;
        value.clear();
        match key {
            KEY_TRACE_ID | KEY_SIGN | KEY_REQUEST_ID => {
                let (length, next) = decode_varint_complete(section, offset)?;
                offset = next;
                if !(1..=MAX_HEX_BYTES as u64).contains(&length)
                    || offset + length as usize > section.len()
                {
                    return Err(ProtocolError::new(
                        ErrorCode::FieldError,
                        format!("typed field {key} length {length}"),
                    ));
                }
                for &byte in &section[offset..offset + length as usize] {
                    value.push(HEX[(byte >> 4) as usize] as char);
                    value.push(HEX[(byte & 15) as usize] as char);
                }
                offset += length as usize;
                name = match key {
                    KEY_TRACE_ID => TRACE_ID,
                    KEY_SIGN => "sign",
                    _ => "request-id",
                };
            }
            KEY_TS | KEY_SERVER_TIME => {
                let (delta, next) = decode_varint_complete(section, offset)?;
                offset = next;
                let time = epoch_ms as i64 + unzigzag(delta);
                if !(0..MAX_TIME).contains(&time) {
                    return Err(ProtocolError::new(
                        ErrorCode::FieldError,
                        format!("typed time {time} out of range"),
                    ));
                }
                use std::fmt::Write;
                let _ = write!(value, "{time}");
                name = if key == KEY_TS { "ts" } else { "server-time" };
            }
            KEY_TRACE_ID_ECHO => {
                let Some(trace_id) = echo_trace_id else {
                    return perr(
                        ErrorCode::FieldError,
                        "trace-id echo with no trace-id on the request",
                    );
                };
                value.push_str(trace_id);
                name = TRACE_ID;
            }
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::FieldError,
                    format!("unknown typed field key {key}"),
                ))
            }
        }
        out.push(name, &value);
        list_size += (name.len() + value.len() + 32) as i128;
        if list_size > budget {
            return Err(ProtocolError::new(
                ErrorCode::HeaderListTooLarge,
                format!("typed fields exceed max_header_list_size {}", budget.max(0)),
            ));
        }
    }
    Ok(())
}

/// The first `trace-id` of a header list.
pub(crate) fn trace_id_of<H: HeaderList + ?Sized>(headers: &H) -> Option<&str> {
    (0..headers.field_count())
        .map(|i| headers.field(i))
        .find(|(n, _)| *n == TRACE_ID)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trip() {
        for v in [0i64, 1, -1, 123, -370, 1 << 40, -(1 << 40)] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(123), 246);
        assert_eq!(zigzag(-370), 739);
    }

    #[test]
    fn canonical_forms() {
        assert!(canonical_hex("3da95cd2167b75dfb948f82a8317cba0"));
        assert!(!canonical_hex("3DA9"));
        assert!(!canonical_hex("abc"));
        assert_eq!(canonical_time("0"), Some(0));
        assert_eq!(canonical_time("01"), None);
        assert_eq!(
            canonical_time("9999999999999999"),
            Some(9_999_999_999_999_999)
        );
        assert_eq!(canonical_time("10000000000000000"), None);
        assert_eq!(canonical_time("١٢"), None);
    }
}
