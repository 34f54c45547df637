//! Events a [`Connection`](crate::Connection) reports from received bytes
//! (mirroring the reference's `channel/wire/events.py`).

use crate::dictionaries::Dictionary;
use crate::headers::Headers;
use crate::hello::{Hello, HelloAck};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Server side: the device introduced itself; call `accept` or `reject`.
    HelloReceived(Box<Hello>),
    /// Client side: the server accepted the HELLO; the connection is open.
    HelloAccepted(Box<HelloAck>),
    RequestReceived {
        stream_id: u64,
        op: String,
        headers: Headers,
        body: Vec<u8>,
    },
    ResponseReceived {
        stream_id: u64,
        status: u64,
        headers: Headers,
        body: Vec<u8>,
    },
    PushReceived {
        delivery_id: u64,
        message_id: Vec<u8>,
        headers: Headers,
        body: Vec<u8>,
    },
    /// Server side: the device acknowledged these deliveries (unknown ids dropped).
    AckReceived {
        delivery_ids: Vec<u64>,
    },
    /// A PONG with the same payload has already been queued.
    PingReceived {
        payload: Vec<u8>,
    },
    PongReceived {
        payload: Vec<u8>,
    },
    /// The peer changed settings (already applied; the ACK is queued).
    SettingsReceived {
        settings: Vec<(u64, u64)>,
    },
    SettingsAcknowledged,
    /// The peer is draining: start no new streams; in-flight ones still complete.
    GoAwayReceived {
        code: u64,
        reconnect_after_ms: u64,
        alternate_endpoint: String,
        message: String,
    },
    /// A stream we started ended with an error instead of a RESPONSE.
    StreamErrorReceived {
        stream_id: u64,
        code: u64,
        retry_after_ms: u64,
        message: String,
    },
    /// The peer ended the connection with an error (ERROR on stream 0).
    ConnectionErrorReceived {
        code: u64,
        retry_after_ms: u64,
        message: String,
    },
    /// The peer cancelled a stream it started; the ERROR(CANCELLED) is queued.
    StreamCancelled {
        stream_id: u64,
    },
    /// Client side: the server delivered a dictionary (now usable on this connection).
    DictionaryReceived(Dictionary),
}

impl Event {
    /// The reference's class name of this event (`"RequestReceived"`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::HelloReceived(_) => "HelloReceived",
            Event::HelloAccepted(_) => "HelloAccepted",
            Event::RequestReceived { .. } => "RequestReceived",
            Event::ResponseReceived { .. } => "ResponseReceived",
            Event::PushReceived { .. } => "PushReceived",
            Event::AckReceived { .. } => "AckReceived",
            Event::PingReceived { .. } => "PingReceived",
            Event::PongReceived { .. } => "PongReceived",
            Event::SettingsReceived { .. } => "SettingsReceived",
            Event::SettingsAcknowledged => "SettingsAcknowledged",
            Event::GoAwayReceived { .. } => "GoAwayReceived",
            Event::StreamErrorReceived { .. } => "StreamErrorReceived",
            Event::ConnectionErrorReceived { .. } => "ConnectionErrorReceived",
            Event::StreamCancelled { .. } => "StreamCancelled",
            Event::DictionaryReceived(_) => "DictionaryReceived",
        }
    }
}
