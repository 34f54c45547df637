//! The engine thread: one mio `Poll`, connections in a `Slab`, rustls unbuffered
//! TLS with per-thread buffers, deadlines swept from a compact array, events to
//! Python in batches (one eventfd write per batch), commands from Python in batches.
//!
//! A poll round: readiness events only mark connections runnable; then every
//! runnable connection gets one budget of input (bytes and frames: a flooding device
//! cannot starve the others), commands are applied, every connection with new
//! output is flushed once (several frames, one TLS pass, one write), the round's
//! events go to Python, and due deadlines are enforced.

mod commands;
pub mod conn;
pub mod dicts;
mod input;
pub mod rpc;
mod tlsio;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::server::UnbufferedServerConnection;
use slab::Slab;

use crate::admission::{Admission, Refusal};
use crate::boundary::{Command, Event, EventQueue, MessageId};
use crate::config::EngineConfig;
use crate::deadlines::{Durations, Expiry, Timing};
use crate::ids::{ConnId, Generations};
use crate::stats::Stats;
use crate::ticketer::KeyRingTicketer;
use crate::tls::{EarlyData, ServerConfigs};
use conn::{flag, Conn, MmtpConn, MqttConn, Proto};
use dicts::UsageTable;

const WAKER: Token = Token(usize::MAX);
/// Listener tokens sit above every slab slot (slots are u32).
const LISTENER_BASE: usize = 1 << 40;

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mmtp,
    Mqtt,
}

/// A bound, listening socket on its way to the engine thread.
#[derive(Debug)]
pub struct Listener {
    pub socket: TcpListener,
    pub kind: Kind,
    pub tls: bool,
    /// Its peers are load balancers that send a PROXY protocol header first.
    pub proxy: bool,
}

struct ListenerState {
    listener: Listener,
    /// Accepts were cut short by the per-round budget: more may be waiting.
    ready: bool,
}

/// What the engine thread and Python's thread share.
pub struct Shared {
    pub queue: Mutex<EventQueue>,
    pub commands: Mutex<Vec<Command>>,
    pub waker: Waker,
    pub eventfd: File,
    pub stats: Stats,
    pub frames: Arc<mmtp::FrameCounters>,
    pub tls: RwLock<Option<ServerConfigs>>,
    pub ticketer: Arc<KeyRingTicketer>,
    /// TLS early data on single-use tickets (None: off, sealed tickets).
    pub early: Option<EarlyData>,
    pub codec: Arc<mmtp::BodyCodec>,
    /// Replaced (not changed) when a preset is added: connections keep theirs.
    pub presets: RwLock<Arc<mmtp::Presets>>,
    pub usage: Arc<UsageTable>,
    /// Per MQTT connection whose pushes the engine holds: its (in flight, waiting),
    /// for the admin device lookup (entries added at MQTT_PUSHES, removed at close).
    pub mqtt_held: Mutex<HashMap<ConnId, crate::mqttout::HeldGauge>>,
    pub config: EngineConfig,
}

impl Shared {
    /// Hand commands to the engine thread and wake it.
    pub fn submit(&self, commands: Vec<Command>) {
        if commands.is_empty() {
            return;
        }
        Stats::add(&self.stats.commands, commands.len() as u64);
        {
            let mut queue = self.commands.lock().unwrap_or_else(|e| e.into_inner());
            if queue.is_empty() {
                *queue = commands;
            } else {
                queue.extend(commands);
            }
        }
        let _ = self.waker.wake();
    }

    /// Queue a command of the engine's own (listeners, shutdown): not counted.
    pub fn submit_internal(&self, command: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        let _ = self.waker.wake();
    }

    /// Take every event gathered since the last take (clears the eventfd).
    pub fn take_events(&self) -> (Vec<Event>, HashMap<MessageId, u64>) {
        let (events, acks, resume) = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let events = std::mem::take(&mut queue.events);
            let acks = std::mem::take(&mut queue.fanout_acks);
            queue.bytes = 0;
            if queue.notified {
                queue.notified = false;
                let mut buf = [0u8; 8];
                let _ = io::Read::read(&mut &self.eventfd, &mut buf);
            }
            let resume = std::mem::replace(&mut queue.engine_paused, false);
            (events, acks, resume)
        };
        if resume {
            let _ = self.waker.wake();
        }
        (events, acks)
    }
}

/// Buffers shared by every connection of the thread.
struct Scratch {
    rx: Vec<u8>,
    tx: Vec<u8>,
    plain_in: Vec<u8>,
    plain_out: Vec<u8>,
    wire_events: Vec<mmtp::Event>,
    packets: Vec<Vec<u8>>,
}

/// Events of this round, published to Python at its end.
#[derive(Default)]
struct Outbox {
    events: Vec<Event>,
    bytes: usize,
    fanout_acks: HashMap<MessageId, u64>,
}

impl Outbox {
    fn push(&mut self, event: Event) {
        self.bytes += event.size_hint();
        self.events.push(event);
    }
}

/// The counter of a refusal at accept (or at a PROXY header).
fn refusal_counter(stats: &Stats, refusal: Refusal) -> &std::sync::atomic::AtomicU64 {
    match refusal {
        Refusal::MaxConnections => &stats.refused_max_connections,
        Refusal::MaxConnectionsPerIp => &stats.refused_per_ip,
    }
}

/// Un-count a socket: under `ip`, or in the total only while its PROXY header was
/// awaited (`flags` has `flag::PROXY_WAIT` then).
fn release_admission(admission: &mut Admission, ip: IpAddr, flags: u32) {
    if flags & flag::PROXY_WAIT != 0 {
        admission.release_pending();
    } else {
        admission.release(ip);
    }
}

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Send what is queued (and close_notify), shut our side, wait for the peer.
    Graceful,
    /// Close the socket now.
    Abort,
}

pub struct Engine {
    poll: Poll,
    shared: Arc<Shared>,
    config: EngineConfig,
    durations: Durations,
    conns: Slab<Conn>,
    generations: Generations,
    /// Next deadline of each slot (ms; u64::MAX: none), never later than the real one.
    deadlines: Vec<u64>,
    listeners: Vec<Option<ListenerState>>,
    admission: Admission,
    runnable: VecDeque<ConnId>,
    dirty: Vec<ConnId>,
    scratch: Scratch,
    out: Outbox,
    clock: Instant,
    now_ms: u64,
    next_sweep_ms: u64,
    reading_paused: bool,
    shutdown: bool,
    /// Connections with a dictionary delivery under way (`dicts.rs`).
    delivering: VecDeque<ConnId>,
    /// The node-wide delivery rate: bytes that may go now, refilled at `dict_refill_ms`.
    dict_tokens: f64,
    dict_refill_ms: u64,
    usage_resolver: mmtp::UsageResolver,
    /// The native RPC path (`rpc.rs`).
    rpc: rpc::RpcState,
}

impl Engine {
    /// A poll and its waker (the waker goes into `Shared`).
    pub fn poll() -> io::Result<(Poll, Waker)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok((poll, waker))
    }

    pub fn new(poll: Poll, shared: Arc<Shared>) -> Engine {
        let config = shared.config.clone();
        Engine {
            poll,
            durations: Durations {
                handshake_ms: config.handshake_timeout_ms,
                slow_consumer_grace_ms: config.slow_consumer_grace_ms,
                close_linger_ms: config.close_linger_ms,
            },
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            conns: Slab::new(),
            generations: Generations::default(),
            deadlines: Vec::new(),
            listeners: Vec::new(),
            runnable: VecDeque::new(),
            dirty: Vec::new(),
            scratch: Scratch {
                rx: vec![0; 16 * 1024 + 5],
                tx: vec![0; 64 * 1024],
                plain_in: Vec::with_capacity(64 * 1024),
                plain_out: Vec::with_capacity(64 * 1024),
                wire_events: Vec::new(),
                packets: Vec::new(),
            },
            out: Outbox::default(),
            clock: Instant::now(),
            now_ms: 0,
            next_sweep_ms: config.sweep_interval_ms,
            reading_paused: false,
            shutdown: false,
            delivering: VecDeque::new(),
            dict_tokens: 0.0,
            dict_refill_ms: 0,
            usage_resolver: UsageTable::resolver(&shared.usage),
            rpc: rpc::RpcState::default(),
            shared,
            config,
        }
    }

    /// The loop; returns on `Shutdown` (every socket is closed on the way out).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.shutdown {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Nothing sensible is left to do without a poll; stop serving.
                    break;
                }
            }
            self.tick();
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    Token(t) if t >= LISTENER_BASE => {
                        if let Some(Some(state)) = self.listeners.get_mut(t - LISTENER_BASE) {
                            state.ready = true;
                        }
                    }
                    Token(t) if t >= rpc::UPSTREAM_BASE => self.upstream_ready(
                        t - rpc::UPSTREAM_BASE,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable() || event.is_error(),
                    ),
                    Token(slot) => self.readiness(
                        slot,
                        event.is_readable() || event.is_read_closed(),
                        event.is_writable(),
                    ),
                }
            }
            if woken {
                self.check_backpressure();
            }
            self.round();
        }
        for (_, conn) in self.conns.iter_mut() {
            let _ = conn.sock.shutdown(Shutdown::Both);
        }
    }

    fn tick(&mut self) {
        self.now_ms = self.clock.elapsed().as_millis() as u64;
    }

    fn poll_timeout(&self) -> Duration {
        let busy = (!self.runnable.is_empty() && !self.reading_paused)
            || !self.dirty.is_empty()
            || self.listeners.iter().flatten().any(|l| l.ready);
        if busy {
            return Duration::ZERO;
        }
        let now = self.clock.elapsed().as_millis() as u64;
        let mut wait_ms = self.next_sweep_ms.saturating_sub(now).max(1);
        if !self.delivering.is_empty() {
            wait_ms = wait_ms.min(dicts::PACE_INTERVAL_MS);
        }
        if let Some(at) = self.rpc.report_due_ms() {
            wait_ms = wait_ms.min(at.saturating_sub(now).max(1));
        }
        Duration::from_millis(wait_ms)
    }

    /// One round after a poll: accept, read, apply commands, sweep, publish, flush.
    fn round(&mut self) {
        self.accept_all();
        self.run_commands();
        self.run_input();
        self.pace_deliveries();
        if self.now_ms >= self.next_sweep_ms {
            self.sweep();
            self.rpc_sweep();
            self.next_sweep_ms = self.now_ms + self.config.sweep_interval_ms;
        }
        self.rpc_report();
        // The round's events before its writes: Python hears a CLOSED before the
        // device can see its connection end (a closing connection's last bytes and FIN
        // go out in the flush), whoever's thread runs first.
        self.publish();
        self.flush_dirty();
        self.publish();
    }

    // ------------------------------------------------------------- readiness

    fn readiness(&mut self, slot: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if writable && !conn.tx_pending.is_empty() {
            let result =
                tlsio::flush_pending(&mut conn.sock, &mut conn.tx_pending, &self.shared.stats);
            if result.is_err() {
                self.end(slot, 0, Ending::Abort);
                return;
            }
            self.after_write(slot);
        }
        if readable {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.set(flag::READ_READY);
                let id = conn.id;
                self.enqueue(slot, id);
            }
        }
    }

    fn enqueue(&mut self, slot: usize, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.has(flag::QUEUED) {
                conn.set(flag::QUEUED);
                self.runnable.push_back(id);
            }
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if !conn.has(flag::DIRTY) {
                conn.set(flag::DIRTY);
                self.dirty.push(conn.id);
            }
        }
    }

    /// The slot of `id` if it names a live connection that still takes commands.
    fn live(&self, id: ConnId) -> Option<usize> {
        if !self.generations.is_current(id) {
            return None;
        }
        let conn = self.conns.get(id.slot())?;
        (!conn.has(flag::CLOSING)).then_some(id.slot())
    }

    fn lower_deadline(&mut self, slot: usize, at_ms: u64) {
        if let Some(deadline) = self.deadlines.get_mut(slot) {
            *deadline = (*deadline).min(at_ms);
        }
    }

    // ---------------------------------------------------------------- accept

    fn accept_all(&mut self) {
        for index in 0..self.listeners.len() {
            let ready = matches!(&self.listeners[index], Some(state) if state.ready);
            if ready {
                self.accept_from(index);
            }
        }
    }

    fn accept_from(&mut self, index: usize) {
        let budget = self.config.accepts_per_round;
        for _ in 0..budget {
            let Some(Some(state)) = self.listeners.get_mut(index) else {
                return;
            };
            let (kind, tls, proxy) = (
                state.listener.kind,
                state.listener.tls,
                state.listener.proxy,
            );
            match state.listener.socket.accept() {
                Ok((sock, addr)) => self.admit(sock, addr.ip(), kind, tls, proxy),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    state.ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // EMFILE and friends: the connection stays queued; the next SYN
                    // (or an fd freed) brings a new edge.
                    Stats::inc(&self.shared.stats.accept_errors);
                    state.ready = false;
                    return;
                }
            }
        }
        // Budget spent: `ready` stays set, the next round goes on.
    }

    fn admit(
        &mut self,
        mut sock: mio::net::TcpStream,
        ip: IpAddr,
        kind: Kind,
        tls: bool,
        proxy: bool,
    ) {
        let stats = &self.shared.stats;
        if proxy && !self.config.proxy_trusted.contains(ip) {
            // Only a balancer may say who the device is: anyone else is cut unread.
            Stats::inc(&stats.refused_proxy_untrusted);
            return;
        }
        // Behind a balancer the device's address comes with its PROXY header: until
        // then the socket counts in the total only (input.rs counts the address).
        let admitted = if proxy {
            self.admission.admit_pending()
        } else {
            self.admission.admit(ip)
        };
        if let Err(refusal) = admitted {
            Stats::inc(refusal_counter(stats, refusal));
            return; // dropped: closed before any TLS work
        }
        let pending = if proxy { flag::PROXY_WAIT } else { 0 };
        let tls_conn = if tls {
            let configs = self.shared.tls.read().unwrap_or_else(|e| e.into_inner());
            let config = configs.as_ref().map(|c| match kind {
                Kind::Mmtp => c.mmtp.clone(),
                Kind::Mqtt => c.mqtt.clone(),
            });
            match config.map(UnbufferedServerConnection::new) {
                Some(Ok(conn)) => Some(Box::new(conn)),
                _ => {
                    Stats::inc(&stats.tls_failures);
                    release_admission(&mut self.admission, ip, pending);
                    return;
                }
            }
        } else {
            None
        };
        let _ = sock.set_nodelay(true);
        let proto = match kind {
            Kind::Mmtp => {
                let presets = self
                    .shared
                    .presets
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let wire = mmtp::Connection::with_options(
                    mmtp::Role::Server,
                    self.config.mmtp,
                    self.shared.codec.clone(),
                    presets,
                    mmtp::Options {
                        counters: Some(self.shared.frames.clone()),
                        usage_for_app: Some(self.usage_resolver.clone()),
                        ..mmtp::Options::default()
                    },
                );
                Proto::Mmtp(Box::new(MmtpConn {
                    wire,
                    inflight: Vec::new(),
                    calls: Vec::new(),
                    delivery: Default::default(),
                    rpc: None,
                }))
            }
            Kind::Mqtt => Proto::Mqtt(MqttConn::default()),
        };
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            Stats::inc(&stats.accept_errors);
            release_admission(&mut self.admission, ip, pending);
            return;
        }
        let id = self.generations.id(slot);
        let timing = Timing::accepted(self.now_ms);
        entry.insert(Conn {
            sock,
            id,
            peer_ip: ip,
            tls: tls_conn,
            proto,
            rx_partial: Vec::new(),
            tx_pending: Vec::new(),
            out_plain: Vec::new(),
            timing,
            // TLS: the ClientHello's ALPN is checked before rustls sees it (input.rs).
            flags: pending,
        });
        if self.deadlines.len() <= slot {
            self.deadlines.resize(slot + 1, u64::MAX);
        }
        self.deadlines[slot] = timing.next_deadline(&self.durations);
        Stats::inc(&stats.connections_accepted);
        Stats::inc(&stats.connections);
        Stats::inc(match kind {
            Kind::Mmtp => &stats.connections_mmtp,
            Kind::Mqtt => &stats.connections_mqtt,
        });
    }

    // ----------------------------------------------------------------- input

    fn run_input(&mut self) {
        if self.reading_paused {
            return;
        }
        // Each connection queued now gets one budget this round; those with work
        // left go to the back of the queue for the next round.
        for _ in 0..self.runnable.len() {
            let Some(id) = self.runnable.pop_front() else {
                break;
            };
            if !self.generations.is_current(id) {
                continue;
            }
            let slot = id.slot();
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.clear(flag::QUEUED);
            if conn.has(flag::READ_PAUSED) && !conn.has(flag::CLOSING) {
                continue; // resumed (and re-queued) when its output drains
            }
            if self.input(slot) {
                Stats::inc(&self.shared.stats.fairness_yields);
                self.enqueue(slot, id);
            }
        }
    }

    // ---------------------------------------------------------------- output

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            if !self.generations.is_current(*id) {
                continue;
            }
            if let Some(conn) = self.conns.get_mut(id.slot()) {
                conn.clear(flag::DIRTY);
                self.flush(id.slot());
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() && dirty.capacity() <= 1 << 16 {
            self.dirty = dirty;
        }
    }

    /// Encrypt and send what the connection has queued, in one TLS pass and write.
    fn flush(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let scratch = &mut self.scratch;
        let stats = &self.shared.stats;
        scratch.plain_out.clear();
        if !conn.out_plain.is_empty() {
            scratch.plain_out.append(&mut conn.out_plain);
            conn.out_plain = Vec::new();
        }
        if let Proto::Mmtp(m) = &mut conn.proto {
            m.wire.take_output(&mut scratch.plain_out);
        }
        let closing = conn.has(flag::CLOSING) && !conn.has(flag::CLOSE_NOTIFY_SENT);
        let tls_started = conn.has(flag::TLS_STARTED);
        let Conn {
            tls,
            sock,
            tx_pending,
            rx_partial,
            out_plain,
            ..
        } = conn;
        let result = match tls {
            Some(tls) => {
                if !tls_started {
                    // rustls has not seen the ClientHello: nothing may be sent yet.
                    out_plain.extend_from_slice(&scratch.plain_out);
                    Ok(())
                } else {
                    let mut input = std::mem::take(rx_partial);
                    scratch.plain_in.clear();
                    let pass = tlsio::pass(
                        tls,
                        sock,
                        tx_pending,
                        &mut input,
                        &mut scratch.plain_in,
                        &scratch.plain_out,
                        closing,
                        false,
                        &mut scratch.tx,
                        stats,
                    );
                    debug_assert!(scratch.plain_in.is_empty(), "records are read on input");
                    scratch.plain_in.clear();
                    match pass {
                        Ok(pass) => {
                            if pass.consumed < input.len() {
                                input.drain(..pass.consumed);
                                *rx_partial = input;
                            }
                            if !pass.wrote && !scratch.plain_out.is_empty() {
                                out_plain.extend_from_slice(&scratch.plain_out);
                            }
                            if closing && pass.writable {
                                conn.set(flag::CLOSE_NOTIFY_SENT);
                            }
                            Ok(())
                        }
                        Err(_) => Err(()),
                    }
                }
            }
            None => tlsio::send(sock, tx_pending, &scratch.plain_out, stats).map_err(|_| ()),
        };
        if scratch.plain_out.capacity() > 4 << 20 {
            scratch.plain_out = Vec::with_capacity(64 * 1024);
        }
        if result.is_err() {
            Stats::inc(&stats.tls_failures);
            self.end(slot, 0, Ending::Abort);
            return;
        }
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.has(flag::HELD_OUTPUT) {
                // The held session ticket, and what this flush queued behind it.
                conn.clear(flag::HELD_OUTPUT);
                if tlsio::flush_pending(&mut conn.sock, &mut conn.tx_pending, stats).is_err() {
                    Stats::inc(&stats.tls_failures);
                    self.end(slot, 0, Ending::Abort);
                    return;
                }
            }
        }
        self.after_write(slot);
    }

    /// After bytes went out (or were queued): slow-consumer rules, closing progress.
    fn after_write(&mut self, slot: usize) {
        let now = self.now_ms;
        let high = self.config.send_buffer_high_water_bytes;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.has(flag::CLOSING) {
            if conn.tx_pending.is_empty() {
                if conn.has(flag::PEER_EOF) {
                    self.remove(slot);
                } else if !conn.has(flag::WRITE_SHUT) {
                    conn.set(flag::WRITE_SHUT);
                    let _ = conn.sock.shutdown(Shutdown::Write);
                }
            }
            return;
        }
        let pending = conn.pending_output();
        if pending > 4 * high {
            Stats::inc(&self.shared.stats.slow_consumers);
            self.end(slot, mmtp::ErrorCode::SlowConsumer.value(), Ending::Abort);
        } else if pending > high {
            if conn.timing.slow_since_ms.is_none() {
                conn.timing.slow_since_ms = Some(now);
                conn.set(flag::READ_PAUSED);
                let at = now + self.config.slow_consumer_grace_ms;
                self.lower_deadline(slot, at);
            }
        } else if conn.timing.slow_since_ms.is_some() && pending <= high / 4 {
            conn.timing.slow_since_ms = None;
            conn.clear(flag::READ_PAUSED);
            if conn.has(flag::READ_READY) || conn.has(flag::MORE_INPUT) {
                let id = conn.id;
                self.enqueue(slot, id);
            }
        }
    }

    // ---------------------------------------------------------------- ending

    /// End a connection: Python hears CLOSED (if it knew of it) at once; the
    /// socket goes now (Abort) or after its last bytes (Graceful).
    fn end(&mut self, slot: usize, reason: u64, ending: Ending) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if !conn.has(flag::CLOSING) {
            conn.set(flag::CLOSING);
            conn.clear(flag::READ_PAUSED);
            self.rpc_conn_ending(slot);
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            conn.timing.closing(now);
            if conn.has(flag::TOLD) {
                let id = conn.id;
                if let Proto::Mmtp(m) = &mut conn.proto {
                    for (_, call_token) in std::mem::take(&mut m.calls) {
                        self.out.push(Event::Answer {
                            conn: id,
                            call_token,
                            status: mmtp::ErrorCode::Unavailable.value(),
                            headers: mmtp::Headers::new(),
                            body: Vec::new(),
                            retry_after_ms: 0,
                            message: "device went away".into(),
                        });
                    }
                    m.inflight = Vec::new();
                }
                if self.rpc.report_due_ms().is_some() {
                    // Its answered native calls first, while Python still knows the device.
                    let done = self.rpc.take_done();
                    self.out.push(Event::RpcDone(done));
                }
                self.out.push(Event::Closed { conn: id, reason });
            }
            if ending == Ending::Graceful {
                let at = now + self.config.close_linger_ms;
                self.lower_deadline(slot, at);
                // Its last bytes (and close_notify, FIN) go out with the round's flush,
                // after the round's events are published.
                self.mark_dirty(slot);
                return;
            }
        }
        if ending == Ending::Abort {
            self.remove(slot);
        }
    }

    fn remove(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        let mut conn = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        release_admission(&mut self.admission, conn.peer_ip, conn.flags);
        self.generations.retire(slot);
        if let Some(deadline) = self.deadlines.get_mut(slot) {
            *deadline = u64::MAX;
        }
        let stats = &self.shared.stats;
        if let Proto::Mqtt(MqttConn { out: Some(out), .. }) = &conn.proto {
            commands::track_pushes(stats, out.pushes(), (0, 0));
            let mut held = self
                .shared
                .mqtt_held
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            held.remove(&conn.id);
        }
        Stats::dec(&stats.connections);
        Stats::dec(if conn.is_mmtp() {
            &stats.connections_mmtp
        } else {
            &stats.connections_mqtt
        });
    }

    // ------------------------------------------------------------- deadlines

    fn sweep(&mut self) {
        let now = self.now_ms;
        for slot in 0..self.deadlines.len() {
            if self.deadlines[slot] > now {
                continue;
            }
            let Some(conn) = self.conns.get(slot) else {
                self.deadlines[slot] = u64::MAX;
                continue;
            };
            match conn.timing.expired(now, &self.durations) {
                None => self.deadlines[slot] = conn.timing.next_deadline(&self.durations),
                Some(expiry) => self.expire(slot, expiry),
            }
        }
    }

    fn expire(&mut self, slot: usize, expiry: Expiry) {
        let stats = &self.shared.stats;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let (code, message, counter) = match expiry {
            Expiry::Linger => {
                Stats::inc(&stats.linger_expired);
                self.remove(slot);
                return;
            }
            Expiry::SlowConsumer => {
                // Its buffer is full: an ERROR frame would never reach it. Just cut.
                Stats::inc(&stats.slow_consumers);
                self.end(slot, mmtp::ErrorCode::SlowConsumer.value(), Ending::Abort);
                return;
            }
            Expiry::Handshake => (
                mmtp::ErrorCode::HandshakeTimeout,
                format!(
                    "no HELLO within {} s",
                    self.config.handshake_timeout_ms as f64 / 1000.0
                ),
                &stats.handshake_timeouts,
            ),
            Expiry::Idle => (
                mmtp::ErrorCode::IdleTimeout,
                format!("no frame for {:.0} s", conn.timing.idle_ms as f64 / 1000.0),
                &stats.idle_closed,
            ),
        };
        Stats::inc(counter);
        let tls_ready = conn.tls.as_ref().map_or(true, |t| !t.is_handshaking());
        if !tls_ready {
            self.end(slot, code.value(), Ending::Abort);
            return;
        }
        if let Proto::Mmtp(m) = &mut conn.proto {
            m.wire.close_with_error(code, &message, 0);
        }
        self.end(slot, code.value(), Ending::Graceful);
    }

    // ---------------------------------------------------------------- events

    fn publish(&mut self) {
        if let Some(early) = &self.shared.early {
            // Tickets rustls issued this round, for the fleet's store.
            for (ticket_id, state) in early.store.take_issued() {
                Stats::inc(&self.shared.stats.tls_tickets_issued);
                self.out.push(Event::TlsTicket { ticket_id, state });
            }
        }
        if self.out.events.is_empty() && self.out.fanout_acks.is_empty() {
            return;
        }
        let stats = &self.shared.stats;
        Stats::add(&stats.events, self.out.events.len() as u64);
        let over = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.events.is_empty() {
                std::mem::swap(&mut queue.events, &mut self.out.events);
            } else {
                queue.events.append(&mut self.out.events);
            }
            for (message_id, count) in self.out.fanout_acks.drain() {
                *queue.fanout_acks.entry(message_id).or_insert(0) += count;
            }
            queue.bytes += self.out.bytes + 64 * queue.fanout_acks.len();
            if !queue.notified {
                queue.notified = true;
                Stats::inc(&stats.event_batches);
                let _ = (&self.shared.eventfd).write(&1u64.to_ne_bytes());
            }
            let over = queue.bytes > self.config.max_pending_event_bytes;
            queue.engine_paused = over;
            over
        };
        self.out.bytes = 0;
        if over && !self.reading_paused {
            Stats::inc(&stats.event_backpressure_pauses);
        }
        self.reading_paused = over;
    }

    fn check_backpressure(&mut self) {
        if self.reading_paused {
            let queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            self.reading_paused = queue.bytes > self.config.max_pending_event_bytes;
        }
    }
}
