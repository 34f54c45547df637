//! The read path: socket -> TLS records -> MMTP frames / MQTT packets -> events.

use std::io::{self, Read};

use super::conn::{flag, Conn, Inflight, MqttConn, Proto};
use super::{refusal_counter, tlsio, Ending, Engine};
use crate::boundary::Event;
use crate::clienthello::{
    self, fatal_alert, ClientHello, ALERT_DECODE_ERROR, ALERT_NO_APPLICATION_PROTOCOL,
    MAX_HELLO_BUFFER_BYTES,
};
use crate::mqtt::{self, FramingError};
use crate::mqttout::Resolved;
use crate::proxy::{self, Parse};
use crate::singleuse::{SingleUseStore, TICKET_ID_BYTES};
use crate::stats::Stats;
use crate::tls::{common_name, MMTP_ALPN, MQTT_ALPN};

/// What reading one connection led to.
enum Outcome {
    Keep,
    /// End it (reason, how).
    End(u64, Ending),
}

impl Engine {
    /// Give one connection one budget of input; true if it has input left.
    pub(super) fn input(&mut self, slot: usize) -> bool {
        let budget = self.config.max_read_per_round_bytes;
        let mut read_total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return false;
            };
            if conn.has(flag::CLOSING) {
                self.drain_closing(slot);
                return false;
            }
            if conn.has(flag::MORE_INPUT) {
                conn.clear(flag::MORE_INPUT);
                match self.deliver(slot, 0, 0, false) {
                    Outcome::Keep => {}
                    Outcome::End(reason, ending) => {
                        self.end(slot, reason, ending);
                        return false;
                    }
                }
                let Some(conn) = self.conns.get(slot) else {
                    return false;
                };
                if conn.has(flag::MORE_INPUT) {
                    return true;
                }
                if conn.has(flag::CLOSING) || conn.has(flag::READ_PAUSED) {
                    return false;
                }
            }
            let Some(conn) = self.conns.get(slot) else {
                return false;
            };
            if !conn.has(flag::READ_READY) || conn.has(flag::TICKET_WAIT) {
                return false; // (TICKET_WAIT: read again once TLS_RESUME came)
            }
            if read_total >= budget {
                return true;
            }
            match self.read_once(slot) {
                Ok(0) => return false,
                Ok(n) => read_total += n,
                Err((reason, ending)) => {
                    self.end(slot, reason, ending);
                    return false;
                }
            }
        }
    }

    /// One read() and what it carried. Ok(0): nothing more to read now.
    fn read_once(&mut self, slot: usize) -> Result<usize, (u64, Ending)> {
        let stats = &self.shared.stats;
        let conn = self.conns.get_mut(slot).ok_or((0, Ending::Abort))?;
        let scratch = &mut self.scratch;
        let filled = conn.rx_partial.len();
        let room = 16 * 1024 + 5;
        if scratch.rx.len() < filled + room {
            scratch.rx.resize(filled + room, 0);
        }
        scratch.rx[..filled].copy_from_slice(&conn.rx_partial);
        let want = scratch.rx.len() - filled;
        let n = match conn.sock.read(&mut scratch.rx[filled..]) {
            Ok(0) => return Err((0, Ending::Abort)), // EOF without close_notify / DISCONNECT
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.clear(flag::READ_READY);
                return Ok(0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(1),
            Err(_) => return Err((0, Ending::Abort)),
        };
        if n < want {
            // A short read of a stream socket drained it (edge-triggered epoll).
            conn.clear(flag::READ_READY);
        }
        Stats::add(&stats.bytes_in, n as u64);
        conn.timing.last_input_ms = self.now_ms;
        let total = filled + n;
        self.received(slot, total)?;
        Ok(n.max(1))
    }

    /// Handle the `total` bytes at the start of `scratch.rx` (what `rx_partial` held and
    /// what was just read): the ClientHello check, TLS, then the protocol.
    pub(super) fn received(&mut self, slot: usize, total: usize) -> Result<(), (u64, Ending)> {
        let mut total = total;
        let conn = self.conns.get(slot).ok_or((0, Ending::Abort))?;
        if conn.has(flag::PROXY_WAIT) {
            match self.proxy_header(slot, total)? {
                Some(rest) if rest > 0 => total = rest,
                _ => return Ok(()),
            }
        }
        let stats = &self.shared.stats;
        let conn = self.conns.get_mut(slot).ok_or((0, Ending::Abort))?;
        let scratch = &mut self.scratch;
        if conn.tls.is_some() && !conn.has(flag::TLS_STARTED) {
            let mqtt = matches!(conn.proto, Proto::Mqtt(_));
            match check_client_hello(&scratch.rx[..total], mqtt) {
                Hello::Incomplete => {
                    conn.rx_partial.clear();
                    conn.rx_partial.extend_from_slice(&scratch.rx[..total]);
                    return Ok(());
                }
                Hello::Refuse(alert) => {
                    Stats::inc(if alert == ALERT_NO_APPLICATION_PROTOCOL {
                        &stats.alpn_refused
                    } else {
                        &stats.tls_failures
                    });
                    // Python never hears of it; the alert goes out, then FIN.
                    conn.rx_partial = Vec::new();
                    let _ = tlsio::send(
                        &mut conn.sock,
                        &mut conn.tx_pending,
                        &fatal_alert(alert),
                        stats,
                    );
                    return Err((0, Ending::Graceful));
                }
                Hello::Start(hello) => {
                    // MQTT listeners keep sealed tickets: no single-use store to ask.
                    let early = if mqtt {
                        None
                    } else {
                        self.shared.early.as_ref()
                    };
                    if let Some(early) = early {
                        if hello.early_data {
                            Stats::inc(&stats.early_data_offered);
                        }
                        match resumption(&early.store, hello) {
                            Resumption::Lookup(ticket_id) => {
                                // Held until Python took the ticket (TLS_RESUME).
                                Stats::inc(&stats.tls_ticket_lookups);
                                conn.set(flag::TICKET_WAIT);
                                conn.rx_partial.clear();
                                conn.rx_partial.extend_from_slice(&scratch.rx[..total]);
                                let id = conn.id;
                                self.out.push(Event::TlsResume {
                                    conn: id,
                                    ticket_id,
                                });
                                return Ok(());
                            }
                            Resumption::Preload(ticket_id, state) => {
                                early.store.preload(ticket_id, state)
                            }
                            Resumption::Full => {}
                        }
                    }
                    conn.set(flag::TLS_STARTED);
                }
            }
        }
        let mut peer_closed = false;
        let mut early_len = 0;
        scratch.plain_in.clear();
        // An MMTP device's session ticket waits for its HELLO_ACK (one write).
        let hold = matches!(conn.proto, Proto::Mmtp(_)) && !conn.has(flag::ACCEPTED);
        let plaintext_len = match &mut conn.tls {
            None => {
                // Plain TCP (MQTT): the bytes are the plaintext.
                scratch.plain_in.extend_from_slice(&scratch.rx[..total]);
                conn.rx_partial = Vec::new();
                total
            }
            Some(tls) => {
                let was_handshaking = !conn.flags & flag::TLS_DONE != 0;
                let result = tlsio::pass(
                    tls,
                    &mut conn.sock,
                    &mut conn.tx_pending,
                    &mut scratch.rx[..total],
                    &mut scratch.plain_in,
                    &[],
                    false,
                    hold,
                    &mut scratch.tx,
                    stats,
                );
                if let Some(early) = &self.shared.early {
                    early.store.clear(); // a state rustls did not take is not kept
                }
                let pass = match result {
                    Ok(pass) => pass,
                    Err(_) => {
                        // Its alert is queued: close after it, not with a reset that
                        // could destroy it in the peer's receive buffer.
                        Stats::inc(&stats.tls_failures);
                        conn.rx_partial = Vec::new();
                        return Err((0, Ending::Graceful));
                    }
                };
                if pass.held {
                    conn.flags |= flag::HELD_OUTPUT;
                }
                if pass.consumed < total {
                    conn.rx_partial.clear();
                    conn.rx_partial
                        .extend_from_slice(&scratch.rx[pass.consumed..total]);
                } else {
                    conn.rx_partial = Vec::new();
                }
                early_len = pass.early_len;
                if early_len > 0 {
                    Stats::add(&stats.early_data_bytes, early_len as u64);
                    if conn.flags & flag::EARLY_DATA == 0 {
                        conn.flags |= flag::EARLY_DATA;
                        Stats::inc(&stats.early_data_accepted);
                    }
                }
                if was_handshaking && pass.writable && !tls.is_handshaking() {
                    conn.set(flag::TLS_DONE);
                    if !conn.out_plain.is_empty() {
                        self.mark_dirty(slot); // queued while TLS was not writable
                    }
                    if let Some(outcome) = self.tls_established(slot) {
                        return Err(outcome);
                    }
                } else if pass.writable && !conn.out_plain.is_empty() {
                    self.mark_dirty(slot); // half-RTT: answers to early data may go
                }
                peer_closed = pass.peer_closed;
                self.scratch.plain_in.len()
            }
        };
        if early_len > 0 {
            // Frames that arrived as early data, all of them now (a frame budget would
            // leave some to be read later as if they had not): early data is bounded.
            if let Outcome::End(reason, ending) = self.deliver(slot, 0, early_len, true) {
                return Err((reason, ending));
            }
        }
        if plaintext_len > early_len {
            let outcome = self.deliver(slot, early_len, plaintext_len, false);
            if let Outcome::End(reason, ending) = outcome {
                return Err((reason, ending));
            }
        }
        if peer_closed {
            // close_notify: everything the device sent is in; answer with ours.
            return Err((0, Ending::Graceful));
        }
        Ok(())
    }

    /// The balancer's PROXY header at the start of `scratch.rx[..total]`, read before
    /// any TLS byte: None while it is incomplete (kept in `rx_partial`, bounded by the
    /// parser: 107 bytes for v1, `proxy_max_header_bytes` for v2); once it is whole the
    /// connection is counted under the device's address and the n bytes after the
    /// header are moved to the start of `scratch.rx` (Some(n)). Err: cut it.
    fn proxy_header(&mut self, slot: usize, total: usize) -> Result<Option<usize>, (u64, Ending)> {
        let stats = &self.shared.stats;
        let conn = self.conns.get_mut(slot).ok_or((0, Ending::Abort))?;
        let data = &self.scratch.rx[..total];
        match proxy::parse(data, self.config.proxy_max_header_bytes) {
            Ok(Parse::Incomplete) => {
                conn.rx_partial.clear();
                conn.rx_partial.extend_from_slice(data);
                Ok(None)
            }
            Err(_) => {
                // Nothing was said to the balancer's peer yet: no alert, no TLS.
                Stats::inc(&stats.refused_proxy_invalid);
                conn.rx_partial = Vec::new();
                Err((0, Ending::Abort))
            }
            Ok(Parse::Done(header)) => {
                // No address (v2 LOCAL, v1 UNKNOWN): the balancer's own connection.
                let ip = header.source.map_or(conn.peer_ip, |source| source.ip());
                if let Err(refusal) = self.admission.admit_address(ip) {
                    Stats::inc(refusal_counter(stats, refusal));
                    return Err((0, Ending::Abort)); // still PROXY_WAIT: released pending
                }
                conn.peer_ip = ip;
                conn.clear(flag::PROXY_WAIT);
                conn.rx_partial = Vec::new();
                self.scratch.rx.copy_within(header.len..total, 0);
                Ok(Some(total - header.len))
            }
        }
    }

    /// The TLS handshake just finished: count it, check ALPN. Some: end it.
    fn tls_established(&mut self, slot: usize) -> Option<(u64, Ending)> {
        let stats = &self.shared.stats;
        let conn = self.conns.get_mut(slot)?;
        let tls = conn.tls.as_ref()?;
        Stats::inc(
            if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                &stats.tls_handshakes_resumed
            } else {
                &stats.tls_handshakes_full
            },
        );
        let alpn_ok = tls.alpn_protocol() == Some(MMTP_ALPN);
        if let Proto::Mmtp(m) = &mut conn.proto {
            if !alpn_ok {
                // rustls lets a client that offers no ALPN through; we do not.
                Stats::inc(&stats.alpn_refused);
                let code = mmtp::ErrorCode::UnsupportedVersion;
                m.wire
                    .close_with_error(code, "ALPN mmtp/1 was not negotiated", 0);
                return Some((code.value(), Ending::Graceful));
            }
        }
        None
    }

    /// Feed `scratch.plain_in[start..end]` (empty: only what the protocol buffered)
    /// to the connection's protocol, within the per-round frame budget; `early`: the
    /// bytes came as TLS early data (every frame is handled now, requests say so).
    fn deliver(&mut self, slot: usize, start: usize, end: usize, early: bool) -> Outcome {
        let budget = if early {
            usize::MAX
        } else {
            self.config.max_frames_per_round
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return Outcome::End(0, Ending::Abort);
        };
        let scratch = &mut self.scratch;
        let data = &scratch.plain_in[start..end];
        let outcome = match &mut conn.proto {
            Proto::Mmtp(m) => {
                scratch.wire_events.clear();
                match m
                    .wire
                    .receive_frames(data, budget, &mut scratch.wire_events)
                {
                    Ok(more) => {
                        if more {
                            conn.set(flag::MORE_INPUT);
                        }
                        Outcome::Keep
                    }
                    Err(error) => {
                        Stats::inc(&self.shared.stats.protocol_errors);
                        // The ERROR frame is queued; it goes out before the close.
                        Outcome::End(error.code.value(), Ending::Graceful)
                    }
                }
            }
            Proto::Mqtt(MqttConn { framer, .. }) => {
                scratch.packets.clear();
                if conn.flags & (flag::TOLD | flag::MQTT5) == 0 {
                    // The CONNECT's first bytes: its protocol level (a few bytes).
                    let mut head = [0u8; 16];
                    let partial = framer.partial();
                    let from_partial = partial.len().min(head.len());
                    head[..from_partial].copy_from_slice(&partial[..from_partial]);
                    let from_data = data.len().min(head.len() - from_partial);
                    head[from_partial..from_partial + from_data]
                        .copy_from_slice(&data[..from_data]);
                    if mqtt::connect_protocol_level(&head[..from_partial + from_data]) == Some(5) {
                        conn.flags |= flag::MQTT5;
                    }
                }
                let max = self.config.mqtt_max_packet_size;
                match framer.feed(data, max, budget, &mut scratch.packets) {
                    Ok(more) => {
                        if more {
                            conn.set(flag::MORE_INPUT);
                        }
                        Outcome::Keep
                    }
                    Err(error) => {
                        Stats::inc(&self.shared.stats.mqtt_framing_errors);
                        let code = match error {
                            FramingError::TooLarge { .. } => {
                                too_large(conn);
                                mmtp::ErrorCode::FrameSizeError
                            }
                            FramingError::Malformed(_) => mmtp::ErrorCode::ProtocolError,
                        };
                        Outcome::End(code.value(), Ending::Graceful)
                    }
                }
            }
        };
        if conn.is_mmtp() {
            self.mmtp_events(slot, early);
        } else {
            self.mqtt_packets(slot);
        }
        outcome
    }

    /// Map the wire's events: answer what the engine answers, hand the rest up.
    fn mmtp_events(&mut self, slot: usize, early: bool) {
        let mut events = std::mem::take(&mut self.scratch.wire_events);
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let id = conn.id;
        let mut end: Option<u64> = None;
        let mut tracked = Vec::new();
        for event in events.drain(..) {
            let Some(conn) = self.conns.get_mut(slot) else {
                break;
            };
            match event {
                mmtp::Event::HelloReceived(hello) => {
                    conn.set(flag::TOLD);
                    let client_cert_cn = conn
                        .tls
                        .as_ref()
                        .and_then(|t| t.peer_certificates())
                        .and_then(|certs| certs.first())
                        .and_then(|cert| common_name(cert));
                    self.out.push(Event::Hello {
                        conn: id,
                        peer_ip: conn.peer_ip,
                        hello,
                        client_cert_cn,
                        tcp_fast_open: fast_open(conn, stats),
                    });
                }
                mmtp::Event::RequestReceived {
                    stream_id,
                    op,
                    headers,
                    body,
                } => {
                    if early {
                        Stats::inc(&stats.early_data_requests);
                    }
                    // Served here or handed up (rpc.rs); the connection is borrowed anew
                    // for the next event.
                    self.rpc_request(
                        slot,
                        super::rpc::Request {
                            stream_id,
                            op,
                            headers,
                            body,
                            early,
                        },
                    );
                }
                mmtp::Event::AckReceived { delivery_ids } => {
                    let Proto::Mmtp(m) = &mut conn.proto else {
                        continue;
                    };
                    for delivery_id in delivery_ids {
                        let Some(at) = m.inflight.iter().position(|i| i.delivery_id == delivery_id)
                        else {
                            continue;
                        };
                        let Inflight {
                            message_id,
                            tracked: is_tracked,
                            ..
                        } = m.inflight.swap_remove(at);
                        if is_tracked {
                            tracked.push(message_id);
                        } else {
                            Stats::inc(&stats.acks_fanout);
                            *self.out.fanout_acks.entry(message_id).or_insert(0) += 1;
                        }
                    }
                    if m.inflight.is_empty() {
                        m.inflight = Vec::new();
                    }
                }
                mmtp::Event::ResponseReceived {
                    stream_id,
                    status,
                    headers,
                    body,
                } => {
                    if let Some(call_token) = take_call(conn, stream_id) {
                        self.out.push(Event::Answer {
                            conn: id,
                            call_token,
                            status,
                            headers,
                            body,
                            retry_after_ms: 0,
                            message: String::new(),
                        });
                    }
                }
                mmtp::Event::StreamErrorReceived {
                    stream_id,
                    code,
                    retry_after_ms,
                    message,
                } => {
                    if let Some(call_token) = take_call(conn, stream_id) {
                        self.out.push(Event::Answer {
                            conn: id,
                            call_token,
                            status: code,
                            headers: mmtp::Headers::new(),
                            body: Vec::new(),
                            retry_after_ms,
                            message,
                        });
                    }
                }
                // A native call's cancel ends it here (rpc.rs); Python hears the rest.
                mmtp::Event::StreamCancelled { stream_id } if !self.rpc_cancel(slot, stream_id) => {
                    self.out.push(Event::Cancel {
                        conn: id,
                        stream_id,
                    });
                }
                mmtp::Event::GoAwayReceived { .. } => self.out.push(Event::GoAway { conn: id }),
                mmtp::Event::ConnectionErrorReceived { code, .. } => end = Some(code),
                mmtp::Event::PingReceived { .. } => Stats::inc(&stats.mmtp_pings_answered),
                _ => {}
            }
        }
        if !tracked.is_empty() {
            Stats::add(&stats.acks_tracked, tracked.len() as u64);
            self.out.push(Event::Acks {
                conn: id,
                message_ids: tracked,
            });
        }
        self.scratch.wire_events = events;
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let pending = match &conn.proto {
            Proto::Mmtp(m) => m.wire.pending_output() > 0,
            Proto::Mqtt(_) => false,
        };
        if pending {
            self.mark_dirty(slot);
        }
        if let Some(code) = end {
            // The device ended the connection with ERROR on stream 0.
            self.end(slot, code, Ending::Graceful);
        }
    }

    /// Whole MQTT packets: PINGREQ answered here once the session is open, the
    /// rest to Python (MQTT_OPEN before the first of them).
    fn mqtt_packets(&mut self, slot: usize) {
        let mut packets = std::mem::take(&mut self.scratch.packets);
        if packets.is_empty() {
            self.scratch.packets = packets;
            return;
        }
        let stats = &self.shared.stats;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut answered = false;
        if conn.has(flag::ACCEPTED) {
            packets.retain(|p| {
                let ping = p.as_slice() == mqtt::PINGREQ;
                if ping {
                    Stats::inc(&stats.mqtt_pings_answered);
                    conn.out_plain.extend_from_slice(&mqtt::PINGRESP);
                    answered = true;
                }
                !ping
            });
        }
        if let Proto::Mqtt(MqttConn { out: Some(out), .. }) = &mut conn.proto {
            // Acknowledgements of the pushes held here are resolved here: their
            // message ids go up as ACKs (as MMTP's), the packets do not.
            let mut tracked = Vec::new();
            let mut refused = Vec::new();
            let mut freed = false;
            let before = out.pushes();
            let fanout_acks = &mut self.out.fanout_acks;
            packets.retain(|p| match out.received(p) {
                Resolved::Push {
                    message_id,
                    tracked: is_tracked,
                    reason,
                    pubcomp,
                } => {
                    freed = true;
                    Stats::inc(if pubcomp {
                        &stats.mqtt_held_pubcomps_in
                    } else {
                        &stats.mqtt_held_pubacks_in
                    });
                    if reason >= 0x80 {
                        // Refused by the box (MQTT 5): over, but no ACK; Python
                        // records it with the reason, as for its own pushes.
                        refused.push((message_id, is_tracked, reason));
                    } else if is_tracked {
                        tracked.push(message_id);
                    } else {
                        Stats::inc(&stats.acks_fanout);
                        *fanout_acks.entry(message_id).or_insert(0) += 1;
                    }
                    false
                }
                Resolved::Forward { freed: f } => {
                    freed |= f;
                    true
                }
            });
            if freed && out.waiting() > 0 {
                out.ready(&mut conn.out_plain);
                answered = true; // output to flush
            }
            super::commands::track_pushes(stats, before, out.pushes());
            out.sync_gauge();
            super::commands::count_written(stats, out);
            for (message_id, tracked, reason) in refused {
                self.out.push(Event::MqttRefused {
                    conn: conn.id,
                    message_id,
                    tracked,
                    reason,
                });
            }
            if !tracked.is_empty() {
                Stats::add(&stats.acks_tracked, tracked.len() as u64);
                self.out.push(Event::MqttAcks {
                    conn: conn.id,
                    message_ids: tracked,
                });
            }
        }
        if !packets.is_empty() {
            let id = conn.id;
            if !conn.has(flag::TOLD) {
                conn.set(flag::TOLD);
                let client_cert_cn = conn
                    .tls
                    .as_ref()
                    .and_then(|t| t.peer_certificates())
                    .and_then(|certs| certs.first())
                    .and_then(|cert| common_name(cert));
                self.out.push(Event::MqttOpen {
                    conn: id,
                    peer_ip: conn.peer_ip,
                    client_cert_cn,
                    tls: conn.tls.is_some(),
                });
            }
            Stats::add(&stats.mqtt_packets_in, packets.len() as u64);
            // Under push load a box mostly sends PUBACKs: those go up as packet ids.
            let pubacks: Option<Vec<u16>> = if conn.has(flag::ACCEPTED) {
                packets.iter().map(|p| mqtt::bare_puback_id(p)).collect()
            } else {
                None
            };
            if let Some(packet_ids) = pubacks {
                packets.clear();
                self.scratch.packets = packets;
                self.out.push(Event::MqttPubacks {
                    conn: id,
                    packet_ids,
                });
            } else {
                self.out.push(Event::MqttPackets { conn: id, packets });
            }
        } else {
            self.scratch.packets = packets;
        }
        if answered {
            self.mark_dirty(slot);
        }
    }

    /// A closing connection: read and drop what comes until the peer's FIN.
    fn drain_closing(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        loop {
            match conn.sock.read(&mut self.scratch.rx) {
                Ok(0) => {
                    if conn.tx_pending.is_empty() {
                        self.remove(slot);
                    } else {
                        conn.set(flag::PEER_EOF); // removed once its last bytes are out
                    }
                    return;
                }
                Ok(n) => Stats::add(&self.shared.stats.bytes_in, n as u64),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.clear(flag::READ_READY);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(slot);
                    return;
                }
            }
        }
    }
}

/// An MQTT packet above the maximum size: an MQTT 5 client is told why before the
/// close (MQTT 5 section 4.13: reason 0x95), with DISCONNECT once its CONNACK went out
/// (`SET_IDLE` comes with it), with a refusing CONNACK if the CONNECT itself is too
/// large. MQTT 3.1.1 has no way to say it, nor has MQTT 5 between CONNECT and CONNACK:
/// just the close.
fn too_large(conn: &mut Conn) {
    if !conn.has(flag::MQTT5) {
        return;
    }
    if conn.has(flag::ACCEPTED) {
        conn.out_plain
            .extend_from_slice(&mqtt::DISCONNECT_TOO_LARGE);
    } else if !conn.has(flag::TOLD) {
        conn.out_plain.extend_from_slice(&mqtt::CONNACK_TOO_LARGE);
    }
}

/// How a ClientHello's first PSK identity is resumed when early data is on.
enum Resumption {
    /// No ticket, or none of ours: rustls does a full handshake.
    Full,
    /// A stored ticket's id: Python takes it from the fleet's store first.
    Lookup(Vec<u8>),
    /// A sealed ticket (issued without early data) for a client that sends none: it
    /// resumes here at once, like anywhere else.
    Preload(Vec<u8>, Vec<u8>),
}

fn resumption(store: &SingleUseStore, hello: ClientHello) -> Resumption {
    let Some(identity) = hello.psk_identity else {
        return Resumption::Full;
    };
    if identity.len() == TICKET_ID_BYTES {
        return Resumption::Lookup(identity);
    }
    if hello.early_data {
        // Early data on a ticket that can be presented again: never (a full handshake).
        return Resumption::Full;
    }
    match store.open(&identity) {
        Some(state) => Resumption::Preload(identity, state),
        None => Resumption::Full,
    }
}

/// What the bytes received so far say about a connection's ClientHello.
enum Hello {
    /// Wait for more bytes.
    Incomplete,
    /// Fail the handshake with this alert.
    Refuse(u8),
    /// It offers what the listener speaks: hand the bytes to rustls.
    Start(ClientHello),
}

/// Spec section 3.2: a client that does not offer `mmtp/1` fails its handshake with
/// `no_application_protocol`; bytes that are no ClientHello, with `decode_error`.
/// `mqtt`: an MQTT listener, where a client offers no ALPN or `mqtt` among others
/// (the Python engine's rule, `channel.engine.pymqtt.mqtt_alpn`).
fn check_client_hello(received: &[u8], mqtt: bool) -> Hello {
    match clienthello::read_client_hello(received) {
        Ok(None) if received.len() > MAX_HELLO_BUFFER_BYTES => Hello::Refuse(ALERT_DECODE_ERROR),
        Ok(None) => Hello::Incomplete,
        Err(_) => Hello::Refuse(ALERT_DECODE_ERROR),
        Ok(Some(hello)) if !alpn_ok(&hello, mqtt) => Hello::Refuse(ALERT_NO_APPLICATION_PROTOCOL),
        Ok(Some(hello)) => Hello::Start(hello),
    }
}

fn alpn_ok(hello: &ClientHello, mqtt: bool) -> bool {
    if !mqtt {
        return hello.offers(MMTP_ALPN);
    }
    hello.alpn.as_ref().map_or(true, |names| names.is_empty()) || hello.offers(MQTT_ALPN)
}

fn take_call(conn: &mut Conn, stream_id: u64) -> Option<u64> {
    let Proto::Mmtp(m) = &mut conn.proto else {
        return None;
    };
    let at = m
        .calls
        .iter()
        .position(|(stream, _)| *stream == stream_id)?;
    let (_, token) = m.calls.swap_remove(at);
    if m.calls.is_empty() {
        m.calls = Vec::new();
    }
    Some(token)
}

fn fast_open(conn: &Conn, stats: &Stats) -> bool {
    let carried = crate::sys::syn_carried_data(&conn.sock);
    if carried {
        Stats::inc(&stats.fast_open_connections);
    }
    carried
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offering(names: Option<&[&[u8]]>) -> ClientHello {
        ClientHello {
            alpn: names.map(|n| n.iter().map(|p| p.to_vec()).collect()),
            ..ClientHello::default()
        }
    }

    #[test]
    fn mqtt_listeners_take_no_alpn_or_mqtt_and_mmtp_only_mmtp() {
        let none = offering(None);
        let mqtt = offering(Some(&[b"x-amzn-mqtt-ca", b"mqtt"]));
        let other = offering(Some(&[b"h2", b"mmtp/1"]));
        assert!(alpn_ok(&none, true) && alpn_ok(&mqtt, true));
        assert!(!alpn_ok(&other, true));
        assert!(alpn_ok(&other, false));
        assert!(!alpn_ok(&none, false) && !alpn_ok(&mqtt, false));
    }
}
