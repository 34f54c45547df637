//! What crosses between the engine thread and Python, as Rust values: events up,
//! commands down (`BOUNDARY.md` is the contract; `py.rs` converts to and from
//! Python objects while holding the GIL, the engine thread never does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use mmtp::{Headers, Hello, PreparedPush};

use crate::ids::ConnId;

/// A message id shared by every connection a fan-out reached (and its ACK counts).
pub type MessageId = Arc<[u8]>;

/// Engine -> Python.
#[derive(Debug)]
pub enum Event {
    Hello {
        conn: ConnId,
        peer_ip: IpAddr,
        hello: Box<Hello>,
        client_cert_cn: Option<String>,
        tcp_fast_open: bool,
    },
    Request {
        conn: ConnId,
        stream_id: u64,
        op: String,
        headers: Headers,
        body: Vec<u8>,
        /// It came as TLS early data (may be a replay: serve only idempotent ops).
        early: bool,
    },
    /// The device's answer to a backend -> device CALL (or UNAVAILABLE if it went away).
    Answer {
        conn: ConnId,
        call_token: u64,
        status: u64,
        headers: Headers,
        body: Vec<u8>,
        retry_after_ms: u64,
        message: String,
    },
    /// Tracked pushes the device acknowledged.
    Acks {
        conn: ConnId,
        message_ids: Vec<MessageId>,
    },
    Cancel {
        conn: ConnId,
        stream_id: u64,
    },
    GoAway {
        conn: ConnId,
    },
    Closed {
        conn: ConnId,
        reason: u64,
    },
    MqttOpen {
        conn: ConnId,
        peer_ip: IpAddr,
        client_cert_cn: Option<String>,
        tls: bool,
    },
    MqttPackets {
        conn: ConnId,
        packets: Vec<Vec<u8>>,
    },
    /// What an accepted MQTT connection sent in one read, when it was bare PUBACKs
    /// only (`mqtt::bare_puback_id`): their packet ids, in order.
    MqttPubacks {
        conn: ConnId,
        packet_ids: Vec<u16>,
    },
    /// Pushes held by the engine (`MqttPush`) the box acknowledged, tracked ones
    /// (untracked ones are counted with the fan-out ACKs).
    MqttAcks {
        conn: ConnId,
        message_ids: Vec<MessageId>,
    },
    PushFailed {
        conn: ConnId,
        message_id: MessageId,
        reason: String,
    },
    FanoutDone {
        message_id: MessageId,
        written: u64,
        skipped: u64,
    },
    /// A single-use TLS ticket was issued (early data on): store `state` (sealed
    /// under the ticket key ring) under `ticket_id` for the ticket's lifetime.
    TlsTicket {
        ticket_id: Vec<u8>,
        state: Vec<u8>,
    },
    /// A device presents a single-use ticket: take it from the store (once) and answer
    /// with the `TlsResume` command; its handshake waits until then.
    TlsResume {
        conn: ConnId,
        ticket_id: Vec<u8>,
    },
}

impl Event {
    /// Roughly what the event costs in memory, for the event queue's bound.
    pub fn size_hint(&self) -> usize {
        64 + match self {
            Event::Hello { hello, .. } => {
                hello.token.len() + hello.resume_ticket.len() + hello.device_id.len() + 128
            }
            Event::Request {
                headers, body, op, ..
            } => body.len() + op.len() + headers.list_size() as usize,
            Event::Answer {
                headers,
                body,
                message,
                ..
            } => body.len() + message.len() + headers.list_size() as usize,
            Event::Acks { message_ids, .. } | Event::MqttAcks { message_ids, .. } => {
                message_ids.len() * 24
            }
            Event::MqttPackets { packets, .. } => packets.iter().map(|p| p.len() + 24).sum(),
            Event::MqttPubacks { packet_ids, .. } => packet_ids.len() * 8,
            Event::PushFailed { reason, .. } => reason.len(),
            Event::TlsTicket { ticket_id, state } => ticket_id.len() + state.len(),
            Event::TlsResume { ticket_id, .. } => ticket_id.len(),
            _ => 0,
        }
    }
}

pub type HeaderVec = Vec<(String, String)>;

/// Python -> engine.
#[derive(Debug)]
pub enum Command {
    Accept {
        conn: ConnId,
        session_id: Vec<u8>,
        resume_ticket: Vec<u8>,
        heartbeat_s: u64,
        server_time_ms: u64,
        resumed: bool,
        /// The app's current dictionary announced in HELLO_ACK (None: the newest held).
        newest_dictionary: Option<u32>,
    },
    Reject {
        conn: ConnId,
        code: mmtp::ErrorCode,
        message: String,
        retry_after_ms: u64,
    },
    Respond {
        conn: ConnId,
        stream_id: u64,
        status: u64,
        headers: HeaderVec,
        body: Vec<u8>,
    },
    StreamError {
        conn: ConnId,
        stream_id: u64,
        code: mmtp::ErrorCode,
        message: String,
        retry_after_ms: u64,
    },
    Call {
        conn: ConnId,
        call_token: u64,
        op: String,
        headers: HeaderVec,
        body: Vec<u8>,
    },
    CancelCall {
        conn: ConnId,
        call_token: u64,
    },
    Push {
        conn: ConnId,
        message_id: MessageId,
        headers: HeaderVec,
        body: Vec<u8>,
        tracked: bool,
    },
    Fanout {
        push: Arc<PreparedPush>,
        message_id: MessageId,
        /// None: every accepted MMTP connection.
        targets: Option<Vec<ConnId>>,
    },
    /// None: every accepted MMTP connection (drain).
    GoAway {
        conn: Option<ConnId>,
        code: mmtp::ErrorCode,
        reconnect_after_ms: u64,
        message: String,
    },
    End {
        conn: ConnId,
        code: mmtp::ErrorCode,
        message: String,
    },
    Close {
        conn: ConnId,
    },
    Abort {
        conn: ConnId,
    },
    SetIdle {
        conn: ConnId,
        idle_timeout_ms: u64,
    },
    MqttWrite {
        conn: ConnId,
        data: Vec<u8>,
    },
    /// The connection's session is open: QoS 1 pushes (`MqttPush`) are held by the
    /// engine from now on, and Python's QoS 1/2 PUBLISHes go through `MqttHeld`.
    MqttPushes {
        conn: ConnId,
        setup: crate::mqttout::PushSetup,
    },
    /// A QoS 1 push to the box: PUBLISH built and in flight here (`mqttout`).
    MqttPush {
        conn: ConnId,
        message_id: MessageId,
        headers: HeaderVec,
        body: Vec<u8>,
        tracked: bool,
    },
    /// Python's QoS 1/2 PUBLISH or restored PUBREL: within the in-flight limit.
    MqttHeld {
        conn: ConnId,
        data: Vec<u8>,
    },
    /// Hold a dictionary (a `.mmtpdict` published while running).
    AddDictionary(mmtp::Dictionary),
    /// Know a preset (published while running); new connections may name it.
    AddPreset(Box<mmtp::PresetTable>),
    /// Apps whose bodies `usage()` counts on their own.
    SetUsageApps(Vec<String>),
    /// Deliver a dictionary to these connections, paced (see `engine/dicts.rs`).
    Dict {
        conns: Vec<ConnId>,
        dict_id: u32,
    },
    /// The answer to `TlsResume`: the ticket's sealed state, or None (not found, taken
    /// already, the store failed): the handshake goes on, resumed or full.
    TlsResume {
        conn: ConnId,
        ticket_id: Vec<u8>,
        state: Option<Vec<u8>>,
    },
    // ----------------------------------------------------------- internal
    Listen(crate::engine::Listener),
    CloseListeners(SyncSender<()>),
    Shutdown,
}

/// Events gathered for Python and not taken yet.
#[derive(Debug, Default)]
pub struct EventQueue {
    pub events: Vec<Event>,
    /// Untracked (fan-out) pushes acknowledged, summed since the last take.
    pub fanout_acks: HashMap<MessageId, u64>,
    pub bytes: usize,
    /// The eventfd was written and Python has not taken the events since.
    pub notified: bool,
    /// The engine stopped reading sockets until Python takes these events.
    pub engine_paused: bool,
}
