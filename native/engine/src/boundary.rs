//! What crosses between the engine thread and Python, as Rust values: events up,
//! commands down (`BOUNDARY.md` is the contract; `py.rs` converts to and from
//! Python objects while holding the GIL, the engine thread never does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
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
        /// The engine applied the device's request rate limit (the session has a
        /// native RPC path): None, Python's to apply; 0, a token was taken; else the
        /// call is refused with RATE_LIMITED and this retry-after (ms).
        gate: Option<u64>,
        /// Calls the engine serves natively on this connection right now.
        busy: u64,
    },
    /// A native call that did not end with a simple answer: the upstream connection
    /// (its fd, now Python's) and what was read from it; Python goes on from there.
    RpcHandoff(Box<RpcHandoff>),
    /// Native calls answered since the last report, for Python's accounting.
    RpcDone(Vec<RpcOutcome>),
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
    /// A push held by the engine that the box refused (MQTT 5 PUBACK with a reason
    /// of 0x80 or more): over like an ACK (MQTT-4.4.0-2), reported with the reason.
    MqttRefused {
        conn: ConnId,
        message_id: MessageId,
        tracked: bool,
        reason: u8,
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
            Event::RpcHandoff(h) => h.body.len() + h.received.len() + h.unsent.len() + 256,
            Event::RpcDone(calls) => calls
                .iter()
                .map(|c| {
                    64 + c.request_body.as_ref().map_or(0, Vec::len)
                        + c.response_body.as_ref().map_or(0, Vec::len)
                })
                .sum(),
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

/// See `Event::RpcHandoff`.
#[derive(Debug)]
pub struct RpcHandoff {
    pub conn: ConnId,
    pub stream_id: u64,
    pub op: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub early: bool,
    pub route: String,
    pub cluster: String,
    /// Index in the cluster's endpoint list (as Python sent it).
    pub endpoint: usize,
    /// The upstream socket, now owned by whoever takes the event: closed with the
    /// event if nobody does (the engine shut down with it queued).
    pub fd: OwnedFd,
    /// The answer's bytes read so far.
    pub received: Vec<u8>,
    /// The tail of the request not written yet.
    pub unsent: Vec<u8>,
    /// The connection carried a request before this one (the keep-alive race).
    pub reused: bool,
    pub elapsed_us: u64,
}

/// One native call answered (2xx), as Python accounts for it.
#[derive(Debug)]
pub struct RpcOutcome {
    pub conn: ConnId,
    pub route: String,
    pub cluster: String,
    pub took_us: u64,
    pub early: bool,
    /// The bodies the sampler's draw picked (its app is sampled for compression).
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
}

/// The calls the engine may serve itself (Python's `RpcRouter.native_table`).
#[derive(Debug, Default)]
pub struct RpcTable {
    pub routes: Vec<RpcRoute>,
    pub clusters: Vec<RpcCluster>,
    pub user_agent: String,
}

#[derive(Debug)]
pub struct RpcRoute {
    /// An exact op, a prefix ending in '.', or "*".
    pub pattern: String,
    pub idempotent: bool,
    pub idempotent_ops: Vec<String>,
    /// (cluster index, the call's timeout in ms) when the engine may serve it.
    pub native: Option<(usize, u64)>,
}

#[derive(Debug)]
pub struct RpcCluster {
    pub name: String,
    pub endpoints: Vec<RpcEndpoint>,
    pub max_connections: usize,
    pub keepalive_ms: u64,
    pub limits: crate::h1::Limits,
    /// Calls a device connection may have in flight (the engine's and Python's, this
    /// one included) for the engine to send one itself: the lower of
    /// `max_pending_requests` and the cluster's `device_max_in_flight`.
    pub max_calls: usize,
}

#[derive(Debug)]
pub struct RpcEndpoint {
    pub addr: std::net::SocketAddr,
    pub authority: String,
    pub prefix: String,
    /// Marked down by Python for this long from now.
    pub down_ms: u64,
}

/// What Python adds to a device's native calls (`RPC_SESSION`).
#[derive(Debug)]
pub struct RpcSessionInfo {
    /// The identity header lines (`name: value\r\n` each), appended to every request.
    pub identity: Box<[u8]>,
    pub requests_per_second: f64,
    pub request_burst: f64,
    /// The bucket's tokens now (Python's, which the engine's goes on from).
    pub tokens: f64,
    /// Which bodies of its native calls go to Python (compression sampling; None: none).
    pub sample: Option<Sampling>,
}

/// The compression sampler's draw (`BodySampler.offer`), made by the engine so that only
/// the bodies the sampler would keep cross: a body within the sizes, then at random.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    pub fraction: f64,
    pub min_bytes: usize,
    pub max_bytes: usize,
}

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
    /// The native RPC path's routes and clusters (None: off).
    RpcTable(Option<Box<RpcTable>>),
    /// A device's native RPC settings (None: its calls are Python's).
    RpcSession {
        conn: ConnId,
        info: Option<Box<RpcSessionInfo>>,
    },
    /// Close once the calls the engine serves on it are done (as `Close` otherwise).
    CloseIdle {
        conn: ConnId,
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
