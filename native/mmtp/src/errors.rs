//! Error codes (spec section 14) and the two error families.
//!
//! [`ProtocolError`]: the peer broke the protocol; the connection has queued an
//! ERROR frame on stream 0 and is closed. [`LocalError`]: our own caller asked
//! for something the protocol forbids; nothing was sent.

use std::borrow::Cow;
use std::fmt;

/// Every code a peer can send (spec section 14.2). Values are wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    NoError = 0,
    ProtocolError = 1,
    FrameSizeError = 2,
    UnknownFrameType = 3,
    VarintError = 4,
    FieldError = 5,
    StateError = 6,
    StreamIdError = 7,
    HeaderError = 8,
    HeaderListTooLarge = 9,
    TableSizeError = 10,
    UnknownPreset = 11,
    CompressionError = 12,
    BodyTooLarge = 13,
    UnknownDictionary = 14,
    DictionaryError = 15,
    UnsupportedVersion = 16,
    AuthRequired = 17,
    AuthInvalid = 18,
    AuthExpired = 19,
    TicketInvalid = 20,
    HandshakeTimeout = 21,
    RefusedStream = 22,
    RateLimited = 23,
    SlowConsumer = 24,
    IdleTimeout = 25,
    Cancelled = 26,
    NotFound = 27,
    BadRequest = 28,
    Forbidden = 29,
    Timeout = 30,
    Unavailable = 31,
    UpstreamError = 32,
    InternalError = 33,
    ShuttingDown = 34,
    Kicked = 35,
    SessionReplaced = 36,
}

const NAMES: [&str; 37] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "FRAME_SIZE_ERROR",
    "UNKNOWN_FRAME_TYPE",
    "VARINT_ERROR",
    "FIELD_ERROR",
    "STATE_ERROR",
    "STREAM_ID_ERROR",
    "HEADER_ERROR",
    "HEADER_LIST_TOO_LARGE",
    "TABLE_SIZE_ERROR",
    "UNKNOWN_PRESET",
    "COMPRESSION_ERROR",
    "BODY_TOO_LARGE",
    "UNKNOWN_DICTIONARY",
    "DICTIONARY_ERROR",
    "UNSUPPORTED_VERSION",
    "AUTH_REQUIRED",
    "AUTH_INVALID",
    "AUTH_EXPIRED",
    "TICKET_INVALID",
    "HANDSHAKE_TIMEOUT",
    "REFUSED_STREAM",
    "RATE_LIMITED",
    "SLOW_CONSUMER",
    "IDLE_TIMEOUT",
    "CANCELLED",
    "NOT_FOUND",
    "BAD_REQUEST",
    "FORBIDDEN",
    "TIMEOUT",
    "UNAVAILABLE",
    "UPSTREAM_ERROR",
    "INTERNAL_ERROR",
    "SHUTTING_DOWN",
    "KICKED",
    "SESSION_REPLACED",
];

const ALL: [ErrorCode; 37] = {
    use ErrorCode::*;
    [
        NoError,
        ProtocolError,
        FrameSizeError,
        UnknownFrameType,
        VarintError,
        FieldError,
        StateError,
        StreamIdError,
        HeaderError,
        HeaderListTooLarge,
        TableSizeError,
        UnknownPreset,
        CompressionError,
        BodyTooLarge,
        UnknownDictionary,
        DictionaryError,
        UnsupportedVersion,
        AuthRequired,
        AuthInvalid,
        AuthExpired,
        TicketInvalid,
        HandshakeTimeout,
        RefusedStream,
        RateLimited,
        SlowConsumer,
        IdleTimeout,
        Cancelled,
        NotFound,
        BadRequest,
        Forbidden,
        Timeout,
        Unavailable,
        UpstreamError,
        InternalError,
        ShuttingDown,
        Kicked,
        SessionReplaced,
    ]
};

impl ErrorCode {
    /// The wire value.
    pub fn value(self) -> u64 {
        self as u64
    }

    /// The code with this wire value, if it is one this version knows.
    pub fn from_value(value: u64) -> Option<ErrorCode> {
        usize::try_from(value)
            .ok()
            .and_then(|i| ALL.get(i).copied())
    }

    /// The spec's name, e.g. `FIELD_ERROR`.
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    /// The code with this spec name (`"FIELD_ERROR"`).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        NAMES.iter().position(|n| *n == name).map(|i| ALL[i])
    }
}

/// Name of a code for logs; unknown codes (from newer peers) stay numeric.
pub fn code_name(code: u64) -> Cow<'static, str> {
    match ErrorCode::from_value(code) {
        Some(known) => Cow::Borrowed(known.name()),
        None => Cow::Owned(format!("CODE_{code}")),
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The peer broke the protocol or a limit; `code` says how.
///
/// Returned by the receive path only; the connection that returned it has
/// already queued the ERROR frame (stream 0, this code and message) and is
/// closed: write out what it queued, then close the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// Shorthand used by the decoders.
pub(crate) fn perr<T>(
    code: ErrorCode,
    message: impl Into<Cow<'static, str>>,
) -> Result<T, ProtocolError> {
    Err(ProtocolError::new(code, message))
}

/// Our own caller asked for something the protocol forbids; nothing was sent
/// and the connection's state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalError {
    /// Wrong role or state, or an argument the protocol does not allow
    /// (the reference's `LocalProtocolError`).
    Forbidden(Cow<'static, str>),
    /// The peer's `max_concurrent_streams` is reached; wait for a stream to end.
    StreamsExhausted { limit: u64 },
    /// The message would exceed the peer's frame, body or header list limit.
    MessageTooLarge(String),
}

impl LocalError {
    pub(crate) fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        LocalError::Forbidden(message.into())
    }
}

impl fmt::Display for LocalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalError::Forbidden(message) => f.write_str(message),
            LocalError::StreamsExhausted { limit } => {
                write!(f, "peer allows {limit} concurrent streams")
            }
            LocalError::MessageTooLarge(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for LocalError {}
