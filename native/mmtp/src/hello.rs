//! HELLO and HELLO_ACK (spec sections 6.1, 6.2, 7.2, 7.3).

use crate::errors::{perr, ErrorCode, ProtocolError};
use crate::fields::{decode_fields, put_bytes, put_int, FieldValue, KIND_BYTES, KIND_VARINT};
use crate::limits::{
    Limits, INITIAL_HEADER_TABLE_SIZE, MAX_HELLO_DICTIONARIES, MAX_UNKNOWN_FIELDS,
    MIN_MAX_FRAME_SIZE, MIN_MAX_HEADER_LIST_SIZE,
};

pub const PROTOCOL_VERSION: u64 = 1;
pub const ALPN_PROTOCOL: &str = "mmtp/1";

const DEFAULT_MAX_FRAME_SIZE: u64 = 256 * 1024;
const DEFAULT_MAX_HEADER_LIST_SIZE: u64 = 16 * 1024;
const DEFAULT_MAX_BODY_SIZE: u64 = 1024 * 1024;
const DEFAULT_MAX_CONCURRENT_STREAMS: u64 = 64;
const DEFAULT_MAX_CONNECTION_HEADER_LIST_SIZE: u64 = 2048;

/// What a device says about itself in its first frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub device_id: String,
    pub app_id: String,
    pub token: Vec<u8>,
    pub resume_ticket: Vec<u8>,
    pub dictionaries: Vec<u64>,
    pub preset_id: u64,
    pub heartbeat_s: u64,
    pub header_table_size: u64,
    pub max_frame_size: u64,
    pub app_version: String,
    pub platform: String,
    /// The client's clock at HELLO: the epoch of typed timestamps it sends.
    pub client_time_ms: u64,
    pub max_header_list_size: u64,
    pub max_body_size: u64,
    pub max_concurrent_streams: u64,
    pub version: u64,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            device_id: String::new(),
            app_id: String::new(),
            token: Vec::new(),
            resume_ticket: Vec::new(),
            dictionaries: Vec::new(),
            preset_id: 0,
            heartbeat_s: 0,
            header_table_size: INITIAL_HEADER_TABLE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            app_version: String::new(),
            platform: String::new(),
            client_time_ms: 0,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            version: PROTOCOL_VERSION,
        }
    }
}

/// The server's answer: the session, the ticket to resume it, and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck {
    pub session_id: Vec<u8>,
    pub resume_ticket: Vec<u8>,
    pub heartbeat_s: u64,
    pub preset_id: u64,
    pub newest_dictionary: u64,
    pub header_table_size: u64,
    pub max_frame_size: u64,
    pub max_concurrent_streams: u64,
    pub max_header_list_size: u64,
    pub max_body_size: u64,
    pub server_time_ms: u64,
    pub resumed: bool,
    /// Largest connection header list the server holds for the client (spec 9.11).
    pub max_connection_header_list_size: u64,
    pub version: u64,
}

impl Default for HelloAck {
    fn default() -> Self {
        HelloAck {
            session_id: Vec::new(),
            resume_ticket: Vec::new(),
            heartbeat_s: 0,
            preset_id: 0,
            newest_dictionary: 0,
            header_table_size: INITIAL_HEADER_TABLE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            server_time_ms: 0,
            resumed: false,
            max_connection_header_list_size: DEFAULT_MAX_CONNECTION_HEADER_LIST_SIZE,
            version: PROTOCOL_VERSION,
        }
    }
}

/// HELLO payload; fields equal to their default are left out (except
/// `version`), in field-number order.
pub fn encode_hello(out: &mut Vec<u8>, hello: &Hello) {
    let d = Hello::default();
    put_int(out, 1, hello.version);
    if !hello.device_id.is_empty() {
        put_bytes(out, 2, hello.device_id.as_bytes());
    }
    if !hello.app_id.is_empty() {
        put_bytes(out, 3, hello.app_id.as_bytes());
    }
    if !hello.token.is_empty() {
        put_bytes(out, 4, &hello.token);
    }
    if !hello.resume_ticket.is_empty() {
        put_bytes(out, 5, &hello.resume_ticket);
    }
    for &dict_id in &hello.dictionaries {
        put_int(out, 6, dict_id);
    }
    let ints_a = [
        (7, hello.preset_id, d.preset_id),
        (8, hello.heartbeat_s, d.heartbeat_s),
        (9, hello.header_table_size, d.header_table_size),
        (10, hello.max_frame_size, d.max_frame_size),
    ];
    for (number, value, default) in ints_a {
        if value != default {
            put_int(out, number, value);
        }
    }
    if !hello.app_version.is_empty() {
        put_bytes(out, 11, hello.app_version.as_bytes());
    }
    if !hello.platform.is_empty() {
        put_bytes(out, 12, hello.platform.as_bytes());
    }
    let ints_b = [
        (13, hello.client_time_ms, d.client_time_ms),
        (14, hello.max_header_list_size, d.max_header_list_size),
        (15, hello.max_body_size, d.max_body_size),
        (16, hello.max_concurrent_streams, d.max_concurrent_streams),
    ];
    for (number, value, default) in ints_b {
        if value != default {
            put_int(out, number, value);
        }
    }
}

fn hello_specs(number: u64) -> Option<(u64, usize)> {
    match number {
        2..=5 | 11 | 12 => Some((KIND_BYTES, 1)),
        6 => Some((KIND_VARINT, MAX_HELLO_DICTIONARIES)),
        1 | 7..=10 | 13..=16 => Some((KIND_VARINT, 1)),
        _ => None,
    }
}

fn ack_specs(number: u64) -> Option<(u64, usize)> {
    match number {
        2 | 3 => Some((KIND_BYTES, 1)),
        1 | 4..=14 => Some((KIND_VARINT, 1)),
        _ => None,
    }
}

fn int(value: FieldValue<'_>) -> u64 {
    match value {
        FieldValue::Int(v) => v,
        FieldValue::Bytes(_) => 0, // kinds are checked before
    }
}

fn bytes(value: FieldValue<'_>) -> &[u8] {
    match value {
        FieldValue::Bytes(b) => b,
        FieldValue::Int(_) => &[],
    }
}

fn text(raw: &[u8], frame_name: &str, field: &str) -> Result<String, ProtocolError> {
    match std::str::from_utf8(raw) {
        Ok(text) => Ok(text.to_owned()),
        Err(_) => Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!("{frame_name} field {field} is not valid UTF-8"),
        )),
    }
}

/// Decode and validate a HELLO against our own identity and credential limits.
pub fn decode_hello(payload: &[u8], limits: &Limits) -> Result<Hello, ProtocolError> {
    let mut raw: [&[u8]; 6] = [&[]; 6]; // device_id, app_id, token, ticket, app_version, platform
    let mut hello = Hello {
        version: 0,
        ..Hello::default()
    };
    decode_fields(
        payload,
        "HELLO",
        hello_specs,
        MAX_UNKNOWN_FIELDS,
        |number, value| {
            match number {
                1 => hello.version = int(value),
                2 => raw[0] = bytes(value),
                3 => raw[1] = bytes(value),
                4 => raw[2] = bytes(value),
                5 => raw[3] = bytes(value),
                6 => hello.dictionaries.push(int(value)),
                7 => hello.preset_id = int(value),
                8 => hello.heartbeat_s = int(value),
                9 => hello.header_table_size = int(value),
                10 => hello.max_frame_size = int(value),
                11 => raw[4] = bytes(value),
                12 => raw[5] = bytes(value),
                13 => hello.client_time_ms = int(value),
                14 => hello.max_header_list_size = int(value),
                15 => hello.max_body_size = int(value),
                _ => hello.max_concurrent_streams = int(value),
            }
            Ok(())
        },
    )?;
    if hello.version != PROTOCOL_VERSION {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "HELLO asks for version {}; this peer speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    let identity = [
        ("device_id", 0),
        ("app_id", 1),
        ("app_version", 4),
        ("platform", 5),
    ];
    for (name, i) in identity {
        if raw[i].len() as u64 > limits.max_identity_length {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!(
                    "HELLO field {name} exceeds max_identity_length {}",
                    limits.max_identity_length
                ),
            ));
        }
    }
    for (name, i) in [("token", 2), ("resume_ticket", 3)] {
        if raw[i].len() as u64 > limits.max_credential_length {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!(
                    "HELLO field {name} exceeds max_credential_length {}",
                    limits.max_credential_length
                ),
            ));
        }
    }
    hello.device_id = text(raw[0], "HELLO", "device_id")?;
    // Spec 7.2: only a HELLO with a token and no resume ticket may leave the device id
    // (and app id) to its credential; a ticket is bound to the device id it names.
    if hello.device_id.is_empty() && (raw[2].is_empty() || !raw[3].is_empty()) {
        return perr(
            ErrorCode::FieldError,
            "HELLO field device_id is missing or empty (only a HELLO with a token and no \
             resume_ticket may leave it to the token)",
        );
    }
    hello.app_id = text(raw[1], "HELLO", "app_id")?;
    hello.token = raw[2].to_vec();
    hello.resume_ticket = raw[3].to_vec();
    hello.app_version = text(raw[4], "HELLO", "app_version")?;
    hello.platform = text(raw[5], "HELLO", "platform")?;
    if hello.max_concurrent_streams < 1 {
        return perr(
            ErrorCode::FieldError,
            "HELLO max_concurrent_streams must be >= 1",
        );
    }
    check_header_list_size("HELLO", hello.max_header_list_size)?;
    check_announced_sizes("HELLO", hello.header_table_size, hello.max_frame_size)?;
    Ok(hello)
}

pub fn encode_hello_ack(out: &mut Vec<u8>, ack: &HelloAck) {
    let d = HelloAck::default();
    put_int(out, 1, ack.version);
    if !ack.session_id.is_empty() {
        put_bytes(out, 2, &ack.session_id);
    }
    if !ack.resume_ticket.is_empty() {
        put_bytes(out, 3, &ack.resume_ticket);
    }
    let ints = [
        (4, ack.heartbeat_s, d.heartbeat_s),
        (5, ack.preset_id, d.preset_id),
        (6, ack.newest_dictionary, d.newest_dictionary),
        (7, ack.header_table_size, d.header_table_size),
        (8, ack.max_frame_size, d.max_frame_size),
        (9, ack.max_concurrent_streams, d.max_concurrent_streams),
        (10, ack.max_header_list_size, d.max_header_list_size),
        (11, ack.max_body_size, d.max_body_size),
        (12, ack.server_time_ms, d.server_time_ms),
    ];
    for (number, value, default) in ints {
        if value != default {
            put_int(out, number, value);
        }
    }
    if ack.resumed {
        put_int(out, 13, 1);
    }
    if ack.max_connection_header_list_size != d.max_connection_header_list_size {
        put_int(out, 14, ack.max_connection_header_list_size);
    }
}

pub fn decode_hello_ack(payload: &[u8]) -> Result<HelloAck, ProtocolError> {
    let mut ack = HelloAck {
        version: 0,
        ..HelloAck::default()
    };
    decode_fields(
        payload,
        "HELLO_ACK",
        ack_specs,
        u64::MAX,
        |number, value| {
            match number {
                1 => ack.version = int(value),
                2 => ack.session_id = bytes(value).to_vec(),
                3 => ack.resume_ticket = bytes(value).to_vec(),
                4 => ack.heartbeat_s = int(value),
                5 => ack.preset_id = int(value),
                6 => ack.newest_dictionary = int(value),
                7 => ack.header_table_size = int(value),
                8 => ack.max_frame_size = int(value),
                9 => ack.max_concurrent_streams = int(value),
                10 => ack.max_header_list_size = int(value),
                11 => ack.max_body_size = int(value),
                12 => ack.server_time_ms = int(value),
                13 => ack.resumed = int(value) != 0,
                _ => ack.max_connection_header_list_size = int(value),
            }
            Ok(())
        },
    )?;
    if ack.version != PROTOCOL_VERSION {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "HELLO_ACK chose version {}; this peer speaks {PROTOCOL_VERSION}",
                ack.version
            ),
        ));
    }
    check_announced_sizes("HELLO_ACK", ack.header_table_size, ack.max_frame_size)?;
    if ack.max_concurrent_streams < 1 {
        return perr(
            ErrorCode::FieldError,
            "HELLO_ACK max_concurrent_streams must be >= 1",
        );
    }
    check_header_list_size("HELLO_ACK", ack.max_header_list_size)?;
    Ok(ack)
}

fn check_announced_sizes(
    frame_name: &str,
    header_table_size: u64,
    max_frame_size: u64,
) -> Result<(), ProtocolError> {
    if header_table_size < INITIAL_HEADER_TABLE_SIZE {
        return Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!(
                "{frame_name} header_table_size {header_table_size} is below the initial {INITIAL_HEADER_TABLE_SIZE}"
            ),
        ));
    }
    if max_frame_size < MIN_MAX_FRAME_SIZE {
        return Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!("{frame_name} max_frame_size {max_frame_size} is below 1024"),
        ));
    }
    Ok(())
}

fn check_header_list_size(frame_name: &str, value: u64) -> Result<(), ProtocolError> {
    if value < MIN_MAX_HEADER_LIST_SIZE {
        return Err(ProtocolError::new(
            ErrorCode::FieldError,
            format!("{frame_name} max_header_list_size {value} is below 256"),
        ));
    }
    Ok(())
}
