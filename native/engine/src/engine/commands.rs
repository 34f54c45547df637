//! Python's commands, applied in order on the engine thread.

use std::sync::Arc;

use mio::{Interest, Token};

use super::conn::{flag, Inflight, MqttConn, Proto};
use super::{Ending, Engine, ListenerState, LISTENER_BASE};
use crate::boundary::{Command, Event, MessageId};
use crate::ids::ConnId;
use crate::mqttout::{Outbound, PushOutcome, OVERFLOW_REASON};
use crate::stats::Stats;

impl Engine {
    pub(super) fn run_commands(&mut self) {
        let commands = {
            let mut queue = self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *queue)
        };
        for command in commands {
            self.command(command);
            if self.shutdown {
                return;
            }
        }
    }

    pub(super) fn stale(&self) {
        Stats::inc(&self.shared.stats.commands_stale);
    }

    fn failed(&self) {
        Stats::inc(&self.shared.stats.commands_failed);
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Accept {
                conn,
                session_id,
                resume_ticket,
                heartbeat_s,
                server_time_ms,
                resumed,
                newest_dictionary,
            } => {
                let accept = mmtp::Accept {
                    session_id,
                    resume_ticket,
                    heartbeat_s,
                    server_time_ms,
                    resumed,
                    newest_dictionary,
                };
                let idle_ms = (heartbeat_s as f64 * self.config.idle_factor * 1000.0) as u64;
                self.with_mmtp(conn, |engine, slot, m| match m.wire.accept(&accept) {
                    Ok(_) => {
                        let now = engine.now_ms;
                        let conn = &mut engine.conns[slot];
                        conn.set(flag::ACCEPTED);
                        conn.timing.open(now, idle_ms);
                        // The idle deadline may come before the handshake one it replaces.
                        let next = conn.timing.next_deadline(&engine.durations);
                        engine.lower_deadline(slot, next);
                        true
                    }
                    Err(_) => false,
                });
            }
            Command::Reject {
                conn,
                code,
                message,
                retry_after_ms,
            } => {
                let code_value = code.value();
                if let Some(slot) = self.with_mmtp(conn, |_, _, m| {
                    m.wire.reject(code, &message, retry_after_ms).is_ok()
                }) {
                    self.end(slot, code_value, Ending::Graceful);
                }
            }
            Command::Respond {
                conn,
                stream_id,
                status,
                headers,
                body,
            } => {
                self.with_mmtp(conn, |_, _, m| {
                    match m.wire.send_response(stream_id, &body, &headers, status) {
                        Ok(sent) => sent,
                        Err(mmtp::LocalError::MessageTooLarge(why)) => {
                            // The answer does not fit the device's limits: tell it so.
                            let why: String = why.chars().take(200).collect();
                            let _ = m.wire.send_error(
                                stream_id,
                                mmtp::ErrorCode::UpstreamError,
                                &why,
                                0,
                            );
                            true
                        }
                        Err(_) => false,
                    }
                });
            }
            Command::StreamError {
                conn,
                stream_id,
                code,
                message,
                retry_after_ms,
            } => {
                self.with_mmtp(conn, |_, _, m| {
                    matches!(
                        m.wire.send_error(stream_id, code, &message, retry_after_ms),
                        Ok(true)
                    )
                });
            }
            Command::Call {
                conn,
                call_token,
                op,
                headers,
                body,
            } => {
                let mut refusal = None;
                let found = self.with_mmtp(conn, |_, _, m| {
                    match m.wire.send_request(&op, &body, &headers) {
                        Ok(stream_id) => {
                            m.calls.push((stream_id, call_token));
                            true
                        }
                        Err(error) => {
                            refusal = Some(error.to_string());
                            false
                        }
                    }
                });
                if found.is_none() || refusal.is_some() {
                    self.out.push(Event::Answer {
                        conn,
                        call_token,
                        status: mmtp::ErrorCode::Unavailable.value(),
                        headers: mmtp::Headers::new(),
                        body: Vec::new(),
                        retry_after_ms: 0,
                        message: refusal.unwrap_or_else(|| "device is not connected here".into()),
                    });
                }
            }
            Command::CancelCall { conn, call_token } => {
                self.with_mmtp(conn, |_, _, m| {
                    let Some(at) = m.calls.iter().position(|(_, t)| *t == call_token) else {
                        return false;
                    };
                    let (stream_id, _) = m.calls.swap_remove(at);
                    if m.calls.is_empty() {
                        m.calls = Vec::new();
                    }
                    m.wire.send_cancel(stream_id);
                    true
                });
            }
            Command::Push {
                conn,
                message_id,
                headers,
                body,
                tracked,
            } => self.push(conn, message_id, &headers, &body, tracked),
            Command::Fanout {
                push,
                message_id,
                targets,
            } => self.fanout(&push, message_id, targets),
            Command::GoAway {
                conn,
                code,
                reconnect_after_ms,
                message,
            } => {
                let targets: Vec<ConnId> = match conn {
                    Some(id) => vec![id],
                    None => self.accepted_mmtp(),
                };
                for id in targets {
                    let mut ok = true;
                    let slot = self.with_mmtp(id, |_, _, m| {
                        ok = m
                            .wire
                            .send_goaway(code, reconnect_after_ms, "", &message)
                            .is_ok();
                        true
                    });
                    if let (Some(slot), false) = (slot, ok) {
                        // Not accepted yet (or already draining): close instead.
                        self.end(slot, code.value(), Ending::Graceful);
                    }
                }
            }
            Command::End {
                conn,
                code,
                message,
            } => {
                let Some(slot) = self.live(conn) else {
                    return self.stale();
                };
                if let Some(m) = self.conns[slot].mmtp() {
                    m.wire.close_with_error(code, &message, 0);
                }
                self.end(slot, code.value(), Ending::Graceful);
            }
            Command::RpcTable(table) => self.rpc_table(table),
            Command::RpcSession { conn, info } => self.rpc_session(conn, info),
            Command::CloseIdle { conn } => self.close_idle(conn),
            Command::Close { conn } => match self.live(conn) {
                Some(slot) => self.end(slot, 0, Ending::Graceful),
                None => self.stale(),
            },
            Command::Abort { conn } => match self.live(conn) {
                Some(slot) => self.end(slot, 0, Ending::Abort),
                None => self.stale(),
            },
            Command::SetIdle {
                conn,
                idle_timeout_ms,
            } => {
                let Some(slot) = self.live(conn) else {
                    return self.stale();
                };
                let now = self.now_ms;
                let conn = &mut self.conns[slot];
                conn.set(flag::ACCEPTED);
                conn.timing.open(now, idle_timeout_ms);
                let next = conn.timing.next_deadline(&self.durations);
                self.lower_deadline(slot, next);
            }
            Command::AddDictionary(dictionary) => {
                if self.shared.codec.add_dictionary(dictionary).is_err() {
                    self.failed();
                }
            }
            Command::AddPreset(table) => {
                let mut presets = self
                    .shared
                    .presets
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                let mut next = (**presets).clone();
                match next.insert(*table) {
                    Ok(()) => *presets = Arc::new(next),
                    Err(_) => self.failed(),
                }
            }
            Command::SetUsageApps(apps) => self.shared.usage.set_apps(&apps),
            Command::Dict { conns, dict_id } => self.start_deliveries(conns, dict_id),
            Command::MqttWrite { conn, data } => {
                let Some(slot) = self.live(conn) else {
                    return self.stale();
                };
                Stats::inc(&self.shared.stats.mqtt_writes);
                self.conns[slot].out_plain.extend_from_slice(&data);
                self.mark_dirty(slot);
            }
            Command::MqttPushes { conn, setup } => {
                let Some(slot) = self.live(conn) else {
                    return self.stale();
                };
                match &mut self.conns[slot].proto {
                    Proto::Mqtt(m) => {
                        let out = Outbound::new(setup);
                        let mut held = self
                            .shared
                            .mqtt_held
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        held.insert(conn, out.gauge());
                        m.out = Some(Box::new(out));
                    }
                    Proto::Mmtp(_) => self.failed(),
                }
            }
            Command::MqttPush {
                conn,
                message_id,
                headers,
                body,
                tracked,
            } => self.mqtt_push(conn, message_id, &headers, &body, tracked),
            Command::MqttHeld { conn, data } => {
                let Some(slot) = self.live(conn) else {
                    return self.stale();
                };
                let conn = &mut self.conns[slot];
                Stats::inc(&self.shared.stats.mqtt_writes);
                match &mut conn.proto {
                    Proto::Mqtt(MqttConn { out: Some(out), .. }) => {
                        if !out.hold(data.clone(), &mut conn.out_plain) {
                            conn.out_plain.extend_from_slice(&data);
                        }
                        count_written(&self.shared.stats, out);
                    }
                    _ => conn.out_plain.extend_from_slice(&data),
                }
                self.mark_dirty(slot);
            }
            Command::TlsResume {
                conn,
                ticket_id,
                state,
            } => self.resume(conn, ticket_id, state),
            Command::Listen(mut listener) => {
                let index = self.listeners.len();
                let registered = self.poll.registry().register(
                    &mut listener.socket,
                    Token(LISTENER_BASE + index),
                    Interest::READABLE,
                );
                if registered.is_ok() {
                    self.listeners.push(Some(ListenerState {
                        listener,
                        ready: true,
                    }));
                }
            }
            Command::CloseListeners(done) => {
                for state in self.listeners.iter_mut() {
                    if let Some(mut state) = state.take() {
                        let _ = self.poll.registry().deregister(&mut state.listener.socket);
                    }
                }
                let _ = done.send(());
            }
            Command::Shutdown => self.shutdown = true,
        }
    }

    /// Python's answer to TLS_RESUME: preload the ticket's state (if any) and let
    /// rustls read the ClientHello (and early data) held meanwhile.
    fn resume(&mut self, id: ConnId, ticket_id: Vec<u8>, state: Option<Vec<u8>>) {
        let Some(slot) = self.live(id) else {
            return self.stale();
        };
        let conn = &mut self.conns[slot];
        if !conn.has(flag::TICKET_WAIT) {
            return self.failed();
        }
        conn.clear(flag::TICKET_WAIT);
        conn.set(flag::TLS_STARTED);
        if let (Some(early), Some(sealed)) = (&self.shared.early, state) {
            if let Some(plain) = early.store.open(&sealed) {
                early.store.preload(ticket_id, plain);
            }
        }
        let held = std::mem::take(&mut conn.rx_partial);
        let total = held.len();
        if self.scratch.rx.len() < total {
            self.scratch.rx.resize(total, 0);
        }
        self.scratch.rx[..total].copy_from_slice(&held);
        if let Err((reason, ending)) = self.received(slot, total) {
            self.end(slot, reason, ending);
            return;
        }
        let conn = &self.conns[slot];
        if conn.has(flag::READ_READY) || conn.has(flag::MORE_INPUT) {
            let id = conn.id;
            self.enqueue(slot, id);
        }
    }

    /// Run `f` on a live MMTP connection (false from `f`: the command failed);
    /// the connection is flushed at the end of the round. None: stale id.
    fn with_mmtp(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Engine, usize, &mut super::conn::MmtpConn) -> bool,
    ) -> Option<usize> {
        let Some(slot) = self.live(id) else {
            self.stale();
            return None;
        };
        // Taken out for the call so `f` may use the engine; put back after.
        let mut proto = std::mem::replace(
            &mut self.conns[slot].proto,
            Proto::Mqtt(super::conn::MqttConn::default()),
        );
        let ok = match &mut proto {
            Proto::Mmtp(m) => f(self, slot, m),
            Proto::Mqtt(_) => false,
        };
        self.conns[slot].proto = proto;
        if !ok {
            self.failed();
        }
        self.mark_dirty(slot);
        Some(slot)
    }

    fn accepted_mmtp(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.is_mmtp() && c.has(flag::ACCEPTED) && !c.has(flag::CLOSING))
            .map(|(_, c)| c.id)
            .collect()
    }

    fn push(
        &mut self,
        id: ConnId,
        message_id: MessageId,
        headers: &[(String, String)],
        body: &[u8],
        tracked: bool,
    ) {
        let cap = self.config.max_unacked_pushes;
        let mut refusal: Option<String> = None;
        let found = self.with_mmtp(id, |_, _, m| {
            if m.wire.unacked_deliveries().len() >= cap {
                refusal = Some(format!("{cap} pushes await their ACK on this connection"));
                return true;
            }
            match m.wire.send_push(&message_id, body, headers) {
                Ok(delivery_id) => {
                    m.inflight.push(Inflight {
                        delivery_id,
                        message_id: message_id.clone(),
                        tracked,
                    });
                    true
                }
                Err(error) => {
                    refusal = Some(error.to_string());
                    true
                }
            }
        });
        let stats = &self.shared.stats;
        match (found, refusal) {
            (Some(_), None) => Stats::inc(&stats.pushes_written),
            (found, refusal) => {
                Stats::inc(&stats.pushes_failed);
                let reason = match found {
                    None => "closed".to_string(),
                    Some(_) => refusal.unwrap_or_default(),
                };
                self.out.push(Event::PushFailed {
                    conn: id,
                    message_id,
                    reason,
                });
            }
        }
    }

    /// A QoS 1 push to a box whose pushes the engine holds (`mqttout`); how it
    /// ended, when not written, comes back as PUSH_FAILED ("closed": not live).
    fn mqtt_push(
        &mut self,
        id: ConnId,
        message_id: MessageId,
        headers: &[(String, String)],
        body: &[u8],
        tracked: bool,
    ) {
        let outcome = match self.live(id) {
            None => None,
            Some(slot) => {
                let conn = &mut self.conns[slot];
                let closing = conn.has(flag::CLOSING);
                let outcome = match &mut conn.proto {
                    Proto::Mqtt(MqttConn { out: Some(out), .. }) if !closing => {
                        let before = out.pushes();
                        let outcome =
                            out.push(&message_id, headers, body, tracked, &mut conn.out_plain);
                        track_pushes(&self.shared.stats, before, out.pushes());
                        out.sync_gauge();
                        count_written(&self.shared.stats, out);
                        Some(outcome)
                    }
                    _ => None,
                };
                if outcome == Some(PushOutcome::Sent) {
                    self.mark_dirty(slot);
                }
                outcome
            }
        };
        let stats = &self.shared.stats;
        let reason = match outcome {
            Some(PushOutcome::Sent | PushOutcome::Waiting | PushOutcome::Replayed) => {
                Stats::inc(&stats.pushes_written);
                return;
            }
            None => "closed".to_string(),
            Some(PushOutcome::Refused(why)) => why,
            Some(PushOutcome::Overflow) => OVERFLOW_REASON.to_string(),
        };
        Stats::inc(&stats.pushes_failed);
        self.out.push(Event::PushFailed {
            conn: id,
            message_id,
            reason,
        });
    }

    fn fanout(
        &mut self,
        push: &Arc<mmtp::PreparedPush>,
        message_id: MessageId,
        targets: Option<Vec<ConnId>>,
    ) {
        let stats = self.shared.clone();
        let stats = &stats.stats;
        Stats::inc(&stats.fanouts);
        let targets = targets.unwrap_or_else(|| self.accepted_mmtp());
        let cap = self.config.max_unacked_pushes;
        let (mut written, mut skipped) = (0u64, 0u64);
        for id in targets {
            let Some(slot) = self.live(id) else {
                skipped += 1;
                continue;
            };
            let conn = &mut self.conns[slot];
            if !conn.has(flag::ACCEPTED) {
                skipped += 1;
                continue;
            }
            let Proto::Mmtp(m) = &mut conn.proto else {
                skipped += 1;
                continue;
            };
            if m.wire.unacked_deliveries().len() >= cap {
                skipped += 1;
                continue;
            }
            match m.wire.send_prepared_push(push) {
                Ok(delivery_id) => {
                    m.inflight.push(Inflight {
                        delivery_id,
                        message_id: message_id.clone(),
                        tracked: false,
                    });
                    written += 1;
                    self.mark_dirty(slot);
                }
                Err(_) => skipped += 1,
            }
        }
        Stats::add(&stats.fanout_deliveries, written);
        Stats::add(&stats.fanout_skipped, skipped);
        self.out.push(Event::FanoutDone {
            message_id,
            written,
            skipped,
        });
    }
}

/// PUBLISHes and PUBRELs an `Outbound` wrote since the last call, to the counters.
pub(super) fn count_written(stats: &crate::stats::Stats, out: &mut Outbound) {
    let (publishes, pubrels) = out.take_written();
    if publishes != 0 {
        Stats::add(&stats.mqtt_held_publishes_out, publishes);
    }
    if pubrels != 0 {
        Stats::add(&stats.mqtt_held_pubrels_out, pubrels);
    }
}

/// The engine's gauges of the pushes it holds for MQTT boxes, after a change.
pub(super) fn track_pushes(
    stats: &crate::stats::Stats,
    before: (usize, usize),
    after: (usize, usize),
) {
    Stats::moved(&stats.mqtt_pushes_inflight, before.0, after.0);
    Stats::moved(&stats.mqtt_pushes_waiting, before.1, after.1);
}
