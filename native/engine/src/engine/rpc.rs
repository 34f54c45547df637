//! The native RPC path: a device's REQUEST answered from the engine thread when
//! Python said it may be (`RPC_TABLE`, `RPC_SESSION`), over kept-alive HTTP/1.1
//! connections of the engine's own, without a Python call on the way.
//!
//! Python keeps the decisions: which routes (no rules, no mirror, an `http://`
//! cluster of IP endpoints with a closed breaker), their endpoints and timeouts, each
//! device's identity headers and request rate. The engine applies them: the rate
//! limit of every request of such a device (`Event::Request.gate`), then, for a call
//! within the connection's cap on calls in flight (`RpcCluster::max_calls`, the
//! engine's and Python's together) whose headers go upstream unchanged, the request
//! Python would write (`h1::encode_request`), each call on its own idle connection to
//! the endpoint the round robin picks (or a new one, within `max_connections`).
//!
//! Only a simple whole 2xx (`h1::simple_answer`) is answered here; anything else goes
//! back to Python exactly where FastCall's fallback would pick it up: nothing sent
//! (no connection, connect failure) as a REQUEST, something sent as `RpcHandoff` (the
//! socket itself and the bytes read so far), so Python's codec, retries, timeouts
//! and error statuses decide as they do for its own calls. A call still unanswered
//! at a sweep that is at least a sweep interval old (or whose deadline falls before
//! the next sweep) is handed off the same way: the engine keeps no timers of its own.
//! Answered calls reach Python in batches (`RpcDone`, every `rpc_report_interval_ms`
//! or 256 calls) for its metrics, breaker and sampling.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use super::conn::{flag, Proto};
use super::{Ending, Engine};
use crate::boundary::{Event, RpcHandoff, RpcOutcome, RpcSessionInfo, RpcTable, Sampling};
use crate::h1::{self, Answer};
use crate::ids::ConnId;
use crate::stats::Stats;

/// Upstream connection tokens sit above every device slot (u32) and below listeners.
pub(super) const UPSTREAM_BASE: usize = 1 << 36;
/// Outcomes gathered before a report goes up whatever the interval.
const REPORT_MAX_CALLS: usize = 256;

/// A device's native RPC state (`RPC_SESSION`); its request bucket is
/// `channel.ratelimit.TokenBucket`, started full.
pub struct RpcConn {
    identity: Box<[u8]>,
    rate: f64,
    burst: f64,
    tokens: f64,
    stamp_s: f64,
    sample: Option<Sampling>,
    /// Python turned its native calls off (its calls keep being gated here).
    native: bool,
    /// Close once `calls` is empty (`CLOSE_IDLE` came while some were in flight).
    close_idle: bool,
    /// Native calls in flight: (stream id, upstream slot).
    calls: Vec<(u64, usize)>,
}

impl RpcConn {
    /// `TokenBucket.take`: 0.0, or the seconds until a token is there.
    fn take(&mut self, now_s: f64) -> f64 {
        let elapsed = now_s - self.stamp_s;
        if elapsed > 0.0 {
            self.tokens = self.burst.min(self.tokens + elapsed * self.rate);
            self.stamp_s = now_s;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return 0.0;
        }
        if self.rate <= 0.0 {
            return 60.0;
        }
        (1.0 - self.tokens) / self.rate
    }
}

struct NativeCall {
    conn: ConnId,
    stream_id: u64,
    op: String,
    headers: mmtp::Headers,
    body: Vec<u8>,
    early: bool,
    route: String,
    cluster: String,
    started: Instant,
    started_ms: u64,
    deadline_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UpState {
    Connecting,
    Busy,
    Idle,
}

struct Upstream {
    sock: TcpStream,
    generation: u64,
    cluster: usize,
    endpoint: usize,
    state: UpState,
    /// The answer's bytes so far.
    buf: Vec<u8>,
    /// The request's bytes the socket has not taken yet.
    unsent: Vec<u8>,
    reused: bool,
    idle_since_ms: u64,
    call: Option<Box<NativeCall>>,
}

#[derive(Default)]
struct ClusterState {
    next: usize,
    open: usize,
    /// Idle upstream slots, most recently used last.
    idle: Vec<usize>,
    down_until_ms: Vec<u64>,
}

/// The engine's RPC state.
#[derive(Default)]
pub struct RpcState {
    table: Option<Box<RpcTable>>,
    exact: HashMap<String, usize>,
    prefixes: HashMap<String, usize>,
    default: Option<usize>,
    generation: u64,
    clusters: Vec<ClusterState>,
    upstreams: Slab<Upstream>,
    done: Vec<RpcOutcome>,
    report_at_ms: u64,
    /// xorshift64 state for the sampling draw (0: not seeded yet).
    rng: u64,
}

impl RpcState {
    /// The route of `op` (exact, the longest `prefix.`, else `*`), as `_RouteTable.match`.
    fn route(&self, op: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(op) {
            return Some(i);
        }
        let mut end = op.len();
        while let Some(dot) = op[..end].rfind('.') {
            if let Some(&i) = self.prefixes.get(&op[..=dot]) {
                return Some(i);
            }
            end = dot;
        }
        self.default
    }

    fn idempotent(&self, op: &str) -> bool {
        let (Some(table), Some(i)) = (self.table.as_deref(), self.route(op)) else {
            return false;
        };
        let route = &table.routes[i];
        route.idempotent || route.idempotent_ops.iter().any(|o| o == op)
    }

    /// The sampler's draw for one body: within the sizes, then at random.
    fn wants(&mut self, sample: Option<Sampling>, body: &[u8]) -> bool {
        let Some(s) = sample else {
            return false;
        };
        if !(s.min_bytes..=s.max_bytes).contains(&body.len()) {
            return false;
        }
        if self.rng == 0 {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.rng = seed | 1;
        }
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        ((x >> 11) as f64 / (1u64 << 53) as f64) < s.fraction
    }

    pub(super) fn take_done(&mut self) -> Vec<RpcOutcome> {
        std::mem::take(&mut self.done)
    }

    /// When a report of answered calls is due (None: nothing to report).
    pub(super) fn report_due_ms(&self) -> Option<u64> {
        (!self.done.is_empty()).then_some(self.report_at_ms)
    }
}

/// A REQUEST as the wire gave it.
pub(super) struct Request {
    pub stream_id: u64,
    pub op: String,
    pub headers: mmtp::Headers,
    pub body: Vec<u8>,
    pub early: bool,
}

impl Engine {
    fn now_s(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    fn request_to_python(&mut self, conn: ConnId, req: Request, gate: Option<u64>, busy: u64) {
        self.out.push(Event::Request {
            conn,
            stream_id: req.stream_id,
            op: req.op,
            headers: req.headers,
            body: req.body,
            early: req.early,
            gate,
            busy,
        });
    }

    /// A device's REQUEST: gated and served here if it may be, else Python's.
    pub(super) fn rpc_request(&mut self, slot: usize, req: Request) {
        let now_s = self.now_s();
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let id = conn.id;
        let closing = conn.has(flag::CLOSING);
        let Proto::Mmtp(m) = &mut conn.proto else {
            return;
        };
        // Every call of the connection in flight, this one included: the engine's and
        // those Python serves (their streams stay open until answered). Streams the
        // same read brought after this one are open already: ids only grow, so they
        // are the ones above it.
        let in_flight = m
            .wire
            .open_remote_streams()
            .filter(|&s| s <= req.stream_id)
            .count();
        let Some(rc) = m.rpc.as_deref_mut() else {
            self.request_to_python(id, req, None, 0);
            return;
        };
        let busy = rc.calls.len() as u64;
        if req.early && !self.rpc.idempotent(&req.op) {
            // Python refuses it unprocessed, before the rate limit (spec 8.5).
            self.request_to_python(id, req, None, busy);
            return;
        }
        let wait_s = rc.take(now_s);
        if wait_s > 0.0 {
            let retry_after_ms = (wait_s * 1000.0) as u64 + 1;
            self.request_to_python(id, req, Some(retry_after_ms), busy);
            return;
        }
        let eligible = rc.native && !rc.close_idle && !closing;
        let target = if eligible {
            self.native_target(&req, in_flight)
        } else {
            None
        };
        let Some((route, cluster, endpoint, timeout_ms)) = target else {
            self.request_to_python(id, req, Some(0), busy);
            return;
        };
        self.start_native(slot, id, req, route, cluster, endpoint, timeout_ms);
    }

    /// (route, cluster, endpoint, timeout) for a call the engine may send, else None.
    /// Over the cluster's `max_calls` it is Python's, which refuses it or serves it.
    fn native_target(
        &mut self,
        req: &Request,
        in_flight: usize,
    ) -> Option<(usize, usize, usize, u64)> {
        let now = self.now_ms;
        let rpc = &mut self.rpc;
        let table = rpc.table.as_deref()?;
        if !h1::op_ok(&req.op) || !h1::forwardable(&req.headers) {
            return None;
        }
        let route = rpc.route(&req.op)?;
        let (cluster, timeout_ms) = table.routes[route].native?;
        if in_flight > table.clusters[cluster].max_calls {
            return None;
        }
        let state = &mut rpc.clusters[cluster];
        let count = table.clusters[cluster].endpoints.len();
        // ClusterPool.pick: round robin over the endpoints not marked down.
        for i in 0..count {
            let endpoint = (state.next + i) % count;
            if state.down_until_ms[endpoint] <= now {
                state.next = (state.next + i + 1) % count;
                return Some((route, cluster, endpoint, timeout_ms));
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn start_native(
        &mut self,
        slot: usize,
        id: ConnId,
        req: Request,
        route: usize,
        cluster: usize,
        endpoint: usize,
        timeout_ms: u64,
    ) {
        let now = self.now_ms;
        let Some(max_connections) = self
            .rpc
            .table
            .as_deref()
            .map(|t| t.clusters[cluster].max_connections)
        else {
            return;
        };
        let up = match self.idle_upstream(cluster, endpoint) {
            Some(up) => up,
            None if self.rpc.clusters[cluster].open < max_connections => {
                match self.connect_upstream(cluster, endpoint) {
                    Some(up) => up,
                    None => {
                        self.request_to_python(id, req, Some(0), self.native_busy(slot));
                        return;
                    }
                }
            }
            None => {
                self.request_to_python(id, req, Some(0), self.native_busy(slot));
                return;
            }
        };
        let Some(table) = self.rpc.table.as_deref() else {
            return;
        };
        let spec = &table.clusters[cluster];
        let ep = &spec.endpoints[endpoint];
        let identity = match &self.conns[slot].proto {
            Proto::Mmtp(m) => m.rpc.as_deref().map(|rc| &rc.identity[..]),
            Proto::Mqtt(_) => None,
        }
        .unwrap_or(&[]);
        let upstream = &mut self.rpc.upstreams[up];
        upstream.unsent.clear();
        h1::encode_request(
            &mut upstream.unsent,
            &ep.prefix,
            &req.op,
            &ep.authority,
            &table.user_agent,
            &req.headers,
            identity,
            &req.body,
        );
        upstream.call = Some(Box::new(NativeCall {
            conn: id,
            stream_id: req.stream_id,
            op: req.op,
            headers: req.headers,
            body: req.body,
            early: req.early,
            route: table.routes[route].pattern.clone(),
            cluster: spec.name.clone(),
            started: Instant::now(),
            started_ms: now,
            deadline_ms: now + timeout_ms,
        }));
        let stream_id = upstream.call.as_ref().map_or(0, |c| c.stream_id);
        if let Proto::Mmtp(m) = &mut self.conns[slot].proto {
            if let Some(rc) = m.rpc.as_deref_mut() {
                rc.calls.push((stream_id, up));
            }
        }
        Stats::inc(&self.shared.stats.rpc_native_started);
        if upstream.state == UpState::Busy {
            self.upstream_write(up);
        }
    }

    /// The most recently used idle connection to the endpoint that is still fresh.
    fn idle_upstream(&mut self, cluster: usize, endpoint: usize) -> Option<usize> {
        let keepalive_ms = self.rpc.table.as_deref()?.clusters[cluster].keepalive_ms;
        let now = self.now_ms;
        let idle = &self.rpc.clusters[cluster].idle;
        let at = idle
            .iter()
            .rposition(|&up| self.rpc.upstreams[up].endpoint == endpoint)?;
        let up = self.rpc.clusters[cluster].idle.remove(at);
        let upstream = &mut self.rpc.upstreams[up];
        if now.saturating_sub(upstream.idle_since_ms) >= keepalive_ms {
            self.close_upstream(up);
            return None;
        }
        upstream.state = UpState::Busy;
        upstream.reused = true;
        Some(up)
    }

    fn connect_upstream(&mut self, cluster: usize, endpoint: usize) -> Option<usize> {
        let addr = self.rpc.table.as_deref()?.clusters[cluster].endpoints[endpoint].addr;
        let stats = &self.shared.stats;
        Stats::inc(&stats.rpc_upstream_connects);
        let Ok(mut sock) = TcpStream::connect(addr) else {
            Stats::inc(&stats.rpc_upstream_connect_failures);
            return None;
        };
        let entry = self.rpc.upstreams.vacant_entry();
        let up = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                Token(UPSTREAM_BASE + up),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            Stats::inc(&stats.rpc_upstream_connect_failures);
            return None;
        }
        entry.insert(Upstream {
            sock,
            generation: self.rpc.generation,
            cluster,
            endpoint,
            state: UpState::Connecting,
            buf: Vec::new(),
            unsent: Vec::new(),
            reused: false,
            idle_since_ms: 0,
            call: None,
        });
        self.rpc.clusters[cluster].open += 1;
        Some(up)
    }

    /// Readiness of an upstream connection.
    pub(super) fn upstream_ready(&mut self, up: usize, readable: bool, writable: bool) {
        let Some(upstream) = self.rpc.upstreams.get_mut(up) else {
            return;
        };
        if writable && upstream.state == UpState::Connecting {
            match (upstream.sock.take_error(), upstream.sock.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    let _ = upstream.sock.set_nodelay(true);
                    upstream.state = UpState::Busy;
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                _ => {
                    Stats::inc(&self.shared.stats.rpc_upstream_connect_failures);
                    self.unsent_to_python(up);
                    return;
                }
            }
        }
        let Some(upstream) = self.rpc.upstreams.get_mut(up) else {
            return;
        };
        if upstream.state == UpState::Busy
            && !upstream.unsent.is_empty()
            && writable
            && !self.upstream_write(up)
        {
            return;
        }
        if readable {
            self.upstream_read(up);
        }
    }

    /// Write what the request has left; false if the call was handed off.
    fn upstream_write(&mut self, up: usize) -> bool {
        let upstream = &mut self.rpc.upstreams[up];
        while !upstream.unsent.is_empty() {
            match upstream.sock.write(&upstream.unsent) {
                Ok(0) => break,
                Ok(n) => {
                    upstream.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if upstream.unsent.is_empty() {
            return true;
        }
        // The socket broke: Python sees it as its own connection would.
        self.handoff(up);
        false
    }

    fn upstream_read(&mut self, up: usize) {
        // Bounded: past the longest simple answer the buffer is `Other` anyway, and
        // Python's codec reads the rest under its own limits.
        let cap = self
            .rpc
            .table
            .as_deref()
            .and_then(|t| t.clusters.get(self.rpc.upstreams[up].cluster))
            .map_or(0, |c| c.limits.max_head_bytes + c.limits.max_body_bytes + 1);
        let mut chunk = std::mem::take(&mut self.scratch.rx);
        let mut eof = false;
        let mut failed = false;
        {
            let upstream = &mut self.rpc.upstreams[up];
            loop {
                match upstream.sock.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        if upstream.state != UpState::Busy {
                            failed = true; // bytes nobody asked for
                            break;
                        }
                        upstream.buf.extend_from_slice(&chunk[..n]);
                        if upstream.buf.len() > cap {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        self.scratch.rx = chunk;
        let upstream = &self.rpc.upstreams[up];
        match upstream.state {
            UpState::Idle => {
                if eof || failed {
                    self.close_upstream(up);
                }
            }
            UpState::Connecting => {}
            UpState::Busy => {
                let limits = self
                    .rpc
                    .table
                    .as_deref()
                    .filter(|_| upstream.generation == self.rpc.generation)
                    .map(|t| t.clusters[upstream.cluster].limits);
                let answer = match limits {
                    Some(limits) => h1::simple_answer(&upstream.buf, &limits),
                    None => Answer::Other, // a reload replaced the cluster: Python's
                };
                match answer {
                    Answer::Whole {
                        headers,
                        body_start,
                    } => self.answered(up, headers, body_start, eof),
                    Answer::Partial if !eof => {}
                    _ => self.handoff(up),
                }
            }
        }
    }

    /// A simple 2xx: to the device as Python's fast path would send it, accounted later.
    fn answered(&mut self, up: usize, headers: Vec<(String, String)>, start: usize, eof: bool) {
        let upstream = &mut self.rpc.upstreams[up];
        let Some(call) = upstream.call.take() else {
            return;
        };
        let mut buf = std::mem::take(&mut upstream.buf);
        let body = buf.split_off(start);
        let mut sample = None;
        let mut delivered = false;
        if let Some(slot) = self.live_native(call.conn) {
            let conn = &mut self.conns[slot];
            if let Proto::Mmtp(m) = &mut conn.proto {
                let mut close = false;
                if let Some(rc) = m.rpc.as_deref_mut() {
                    rc.calls.retain(|&(s, _)| s != call.stream_id);
                    sample = rc.sample;
                    close = rc.close_idle && rc.calls.is_empty();
                }
                // As Command::Respond: an answer too large for the device is an error.
                match m.wire.send_response(call.stream_id, &body, &headers[..], 0) {
                    Ok(_) => {}
                    Err(mmtp::LocalError::MessageTooLarge(why)) => {
                        let why: String = why.chars().take(200).collect();
                        let _ = m.wire.send_error(
                            call.stream_id,
                            mmtp::ErrorCode::UpstreamError,
                            &why,
                            0,
                        );
                    }
                    Err(_) => {}
                }
                delivered = true;
                self.mark_dirty(slot);
                if close {
                    self.end(slot, 0, Ending::Graceful);
                }
            }
        }
        Stats::inc(&self.shared.stats.rpc_native_answered);
        let took_us = call.started.elapsed().as_micros() as u64;
        if self.rpc.done.is_empty() {
            self.rpc.report_at_ms = self.now_ms + self.config.rpc_report_interval_ms;
        }
        let request_body = self.rpc.wants(sample, &call.body).then_some(call.body);
        let response_body = (delivered && self.rpc.wants(sample, &body)).then_some(body);
        self.rpc.done.push(RpcOutcome {
            conn: call.conn,
            route: call.route,
            cluster: call.cluster,
            took_us,
            early: call.early,
            request_body,
            response_body,
        });
        // Back to the pool, unless the upstream closed or a reload replaced the cluster.
        let upstream = &mut self.rpc.upstreams[up];
        if eof || upstream.generation != self.rpc.generation {
            self.close_upstream(up);
            return;
        }
        upstream.state = UpState::Idle;
        upstream.idle_since_ms = self.now_ms;
        let cluster = upstream.cluster;
        self.rpc.clusters[cluster].idle.push(up);
    }

    /// The device connection of a native call, if it still takes answers.
    fn live_native(&self, id: ConnId) -> Option<usize> {
        self.live(id)
    }

    /// The call was sent and did not end simply: Python takes the socket and goes on.
    fn handoff(&mut self, up: usize) {
        let Some(mut upstream) = self.remove_upstream(up) else {
            return;
        };
        let Some(call) = upstream.call.take() else {
            return;
        };
        let Some(slot) = self.forget_call(&call) else {
            return; // the device is gone: the socket closes here
        };
        let _ = slot;
        Stats::inc(&self.shared.stats.rpc_handoffs);
        let fd = OwnedFd::from(upstream.sock);
        let elapsed_us = call.started.elapsed().as_micros() as u64;
        self.out.push(Event::RpcHandoff(Box::new(RpcHandoff {
            conn: call.conn,
            stream_id: call.stream_id,
            op: call.op,
            headers: call.headers,
            body: call.body,
            early: call.early,
            route: call.route,
            cluster: call.cluster,
            endpoint: upstream.endpoint,
            fd,
            received: upstream.buf,
            unsent: upstream.unsent,
            reused: upstream.reused,
            elapsed_us,
        })));
    }

    /// Nothing was sent (the connection never came up): the call is Python's, as a REQUEST.
    fn unsent_to_python(&mut self, up: usize) {
        let Some(mut upstream) = self.remove_upstream(up) else {
            return;
        };
        let Some(call) = upstream.call.take() else {
            return;
        };
        let Some(slot) = self.forget_call(&call) else {
            return;
        };
        Stats::inc(&self.shared.stats.rpc_unsent);
        let req = Request {
            stream_id: call.stream_id,
            op: call.op,
            headers: call.headers,
            body: call.body,
            early: call.early,
        };
        self.request_to_python(call.conn, req, Some(0), self.native_busy(slot));
    }

    /// Native calls in flight on a device connection (`Event::Request.busy`).
    fn native_busy(&self, slot: usize) -> u64 {
        match self.conns.get(slot).map(|c| &c.proto) {
            Some(Proto::Mmtp(m)) => m.rpc.as_deref().map_or(0, |rc| rc.calls.len() as u64),
            _ => 0,
        }
    }

    /// Take the call off its device's list; the device's slot if it is still there.
    /// A pending `CLOSE_IDLE` is Python's again: its session closes once it answers.
    fn forget_call(&mut self, call: &NativeCall) -> Option<usize> {
        let slot = self.live(call.conn)?;
        if let Proto::Mmtp(m) = &mut self.conns[slot].proto {
            if let Some(rc) = m.rpc.as_deref_mut() {
                rc.calls.retain(|&(s, _)| s != call.stream_id);
                rc.close_idle = false;
            }
        }
        Some(slot)
    }

    fn remove_upstream(&mut self, up: usize) -> Option<Upstream> {
        let mut upstream = self.rpc.upstreams.try_remove(up)?;
        let _ = self.poll.registry().deregister(&mut upstream.sock);
        if upstream.generation == self.rpc.generation {
            let state = &mut self.rpc.clusters[upstream.cluster];
            state.open = state.open.saturating_sub(1);
            state.idle.retain(|&i| i != up);
        }
        Some(upstream)
    }

    fn close_upstream(&mut self, up: usize) {
        drop(self.remove_upstream(up));
    }

    /// A device connection ends: its native calls end too (their sockets close), as a
    /// cancelled FastCall's would; Python hears nothing of them.
    pub(super) fn rpc_conn_ending(&mut self, slot: usize) {
        let calls = match self.conns.get_mut(slot).map(|c| &mut c.proto) {
            Some(Proto::Mmtp(m)) => match m.rpc.as_deref_mut() {
                Some(rc) => std::mem::take(&mut rc.calls),
                None => return,
            },
            _ => return,
        };
        for (_, up) in calls {
            Stats::inc(&self.shared.stats.rpc_native_cancelled);
            self.close_upstream(up);
        }
    }

    /// The device cancelled a stream: true if it was a native call (now ended).
    pub(super) fn rpc_cancel(&mut self, slot: usize, stream_id: u64) -> bool {
        let up = match self.conns.get_mut(slot).map(|c| &mut c.proto) {
            Some(Proto::Mmtp(m)) => match m.rpc.as_deref_mut() {
                Some(rc) => {
                    let Some(at) = rc.calls.iter().position(|&(s, _)| s == stream_id) else {
                        return false;
                    };
                    rc.calls.swap_remove(at).1
                }
                None => return false,
            },
            _ => return false,
        };
        Stats::inc(&self.shared.stats.rpc_native_cancelled);
        self.close_upstream(up);
        true
    }

    /// Deadlines: idle connections past keep-alive close; calls that are not quick hand
    /// off to Python (which keeps the exact timeout).
    pub(super) fn rpc_sweep(&mut self) {
        let now = self.now_ms;
        let interval = self.config.sweep_interval_ms;
        let keepalive: Vec<u64> = match self.rpc.table.as_deref() {
            Some(t) => t.clusters.iter().map(|c| c.keepalive_ms).collect(),
            None => Vec::new(),
        };
        let mut close = Vec::new();
        let mut hand = Vec::new();
        let mut unsent = Vec::new();
        for (up, upstream) in self.rpc.upstreams.iter() {
            match (&upstream.call, upstream.state) {
                (None, UpState::Idle) => {
                    let current = upstream.generation == self.rpc.generation;
                    let limit = keepalive.get(upstream.cluster).copied().unwrap_or(0);
                    if !current || now.saturating_sub(upstream.idle_since_ms) >= limit {
                        close.push(up);
                    }
                }
                (Some(call), state) => {
                    let old = now.saturating_sub(call.started_ms) >= interval;
                    if old || call.deadline_ms <= now + interval {
                        if state == UpState::Connecting {
                            unsent.push(up);
                        } else {
                            hand.push(up);
                        }
                    }
                }
                (None, _) => close.push(up),
            }
        }
        for up in close {
            self.close_upstream(up);
        }
        for up in hand {
            self.handoff(up);
        }
        for up in unsent {
            self.unsent_to_python(up);
        }
    }

    /// The answered calls for Python, when the report is due.
    pub(super) fn rpc_report(&mut self) {
        let due = self.rpc.done.len() >= REPORT_MAX_CALLS
            || self.rpc.report_due_ms().is_some_and(|at| self.now_ms >= at);
        if due {
            let done = std::mem::take(&mut self.rpc.done);
            self.out.push(Event::RpcDone(done));
        }
    }

    // ------------------------------------------------------------- commands

    pub(super) fn rpc_table(&mut self, table: Option<Box<RpcTable>>) {
        // Idle connections go (endpoints may have moved); busy ones finish on the old
        // table's terms and close.
        let idle: Vec<usize> = self
            .rpc
            .upstreams
            .iter()
            .filter(|(_, u)| u.state == UpState::Idle)
            .map(|(up, _)| up)
            .collect();
        for up in idle {
            self.close_upstream(up);
        }
        let rpc = &mut self.rpc;
        rpc.generation += 1;
        rpc.exact.clear();
        rpc.prefixes.clear();
        rpc.default = None;
        rpc.clusters.clear();
        if let Some(table) = &table {
            for (i, route) in table.routes.iter().enumerate() {
                if route.pattern == "*" {
                    rpc.default = Some(i);
                } else if route.pattern.ends_with('.') {
                    rpc.prefixes.insert(route.pattern.clone(), i);
                } else {
                    rpc.exact.insert(route.pattern.clone(), i);
                }
            }
            let now = self.now_ms;
            rpc.clusters = table
                .clusters
                .iter()
                .map(|c| ClusterState {
                    down_until_ms: c.endpoints.iter().map(|e| now + e.down_ms).collect(),
                    ..ClusterState::default()
                })
                .collect();
        }
        rpc.table = table;
    }

    pub(super) fn rpc_session(&mut self, id: ConnId, info: Option<Box<RpcSessionInfo>>) {
        let now_s = self.now_s();
        let Some(slot) = self.live(id) else {
            self.stale();
            return;
        };
        let Proto::Mmtp(m) = &mut self.conns[slot].proto else {
            return;
        };
        match (info, m.rpc.as_deref_mut()) {
            (None, Some(rc)) => rc.native = false,
            (None, None) => {}
            (Some(info), Some(rc)) => {
                rc.identity = info.identity;
                rc.sample = info.sample;
                rc.native = true;
            }
            (Some(info), None) => {
                m.rpc = Some(Box::new(RpcConn {
                    identity: info.identity,
                    rate: info.requests_per_second,
                    burst: info.request_burst,
                    tokens: info.tokens.min(info.request_burst),
                    stamp_s: now_s,
                    sample: info.sample,
                    native: true,
                    close_idle: false,
                    calls: Vec::new(),
                }))
            }
        }
    }

    pub(super) fn close_idle(&mut self, id: ConnId) {
        let Some(slot) = self.live(id) else {
            self.stale();
            return;
        };
        if let Proto::Mmtp(m) = &mut self.conns[slot].proto {
            if let Some(rc) = m.rpc.as_deref_mut() {
                if !rc.calls.is_empty() {
                    rc.close_idle = true;
                    return;
                }
            }
        }
        self.end(slot, 0, Ending::Graceful);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampling_draw_takes_sizes_then_the_fraction() {
        let mut rpc = RpcState::default();
        let sizes = Sampling {
            fraction: 1.0,
            min_bytes: 4,
            max_bytes: 8,
        };
        let all = Some(sizes);
        assert!(!rpc.wants(None, b"12345"));
        assert!(!rpc.wants(all, b"123"));
        assert!(!rpc.wants(all, b"123456789"));
        assert!(rpc.wants(all, b"1234") && rpc.wants(all, b"12345678"));
        let none = Some(Sampling {
            fraction: 0.0,
            ..sizes
        });
        assert!(!(0..1000).any(|_| rpc.wants(none, b"12345")));
        let half = Some(Sampling {
            fraction: 0.5,
            ..sizes
        });
        let picked = (0..10_000).filter(|_| rpc.wants(half, b"12345")).count();
        assert!((4_000..6_000).contains(&picked), "{picked}");
    }
}
