//! The MMTP connection: a sans-I/O state machine for either role.
//!
//! Feed it bytes with [`Connection::receive`] and get events; call the
//! `send_*` methods and collect the bytes to write with
//! [`Connection::take_output`]. It never touches a socket, a thread or a
//! clock. On any protocol violation by the peer, `receive` queues an ERROR
//! frame for stream 0 and returns the [`ProtocolError`]; the caller writes out
//! what is queued and closes the transport.
//!
//! Memory: an idle connection (handshake done, no stream open, no push
//! awaiting its ACK, everything taken from the output) holds no heap memory
//! but the entries its two HPACK tables gained beyond the shared preset.

mod receive;
pub mod scoped;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::body::{BodyCodec, BodyUsage, RAW_BODY};
use crate::dictionaries::Dictionary;
use crate::errors::{ErrorCode, LocalError};
use crate::frames::{
    FrameType, FLAG_CONN, FLAG_DICT_LAST, FLAG_HEADERS, FLAG_TYPED, FLAG_ZSTD, FRAME_TYPE_COUNT,
};
use crate::headers::{header_list_size, HeaderList, Headers, WithOp};
use crate::hello::{encode_hello, encode_hello_ack, Hello, HelloAck};
use crate::hpack::{encode_context_free_with, Decoder, Encoder};
use crate::limits::{
    Limits, INITIAL_HEADER_TABLE_SIZE, MAX_PING_PAYLOAD, MIN_MAX_FRAME_SIZE,
    MIN_MAX_HEADER_LIST_SIZE,
};
use crate::messages;
use crate::prepared::PreparedPush;
use crate::presets::{PresetTable, Presets};
use crate::state::{can_start_stream, next_state, Role, State, Trigger};
use crate::typed::{Typed, TypedTable};
use crate::varint::{encode_varint, varint_size, MAX_VARINT};
use scoped::{effective_request_headers, Subset};

pub(crate) const OP_HEADER: &str = ":op";

/// A dynamic table's entries, newest first, as (name, value) octets.
pub type TableEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// SETTINGS identifiers (spec section 7.4).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u64 = 1;
    pub const MAX_FRAME_SIZE: u64 = 2;
    pub const MAX_CONCURRENT_STREAMS: u64 = 3;
    pub const MAX_BODY_SIZE: u64 = 4;
    pub const HEARTBEAT_S: u64 = 5;
    pub const MAX_HEADER_LIST_SIZE: u64 = 6;
}

/// Frames and bytes by type and direction, shared by all connections of a
/// process (no memory per connection); read them at scrape time.
#[derive(Debug, Default)]
pub struct FrameCounters {
    pub sent: [AtomicU64; FRAME_TYPE_COUNT],
    pub sent_bytes: [AtomicU64; FRAME_TYPE_COUNT],
    pub received: [AtomicU64; FRAME_TYPE_COUNT],
    pub received_bytes: [AtomicU64; FRAME_TYPE_COUNT],
}

/// Where a server counts the bodies of a device of an app, chosen at its HELLO.
pub type UsageResolver = Arc<dyn Fn(&str) -> Option<Arc<BodyUsage>> + Send + Sync>;

/// Per-connection options beyond the limits.
#[derive(Clone)]
pub struct Options {
    /// Our cap on the HPACK table our encoder uses (the peer may allow more).
    pub encoder_table_size_cap: u64,
    /// Send canonical ids and timestamps as typed fields (receivers always accept them).
    pub send_typed_headers: bool,
    pub counters: Option<Arc<FrameCounters>>,
    /// Client: names sent as connection-scoped headers besides the preset's (spec 9.11).
    pub connection_header_names: Vec<String>,
    /// Server: the usage counters of a device's app (`BodyUsage`), by HELLO `app_id`.
    pub usage_for_app: Option<UsageResolver>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("encoder_table_size_cap", &self.encoder_table_size_cap)
            .field("send_typed_headers", &self.send_typed_headers)
            .field("connection_header_names", &self.connection_header_names)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            encoder_table_size_cap: INITIAL_HEADER_TABLE_SIZE,
            send_typed_headers: true,
            counters: None,
            connection_header_names: Vec::new(),
            usage_for_app: None,
        }
    }
}

fn generic_typed() -> &'static TypedTable {
    static GENERIC: std::sync::OnceLock<TypedTable> = std::sync::OnceLock::new();
    GENERIC.get_or_init(TypedTable::generic)
}

/// Arguments of [`Connection::accept`] (HELLO_ACK fields the server chooses).
#[derive(Clone, Debug, Default)]
pub struct Accept {
    pub session_id: Vec<u8>,
    pub resume_ticket: Vec<u8>,
    pub heartbeat_s: u64,
    pub server_time_ms: u64,
    pub resumed: bool,
    /// The dictionary announced to the device (its app's current one); None:
    /// the newest the codec holds.
    pub newest_dictionary: Option<u32>,
}

/// A stream we started: its id, the value an echo in the answer stands for
/// (spec 9.8), and whether we cancelled it.
struct LocalStream {
    id: u64,
    trace_id: Option<Box<str>>,
    cancelled: bool,
}

/// A stream the peer started, with the value an echo in our answer stands for.
struct RemoteStream {
    id: u64,
    trace_id: Option<Box<str>>,
}

struct DictTransfer {
    dict_id: u32,
    total_size: u64,
    data: Vec<u8>,
}

/// The first byte of a REQUEST, RESPONSE or PUSH payload.
enum Prefix<'a> {
    Request(u64),
    Response(u64, u64),
    Push(u64, &'a [u8]),
}

impl Prefix<'_> {
    fn len(&self) -> usize {
        match *self {
            Prefix::Request(id) => varint_size(id),
            Prefix::Response(id, status) => varint_size(id) + varint_size(status),
            Prefix::Push(id, message_id) => {
                varint_size(id) + varint_size(message_id.len() as u64) + message_id.len()
            }
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Prefix::Request(id) => encode_varint(out, id),
            Prefix::Response(id, status) => {
                encode_varint(out, id);
                encode_varint(out, status);
            }
            Prefix::Push(id, message_id) => {
                encode_varint(out, id);
                encode_varint(out, message_id.len() as u64);
                out.extend_from_slice(message_id);
            }
        }
    }
}

/// Reserve `reserved` bytes for a varint length at the end of `out`; return
/// where the measured bytes start.
fn reserve_length(out: &mut Vec<u8>, reserved: usize) -> usize {
    out.resize(out.len() + reserved, 0);
    out.len()
}

/// Write the length of `out[start..]` into the `reserved` bytes before it,
/// moving the measured bytes if the varint needs another size.
fn patch_length(out: &mut Vec<u8>, start: usize, reserved: usize) {
    let length = (out.len() - start) as u64;
    let size = varint_size(length);
    let at = start - reserved;
    if size > reserved {
        out.splice(start..start, std::iter::repeat(0).take(size - reserved));
    } else if size < reserved {
        out.copy_within(start.., at + size);
        out.truncate(out.len() - (reserved - size));
    }
    let mut value = length;
    for slot in &mut out[at..at + size] {
        *slot = if value >= 0x80 {
            (value as u8) | 0x80
        } else {
            value as u8
        };
        value >>= 7;
    }
}

fn check_varint(value: u64, what: &str) -> Result<(), LocalError> {
    if value > MAX_VARINT {
        return Err(LocalError::Forbidden(
            format!("{what} {value} exceeds the varint maximum {MAX_VARINT}").into(),
        ));
    }
    Ok(())
}

/// Why a SETTINGS value is invalid (`None` if it is fine); the same rule both ways.
pub(crate) fn setting_problem(key: u64, value: u64) -> Option<String> {
    match key {
        setting::HEADER_TABLE_SIZE if value < INITIAL_HEADER_TABLE_SIZE => Some(format!(
            "header table size below {INITIAL_HEADER_TABLE_SIZE}"
        )),
        setting::MAX_FRAME_SIZE if value < MIN_MAX_FRAME_SIZE => {
            Some("max frame size below 1024".into())
        }
        setting::MAX_CONCURRENT_STREAMS if value < 1 => {
            Some("max concurrent streams below 1".into())
        }
        setting::MAX_HEADER_LIST_SIZE if value < MIN_MAX_HEADER_LIST_SIZE => {
            Some("max header list size below 256".into())
        }
        _ => None,
    }
}

/// One endpoint of an MMTP connection.
pub struct Connection {
    role: Role,
    state: State,
    goaway_sent: bool,
    goaway_received: bool,
    send_typed_headers: bool,
    /// The preset of both HPACK contexts (None before HELLO).
    preset: Option<Arc<PresetTable>>,
    outgoing_dictionary: u32,
    limits: Limits,
    peer_max_frame_size: u64,
    peer_max_body_size: u64,
    peer_max_concurrent_streams: u64,
    peer_max_header_list_size: u64,
    /// Client: the server's `max_connection_header_list_size` (HELLO_ACK #14).
    peer_max_connection_header_list_size: u64,
    encoder_table_size_cap: u64,
    /// Epochs of typed timestamps, one per direction.
    send_epoch_ms: u64,
    recv_epoch_ms: u64,
    next_delivery_id: u64,
    last_delivery_id: u64,
    encoder: Option<Encoder>,
    decoder: Option<Decoder>,
    // The tables below are empty (no allocation) while they hold nothing, and
    // are freed when they empty again: most connections of a gateway are idle.
    local_streams: Vec<LocalStream>,
    remote_streams: Vec<RemoteStream>,
    /// Delivery ids awaiting their ACK, ascending.
    unacked: Vec<u64>,
    /// Lowered own limits waiting for the ACK of the SETTINGS that announced them.
    settings_awaiting_ack: Vec<Vec<(u64, u64)>>,
    /// Client: the dictionaries its HELLO listed, until HELLO_ACK.
    hello_dictionaries: Vec<u64>,
    dict_transfer: Option<Box<DictTransfer>>,
    /// The start of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// Bytes queued for the peer.
    out: Vec<u8>,
    /// Connection-scoped headers in force, client to server (spec 9.11).
    conn_headers: Headers,
    /// Client: connection-scoped names besides the preset's.
    conn_names: Box<[Box<str>]>,
    /// Server: where this device's app counts its bodies (set at HELLO).
    usage: Option<Arc<BodyUsage>>,
    usage_for_app: Option<UsageResolver>,
    codec: Arc<BodyCodec>,
    presets: Arc<Presets>,
    counters: Option<Arc<FrameCounters>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("local_streams", &self.local_streams.len())
            .field("remote_streams", &self.remote_streams.len())
            .field("unacked", &self.unacked.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection with default options. `limits` must pass [`Limits::validate`].
    pub fn new(role: Role, limits: Limits, codec: Arc<BodyCodec>, presets: Arc<Presets>) -> Self {
        Connection::with_options(role, limits, codec, presets, Options::default())
    }

    pub fn with_options(
        role: Role,
        limits: Limits,
        codec: Arc<BodyCodec>,
        presets: Arc<Presets>,
        options: Options,
    ) -> Self {
        let defaults = Limits::default();
        Connection {
            role,
            state: match role {
                Role::Client => State::Idle,
                Role::Server => State::AwaitHello,
            },
            goaway_sent: false,
            goaway_received: false,
            send_typed_headers: options.send_typed_headers,
            preset: None,
            outgoing_dictionary: 0,
            limits,
            peer_max_frame_size: defaults.max_frame_size,
            peer_max_body_size: defaults.max_body_size,
            peer_max_concurrent_streams: defaults.max_concurrent_streams,
            peer_max_header_list_size: defaults.max_header_list_size,
            peer_max_connection_header_list_size: defaults.max_connection_header_list_size,
            encoder_table_size_cap: options.encoder_table_size_cap,
            send_epoch_ms: 0,
            recv_epoch_ms: 0,
            next_delivery_id: 1,
            last_delivery_id: 0,
            encoder: None,
            decoder: None,
            local_streams: Vec::new(),
            remote_streams: Vec::new(),
            unacked: Vec::new(),
            settings_awaiting_ack: Vec::new(),
            hello_dictionaries: Vec::new(),
            dict_transfer: None,
            partial: Vec::new(),
            out: Vec::new(),
            conn_headers: Headers::new(),
            conn_names: options
                .connection_header_names
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            usage: None,
            usage_for_app: options.usage_for_app,
            codec,
            presets,
            counters: options.counters,
        }
    }

    // ------------------------------------------------------------ accessors

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// A GOAWAY was sent or received: no new streams.
    pub fn is_draining(&self) -> bool {
        self.goaway_sent || self.goaway_received
    }

    /// Our receive limits as they apply now (SETTINGS change them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn peer_max_frame_size(&self) -> u64 {
        self.peer_max_frame_size
    }

    pub fn peer_max_body_size(&self) -> u64 {
        self.peer_max_body_size
    }

    pub fn peer_max_concurrent_streams(&self) -> u64 {
        self.peer_max_concurrent_streams
    }

    pub fn peer_max_header_list_size(&self) -> u64 {
        self.peer_max_header_list_size
    }

    /// The dictionary outgoing bodies are compressed with (0: none).
    pub fn outgoing_dictionary(&self) -> u32 {
        self.outgoing_dictionary
    }

    /// The preset of both HPACK contexts (0 before HELLO).
    pub fn preset_id(&self) -> u32 {
        self.preset.as_ref().map_or(0, |p| p.id)
    }

    /// The connection-scoped headers in force (spec section 9.11).
    pub fn connection_headers(&self) -> &Headers {
        &self.conn_headers
    }

    fn typed(&self) -> &TypedTable {
        self.preset.as_ref().map_or(generic_typed(), |p| p.typed())
    }

    pub fn codec(&self) -> &Arc<BodyCodec> {
        &self.codec
    }

    /// Streams we started that await their final frame.
    pub fn open_local_streams(&self) -> impl Iterator<Item = u64> + '_ {
        self.local_streams.iter().map(|s| s.id)
    }

    /// Streams the peer started that we have not answered.
    pub fn open_remote_streams(&self) -> impl Iterator<Item = u64> + '_ {
        self.remote_streams.iter().map(|s| s.id)
    }

    /// Pushes sent and not acknowledged, ascending delivery ids.
    pub fn unacked_deliveries(&self) -> &[u64] {
        &self.unacked
    }

    /// The next delivery id a push will get.
    pub fn next_delivery_id(&self) -> u64 {
        self.next_delivery_id
    }

    /// Bytes queued for the peer.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Bytes of a frame that has not fully arrived.
    pub fn buffered_input(&self) -> usize {
        self.partial.len()
    }

    /// Append everything queued since the last call to `out`. The connection
    /// keeps no output buffer afterwards (when `out` is empty, the queued
    /// buffer itself is handed over).
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        if self.out.is_empty() {
            return;
        }
        if out.is_empty() && out.capacity() < self.out.capacity() {
            std::mem::swap(out, &mut self.out);
            self.out = Vec::new();
        } else {
            out.extend_from_slice(&self.out);
            self.out = Vec::new();
        }
    }

    /// Everything queued since the last call (the reference's `data_to_send`).
    pub fn data_to_send(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Heap bytes this connection holds (its HPACK tables' own entries, open
    /// streams, unacknowledged deliveries, buffers); shared data excluded.
    pub fn heap_bytes(&self) -> usize {
        let tables = self.encoder.as_ref().map_or(0, |e| e.table().heap_bytes())
            + self.decoder.as_ref().map_or(0, |d| d.table().heap_bytes());
        let streams = self.local_streams.capacity() * std::mem::size_of::<LocalStream>()
            + self.remote_streams.capacity() * std::mem::size_of::<RemoteStream>()
            + self
                .local_streams
                .iter()
                .map(|s| s.trace_id.as_ref().map_or(0, |t| t.len()))
                .sum::<usize>()
            + self
                .remote_streams
                .iter()
                .map(|s| s.trace_id.as_ref().map_or(0, |t| t.len()))
                .sum::<usize>();
        let settings: usize = self.settings_awaiting_ack.capacity()
            * std::mem::size_of::<Vec<(u64, u64)>>()
            + self
                .settings_awaiting_ack
                .iter()
                .map(|p| p.capacity() * 16)
                .sum::<usize>();
        tables
            + streams
            + settings
            + self.unacked.capacity() * 8
            + self.hello_dictionaries.capacity() * 8
            + self.dict_transfer.as_ref().map_or(0, |t| {
                std::mem::size_of::<DictTransfer>() + t.data.capacity()
            })
            + self.partial.capacity()
            + self.out.capacity()
            + self.conn_headers.heap_bytes()
    }

    /// Give back spare capacity (call when a connection goes idle).
    pub fn shrink_to_fit(&mut self) {
        if let Some(encoder) = &mut self.encoder {
            encoder.table_mut().shrink_to_fit();
        }
        if let Some(decoder) = &mut self.decoder {
            decoder.table_mut().shrink_to_fit();
        }
        self.local_streams.shrink_to_fit();
        self.remote_streams.shrink_to_fit();
        self.unacked.shrink_to_fit();
        self.partial.shrink_to_fit();
        self.out.shrink_to_fit();
    }

    /// The encoder's / decoder's dynamic table, newest first (tests, debugging).
    #[doc(hidden)]
    pub fn hpack_tables(&self) -> (TableEntries, TableEntries) {
        (
            self.encoder
                .as_ref()
                .map_or(Vec::new(), |e| e.table().entries()),
            self.decoder
                .as_ref()
                .map_or(Vec::new(), |d| d.table().entries()),
        )
    }

    // --------------------------------------------------------------- output

    fn begin_frame(&mut self, frame_type: FrameType, flags: u8, reserved: usize) -> (usize, usize) {
        let frame_start = self.out.len();
        self.out.push(((frame_type as u8) << 4) | flags);
        (frame_start, reserve_length(&mut self.out, reserved))
    }

    fn end_frame(
        &mut self,
        frame_type: FrameType,
        frame_start: usize,
        payload_start: usize,
        reserved: usize,
    ) {
        patch_length(&mut self.out, payload_start, reserved);
        self.count_sent(frame_type, self.out.len() - frame_start);
    }

    fn count_sent(&self, frame_type: FrameType, bytes: usize) {
        if let Some(counters) = &self.counters {
            counters.sent[frame_type as usize].fetch_add(1, Ordering::Relaxed);
            counters.sent_bytes[frame_type as usize].fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Queue a frame whose payload is `payload`.
    fn queue(&mut self, frame_type: FrameType, flags: u8, payload: &[u8]) {
        let start = self.out.len();
        crate::frames::encode_frame(&mut self.out, frame_type, flags, payload);
        self.count_sent(frame_type, self.out.len() - start);
    }

    fn queue_error(&mut self, stream_id: u64, code: u64, retry_after_ms: u64, message: &str) {
        let (frame_start, payload_start) = self.begin_frame(FrameType::Error, 0, 1);
        messages::encode_error(&mut self.out, stream_id, code, retry_after_ms, message);
        self.end_frame(FrameType::Error, frame_start, payload_start, 1);
    }

    // ------------------------------------------------------------ handshake

    /// Client: open the conversation; requests may follow at once.
    ///
    /// The limit fields of `hello` are ignored: what we announce is what we
    /// enforce, so they come from our [`Limits`]. `pipeline_dictionary` is a
    /// dictionary the client knows the server holds (from an earlier
    /// HELLO_ACK); requests sent before this connection's HELLO_ACK are
    /// compressed with it (0: none).
    pub fn send_hello(
        &mut self,
        hello: &Hello,
        pipeline_dictionary: u32,
    ) -> Result<(), LocalError> {
        self.require_role(Role::Client, "send HELLO")?;
        if pipeline_dictionary != 0 && !self.codec.has_dictionary(pipeline_dictionary as u64) {
            return Err(LocalError::forbidden(format!(
                "pipeline dictionary {pipeline_dictionary} is not held"
            )));
        }
        let Some(preset) = self.presets.get(hello.preset_id).cloned() else {
            return Err(LocalError::forbidden(
                self.presets.unknown_message(hello.preset_id),
            ));
        };
        for (value, what) in [
            (hello.version, "version"),
            (hello.heartbeat_s, "heartbeat_s"),
            (hello.client_time_ms, "client_time_ms"),
        ] {
            check_varint(value, what)?;
        }
        for &dict_id in &hello.dictionaries {
            check_varint(dict_id, "dictionary")?;
        }
        let hello = Hello {
            header_table_size: self.limits.header_table_size,
            max_frame_size: self.limits.max_frame_size,
            max_header_list_size: self.limits.max_header_list_size,
            max_body_size: self.limits.max_body_size,
            max_concurrent_streams: self.limits.max_concurrent_streams,
            ..hello.clone()
        };
        self.state =
            next_state(self.role, self.state, Trigger::SendHello).map_err(LocalError::forbidden)?;
        self.encoder = Some(Encoder::new(preset.clone(), self.encoder_table_size_cap));
        self.decoder = Some(Decoder::new(preset.clone(), hello.header_table_size));
        self.preset = Some(preset);
        self.outgoing_dictionary = pipeline_dictionary;
        self.send_epoch_ms = hello.client_time_ms;
        self.hello_dictionaries = hello.dictionaries.clone();
        let (frame_start, payload_start) = self.begin_frame(FrameType::Hello, 0, 2);
        encode_hello(&mut self.out, &hello);
        self.end_frame(FrameType::Hello, frame_start, payload_start, 2);
        Ok(())
    }

    /// Server: the device is verified; send HELLO_ACK with our limits.
    pub fn accept(&mut self, accept: &Accept) -> Result<HelloAck, LocalError> {
        self.require_role(Role::Server, "accept")?;
        check_varint(accept.heartbeat_s, "heartbeat_s")?;
        check_varint(accept.server_time_ms, "server_time_ms")?;
        let newest_dictionary = match accept.newest_dictionary {
            None => self.codec.newest_dictionary_id(),
            Some(id) if id == 0 || self.codec.has_dictionary(id as u64) => id,
            Some(id) => {
                return Err(LocalError::forbidden(format!(
                    "dictionary {id} is not held"
                )))
            }
        };
        self.state =
            next_state(self.role, self.state, Trigger::Accept).map_err(LocalError::forbidden)?;
        let ack = HelloAck {
            session_id: accept.session_id.clone(),
            resume_ticket: accept.resume_ticket.clone(),
            heartbeat_s: accept.heartbeat_s,
            preset_id: self.preset_id() as u64,
            newest_dictionary: newest_dictionary as u64,
            header_table_size: self.limits.header_table_size,
            max_frame_size: self.limits.max_frame_size,
            max_concurrent_streams: self.limits.max_concurrent_streams,
            max_header_list_size: self.limits.max_header_list_size,
            max_body_size: self.limits.max_body_size,
            server_time_ms: accept.server_time_ms,
            resumed: accept.resumed,
            max_connection_header_list_size: self.limits.max_connection_header_list_size,
            ..HelloAck::default()
        };
        self.send_epoch_ms = accept.server_time_ms;
        let (frame_start, payload_start) = self.begin_frame(FrameType::HelloAck, 0, 1);
        encode_hello_ack(&mut self.out, &ack);
        self.end_frame(FrameType::HelloAck, frame_start, payload_start, 1);
        Ok(ack)
    }

    /// Server: refuse the device (bad token, overload); the connection ends.
    pub fn reject(
        &mut self,
        code: ErrorCode,
        message: &str,
        retry_after_ms: u64,
    ) -> Result<(), LocalError> {
        self.require_role(Role::Server, "reject")?;
        check_varint(retry_after_ms, "retry_after_ms")?;
        self.close_with_error(code, message, retry_after_ms);
        Ok(())
    }

    /// End the connection with ERROR on stream 0 (write it out, then close).
    /// Does nothing on a closed connection.
    pub fn close_with_error(&mut self, code: ErrorCode, message: &str, retry_after_ms: u64) {
        if self.state == State::Closed {
            return;
        }
        self.queue_error(0, code.value(), retry_after_ms.min(MAX_VARINT), message);
        self.state = State::Closed;
    }

    // -------------------------------------------------------------- streams

    /// Start a stream with a REQUEST; return its stream id.
    pub fn send_request<H: HeaderList + ?Sized>(
        &mut self,
        op: &str,
        body: &[u8],
        headers: &H,
    ) -> Result<u64, LocalError> {
        if op.is_empty() {
            return Err(LocalError::forbidden(
                "a REQUEST needs a non-empty operation type",
            ));
        }
        if !can_start_stream(self.role, self.state) || self.is_draining() {
            return Err(LocalError::forbidden(format!(
                "cannot start a stream in state {}",
                self.state.name()
            )));
        }
        if self.local_streams.len() as u64 >= self.peer_max_concurrent_streams {
            return Err(LocalError::StreamsExhausted {
                limit: self.peer_max_concurrent_streams,
            });
        }
        let mut stream_id = if self.role == Role::Client { 1 } else { 2 };
        while self.local_streams.iter().any(|s| s.id == stream_id) {
            stream_id += 2;
        }
        if self.role == Role::Client && self.has_scoped_names() {
            return self.send_scoped_request(stream_id, op, body, headers);
        }
        let all = WithOp { op, rest: headers };
        self.encode_message(
            FrameType::Request,
            Prefix::Request(stream_id),
            &all,
            body,
            None,
            &[],
            None,
        )?;
        let trace_id = self.typed().echo_value_of(headers).map(Box::from);
        self.local_streams.push(LocalStream {
            id: stream_id,
            trace_id,
            cancelled: false,
        });
        Ok(stream_id)
    }

    fn has_scoped_names(&self) -> bool {
        !self.conn_names.is_empty()
            || self
                .preset
                .as_ref()
                .is_some_and(|p| p.connection_names().next().is_some())
    }

    fn is_scoped(&self, name: &str) -> bool {
        self.conn_names.iter().any(|n| **n == *name)
            || self
                .preset
                .as_ref()
                .is_some_and(|p| p.connection_names().any(|n| n == name))
    }

    /// A client's REQUEST whose connection-scoped fields travel in a connection
    /// header block when they change (spec section 9.11).
    fn send_scoped_request<H: HeaderList + ?Sized>(
        &mut self,
        stream_id: u64,
        op: &str,
        body: &[u8],
        headers: &H,
    ) -> Result<u64, LocalError> {
        let lifted =
            scoped::lift_connection_headers(headers, |n| self.is_scoped(n), &self.conn_headers);
        let own = Subset {
            inner: headers,
            indices: lifted.own,
        };
        let all = WithOp { op, rest: &own };
        let conn = lifted.after.as_ref().unwrap_or(&self.conn_headers);
        let effective = effective_request_headers(conn, &all);
        if !lifted.update.is_empty() {
            let size = conn.list_size();
            let limit = self.peer_max_connection_header_list_size();
            if size > limit {
                return Err(LocalError::MessageTooLarge(format!(
                    "connection headers of {size} bytes exceed the server's \
                     max_connection_header_list_size {limit}"
                )));
            }
        }
        let trace_id = self.typed().echo_value_of(&effective).map(Box::from);
        self.encode_message(
            FrameType::Request,
            Prefix::Request(stream_id),
            &all,
            body,
            None,
            &lifted.update,
            Some(effective.list_size()),
        )?;
        if let Some(after) = lifted.after {
            self.conn_headers = after;
        }
        self.local_streams.push(LocalStream {
            id: stream_id,
            trace_id,
            cancelled: false,
        });
        Ok(stream_id)
    }

    fn peer_max_connection_header_list_size(&self) -> u64 {
        self.peer_max_connection_header_list_size
    }

    /// Answer a peer's stream; `Ok(false)` if it was cancelled or already
    /// answered. A message too large for the peer leaves the stream open, so
    /// the caller can still answer it with [`send_error`](Self::send_error).
    pub fn send_response<H: HeaderList + ?Sized>(
        &mut self,
        stream_id: u64,
        body: &[u8],
        headers: &H,
        status: u64,
    ) -> Result<bool, LocalError> {
        check_varint(status, "status")?;
        let Some(position) = self.find_remote_stream(stream_id)? else {
            return Ok(false);
        };
        let stream = self.remote_streams.swap_remove(position);
        let result = self.encode_message(
            FrameType::Response,
            Prefix::Response(stream_id, status),
            headers,
            body,
            stream.trace_id.as_deref(),
            &[],
            None,
        );
        match result {
            Ok(()) => {
                if self.remote_streams.is_empty() {
                    self.remote_streams = Vec::new();
                }
                Ok(true)
            }
            Err(error) => {
                self.remote_streams.push(stream);
                Err(error)
            }
        }
    }

    /// End a peer's stream with an error instead of a RESPONSE.
    pub fn send_error(
        &mut self,
        stream_id: u64,
        code: ErrorCode,
        message: &str,
        retry_after_ms: u64,
    ) -> Result<bool, LocalError> {
        check_varint(retry_after_ms, "retry_after_ms")?;
        let Some(position) = self.find_remote_stream(stream_id)? else {
            return Ok(false);
        };
        self.remote_streams.swap_remove(position);
        if self.remote_streams.is_empty() {
            self.remote_streams = Vec::new();
        }
        self.queue_error(stream_id, code.value(), retry_after_ms, message);
        Ok(true)
    }

    /// Give up on a stream we started; its id stays taken until the peer's
    /// final frame. Does nothing for a stream that is not open or already cancelled.
    pub fn send_cancel(&mut self, stream_id: u64) {
        let Some(stream) = self.local_streams.iter_mut().find(|s| s.id == stream_id) else {
            return;
        };
        if stream.cancelled {
            return;
        }
        stream.cancelled = true;
        let (frame_start, payload_start) = self.begin_frame(FrameType::Cancel, 0, 1);
        encode_varint(&mut self.out, stream_id);
        self.end_frame(FrameType::Cancel, frame_start, payload_start, 1);
    }

    fn find_remote_stream(&self, stream_id: u64) -> Result<Option<usize>, LocalError> {
        if !matches!(self.state, State::Open | State::Closing) {
            return Err(LocalError::forbidden(format!(
                "cannot answer streams in state {}",
                self.state.name()
            )));
        }
        Ok(self.remote_streams.iter().position(|s| s.id == stream_id))
    }

    /// Encode and queue one message frame. Every limit of the peer is checked
    /// before HPACK runs: once the encoder's table has changed the frame must
    /// go out, or both sides' tables disagree for good.
    #[allow(clippy::too_many_arguments)]
    fn encode_message<H: HeaderList + ?Sized>(
        &mut self,
        frame_type: FrameType,
        prefix: Prefix<'_>,
        headers: &H,
        body: &[u8],
        echo_value: Option<&str>,
        conn_update: &[(String, String)],
        list_size: Option<u64>,
    ) -> Result<(), LocalError> {
        if body.len() as u64 > self.peer_max_body_size {
            return Err(LocalError::MessageTooLarge(format!(
                "body of {} bytes exceeds the peer's max_body_size {}",
                body.len(),
                self.peer_max_body_size
            )));
        }
        let encoded = self.codec.encode(body, self.outgoing_dictionary)?;
        // The list the peer decodes: with connection headers re-attached, not `headers`.
        let list_size = list_size.unwrap_or_else(|| header_list_size(headers));
        if list_size > self.peer_max_header_list_size {
            return Err(LocalError::MessageTooLarge(format!(
                "header list of {list_size} bytes exceeds the peer's max_header_list_size {}",
                self.peer_max_header_list_size
            )));
        }
        // A string literal is never longer than its octets plus a 5-byte length.
        let fields = (headers.field_count() + conn_update.len()) as u64;
        let blocks = if conn_update.is_empty() { 1 } else { 2 };
        let header_bound =
            header_list_size(headers) + header_list_size(conn_update) - 20 * fields + 8 * blocks;
        let bound = prefix.len() as u64 + encoded.data().len() as u64 + header_bound;
        if bound > self.peer_max_frame_size {
            return Err(LocalError::MessageTooLarge(format!(
                "message of ~{} bytes exceeds the peer's max_frame_size {}",
                encoded.data().len() as u64 + header_bound,
                self.peer_max_frame_size
            )));
        }
        let preset = self.preset.clone();
        let typed = preset.as_deref().map_or(generic_typed(), |p| p.typed());
        let typed_on = self.send_typed_headers;
        let epoch = self.send_epoch_ms;
        let kind = |name: &str, value: &str| {
            if typed_on {
                typed.classify(name, value, echo_value, epoch)
            } else {
                Typed::No
            }
        };
        let (mut any_hpack, mut any_typed) = (false, false);
        for i in 0..headers.field_count() {
            let (name, value) = headers.field(i);
            match kind(name, value) {
                Typed::No => any_hpack = true,
                _ => any_typed = true,
            }
        }
        if (any_hpack || !conn_update.is_empty()) && self.encoder.is_none() {
            return Err(LocalError::forbidden("no HPACK context before HELLO"));
        }
        let mut flags = 0;
        if encoded.compressed() {
            flags |= FLAG_ZSTD;
        }
        if any_hpack {
            flags |= FLAG_HEADERS;
        }
        if !conn_update.is_empty() {
            flags |= FLAG_CONN;
        }
        if any_typed {
            flags |= FLAG_TYPED;
        }
        if let Some(usage) = &self.usage {
            let dict = if encoded.compressed() {
                self.outgoing_dictionary as i64
            } else {
                RAW_BODY
            };
            usage.sent(dict, body.len() as u64, encoded.data().len() as u64);
        }
        let reserved = varint_size(bound);
        let (frame_start, payload_start) = self.begin_frame(frame_type, flags, reserved);
        prefix.write(&mut self.out);
        if any_hpack {
            let block_reserved = varint_size(header_bound);
            let block_start = reserve_length(&mut self.out, block_reserved);
            if let Some(encoder) = self.encoder.as_mut() {
                encoder.encode(&mut self.out, headers, |name, value| {
                    kind(name, value) == Typed::No
                });
            }
            patch_length(&mut self.out, block_start, block_reserved);
        }
        if !conn_update.is_empty() {
            let block_reserved = varint_size(header_bound);
            let block_start = reserve_length(&mut self.out, block_reserved);
            if let Some(encoder) = self.encoder.as_ref() {
                encode_context_free_with(&mut self.out, conn_update, |n| encoder.never_indexes(n));
            }
            patch_length(&mut self.out, block_start, block_reserved);
        }
        if any_typed {
            let typed_start = reserve_length(&mut self.out, 1);
            if typed_on {
                typed.encode(&mut self.out, headers, epoch, echo_value);
            }
            patch_length(&mut self.out, typed_start, 1);
        }
        self.out.extend_from_slice(encoded.data());
        drop(encoded);
        self.end_frame(frame_type, frame_start, payload_start, reserved);
        Ok(())
    }

    // --------------------------------------------------------------- pushes

    /// Server: deliver a push; return its delivery id (acknowledged by ACK).
    pub fn send_push<H: HeaderList + ?Sized>(
        &mut self,
        message_id: &[u8],
        body: &[u8],
        headers: &H,
    ) -> Result<u64, LocalError> {
        self.require_pushable(message_id)?;
        let delivery_id = self.next_delivery_id;
        self.encode_message(
            FrameType::Push,
            Prefix::Push(delivery_id, message_id),
            headers,
            body,
            None,
            &[],
            None,
        )?;
        // Taken only once encoding succeeded: a refused push leaves no phantom delivery.
        self.take_delivery_id();
        Ok(delivery_id)
    }

    /// Encode a push once for [`send_prepared_push`](Self::send_prepared_push)
    /// on many connections sharing this one's codec.
    pub fn prepare_push<H: HeaderList + ?Sized>(
        &self,
        message_id: &[u8],
        body: &[u8],
        headers: &H,
    ) -> PreparedPush {
        PreparedPush::new(message_id, body, headers, self.codec.clone())
    }

    /// Server: send a push prepared once for many connections.
    pub fn send_prepared_push(&mut self, prepared: &PreparedPush) -> Result<u64, LocalError> {
        self.require_pushable(prepared.message_id())?;
        if prepared.body().len() as u64 > self.peer_max_body_size {
            return Err(LocalError::MessageTooLarge(
                "push body exceeds the peer's max_body_size".into(),
            ));
        }
        if prepared.header_list_size() > self.peer_max_header_list_size {
            return Err(LocalError::MessageTooLarge(
                "push headers exceed the peer's max_header_list_size".into(),
            ));
        }
        // Checked before taking the encoder's owed size update, which must then go out.
        let tail = prepared.tail(self.outgoing_dictionary)?;
        if tail.bytes.len() as u64 + 16 > self.peer_max_frame_size {
            return Err(LocalError::MessageTooLarge(
                "push exceeds the peer's max_frame_size".into(),
            ));
        }
        let owed = self.encoder.as_ref().is_some_and(|e| e.owes_size_update());
        if let Some(usage) = &self.usage {
            let dict = if tail.flags & FLAG_ZSTD != 0 {
                self.outgoing_dictionary as i64
            } else {
                RAW_BODY
            };
            usage.sent(dict, prepared.body().len() as u64, tail.body_len() as u64);
        }
        let delivery_id = self.take_delivery_id();
        let frame_start = self.out.len();
        if owed {
            let mut update = Vec::new();
            if let Some(encoder) = self.encoder.as_mut() {
                encoder.take_size_update(&mut update);
            }
            let tail = prepared.with_size_update(&tail, &update);
            self.write_push(delivery_id, tail.flags, &tail.bytes);
        } else {
            self.write_push(delivery_id, tail.flags, &tail.bytes);
        }
        self.count_sent(FrameType::Push, self.out.len() - frame_start);
        Ok(delivery_id)
    }

    fn write_push(&mut self, delivery_id: u64, flags: u8, tail: &[u8]) {
        self.out.push(((FrameType::Push as u8) << 4) | flags);
        encode_varint(
            &mut self.out,
            (varint_size(delivery_id) + tail.len()) as u64,
        );
        encode_varint(&mut self.out, delivery_id);
        self.out.extend_from_slice(tail);
    }

    fn require_pushable(&self, message_id: &[u8]) -> Result<(), LocalError> {
        self.require_role(Role::Server, "send PUSH")?;
        if !matches!(self.state, State::Open | State::Closing) {
            return Err(LocalError::forbidden(format!(
                "cannot push in state {}",
                self.state.name()
            )));
        }
        if message_id.is_empty() || message_id.len() as u64 > self.limits.max_message_id_length {
            return Err(LocalError::forbidden(format!(
                "message id must be 1..{} bytes",
                self.limits.max_message_id_length
            )));
        }
        Ok(())
    }

    fn take_delivery_id(&mut self) -> u64 {
        let delivery_id = self.next_delivery_id;
        self.next_delivery_id += 1;
        self.unacked.push(delivery_id);
        delivery_id
    }

    /// Client: acknowledge pushes (one frame per `max_acks_per_frame` ids).
    pub fn send_ack(&mut self, delivery_ids: &[u64]) -> Result<(), LocalError> {
        self.require_role(Role::Client, "send ACK")?;
        self.require_open("ACK")?;
        for &id in delivery_ids {
            check_varint(id, "delivery id")?;
        }
        let per_frame = usize::try_from(self.limits.max_acks_per_frame)
            .unwrap_or(usize::MAX)
            .max(1);
        for chunk in delivery_ids.chunks(per_frame) {
            let reserved = varint_size(chunk.len() as u64 * 8);
            let (frame_start, payload_start) = self.begin_frame(FrameType::Ack, 0, reserved);
            for &id in chunk {
                encode_varint(&mut self.out, id);
            }
            self.end_frame(FrameType::Ack, frame_start, payload_start, reserved);
        }
        Ok(())
    }

    // ----------------------------------------------------------- connection

    fn require_open(&self, what: &str) -> Result<(), LocalError> {
        if !matches!(self.state, State::Open | State::Closing) {
            return Err(LocalError::forbidden(format!(
                "cannot send {what} in state {}",
                self.state.name()
            )));
        }
        Ok(())
    }

    fn require_role(&self, role: Role, action: &str) -> Result<(), LocalError> {
        if self.role != role {
            return Err(LocalError::forbidden(format!(
                "only the {} may {action}",
                role.name()
            )));
        }
        Ok(())
    }

    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), LocalError> {
        self.require_open("PING")?;
        if payload.len() > MAX_PING_PAYLOAD {
            return Err(LocalError::forbidden("PING payload is at most 8 bytes"));
        }
        self.queue(FrameType::Ping, 0, payload);
        Ok(())
    }

    /// Announce changed receive limits (or a new heartbeat) to the peer.
    ///
    /// A raised limit applies to what we accept at once; a lowered one only
    /// after the peer's ACK, since frames it sent before seeing ours may still
    /// be on their way.
    pub fn send_settings(&mut self, settings: &[(u64, u64)]) -> Result<(), LocalError> {
        self.require_open("SETTINGS")?;
        if let Some(problem) = messages::settings_problem(settings) {
            return Err(LocalError::Forbidden(problem.into()));
        }
        for &(key, value) in settings {
            check_varint(key, "SETTINGS id")?;
            check_varint(value, "SETTINGS value")?;
            if let Some(problem) = setting_problem(key, value) {
                return Err(LocalError::forbidden(format!(
                    "SETTINGS {key}={value}: {problem}"
                )));
            }
        }
        let mut lowered = Vec::new();
        for &(key, value) in settings {
            // A later value supersedes any lowering of the same key still awaiting its ACK.
            // So does a later pair of the same frame (the reference still
            // applies such a lowering at the ACK, leaving its decoder below
            // what the peer was last told).
            for pending in &mut self.settings_awaiting_ack {
                pending.retain(|(k, _)| *k != key);
            }
            lowered.retain(|(k, _)| *k != key);
            if self.own_setting_raises(key, value) {
                self.apply_own_setting(key, value);
            } else {
                lowered.push((key, value));
            }
        }
        self.settings_awaiting_ack.push(lowered);
        let (frame_start, payload_start) = self.begin_frame(FrameType::Settings, 0, 1);
        for &(key, value) in settings {
            encode_varint(&mut self.out, key);
            encode_varint(&mut self.out, value);
        }
        self.end_frame(FrameType::Settings, frame_start, payload_start, 1);
        Ok(())
    }

    fn own_limit(&mut self, key: u64) -> Option<&mut u64> {
        Some(match key {
            setting::HEADER_TABLE_SIZE => &mut self.limits.header_table_size,
            setting::MAX_FRAME_SIZE => &mut self.limits.max_frame_size,
            setting::MAX_CONCURRENT_STREAMS => &mut self.limits.max_concurrent_streams,
            setting::MAX_BODY_SIZE => &mut self.limits.max_body_size,
            setting::MAX_HEADER_LIST_SIZE => &mut self.limits.max_header_list_size,
            _ => return None,
        })
    }

    fn own_setting_raises(&mut self, key: u64, value: u64) -> bool {
        self.own_limit(key).is_some_and(|limit| value >= *limit)
    }

    pub(crate) fn apply_own_setting(&mut self, key: u64, value: u64) {
        let Some(limit) = self.own_limit(key) else {
            return;
        };
        *limit = value;
        if key == setting::HEADER_TABLE_SIZE {
            if let Some(decoder) = &mut self.decoder {
                decoder.allow_table_size(value);
            }
        }
    }

    /// Start draining: the peer should open no new streams and reconnect later.
    pub fn send_goaway(
        &mut self,
        code: ErrorCode,
        reconnect_after_ms: u64,
        alternate_endpoint: &str,
        message: &str,
    ) -> Result<(), LocalError> {
        check_varint(reconnect_after_ms, "reconnect_after_ms")?;
        self.state =
            next_state(self.role, self.state, Trigger::GoAway).map_err(LocalError::forbidden)?;
        self.goaway_sent = true;
        let (frame_start, payload_start) = self.begin_frame(FrameType::GoAway, 0, 1);
        messages::encode_goaway(
            &mut self.out,
            code.value(),
            reconnect_after_ms,
            alternate_endpoint,
            message,
        );
        self.end_frame(FrameType::GoAway, frame_start, payload_start, 1);
        Ok(())
    }

    /// Server: deliver a whole dictionary now, in chunks of (peer
    /// `max_frame_size` - 32) bytes; later frames may be compressed with it.
    pub fn send_dictionary(&mut self, dictionary: &Dictionary) -> Result<(), LocalError> {
        let mut offset = 0;
        while offset < dictionary.content.len() {
            offset = self.send_dictionary_chunk(dictionary, offset, None)?;
        }
        Ok(())
    }

    /// Server: send the DICT chunk of `dictionary` starting at `offset`, of at
    /// most `max_chunk_bytes` (and peer `max_frame_size` - 32) bytes; return the
    /// next offset. When it reaches the end that was the LAST chunk, and frames
    /// sent after it are compressed with the dictionary if its id is the larger.
    pub fn send_dictionary_chunk(
        &mut self,
        dictionary: &Dictionary,
        offset: usize,
        max_chunk_bytes: Option<usize>,
    ) -> Result<usize, LocalError> {
        self.require_role(Role::Server, "send DICT")?;
        if !matches!(self.state, State::Open | State::Closing) {
            return Err(LocalError::forbidden(format!(
                "cannot send DICT in state {}",
                self.state.name()
            )));
        }
        let content = &dictionary.content;
        if offset >= content.len() {
            return Err(LocalError::forbidden(format!(
                "DICT offset {offset} is outside the dictionary"
            )));
        }
        // We hold what we deliver: later frames are compressed with it.
        self.codec
            .add_dictionary(dictionary.clone())
            .map_err(|e| LocalError::Forbidden(e.message))?;
        let mut chunk_size = usize::try_from(self.peer_max_frame_size - 32).unwrap_or(usize::MAX);
        if let Some(most) = max_chunk_bytes {
            chunk_size = chunk_size.min(most).max(1);
        }
        let end = offset.saturating_add(chunk_size).min(content.len());
        let flags = if end == content.len() {
            FLAG_DICT_LAST
        } else {
            0
        };
        let reserved = varint_size((end - offset + 16) as u64);
        let (frame_start, payload_start) = self.begin_frame(FrameType::Dict, flags, reserved);
        encode_varint(&mut self.out, dictionary.dict_id as u64);
        encode_varint(&mut self.out, content.len() as u64);
        encode_varint(&mut self.out, offset as u64);
        self.out.extend_from_slice(&content[offset..end]);
        self.end_frame(FrameType::Dict, frame_start, payload_start, reserved);
        if end == content.len() {
            self.outgoing_dictionary = self.outgoing_dictionary.max(dictionary.dict_id);
        }
        Ok(end)
    }
}
