//! The receive path: bytes from the network to events. It faces hostile
//! peers: every length is checked before it is used, nothing is allocated
//! beyond what the limits allow, and every violation ends in a
//! [`ProtocolError`] (never a panic).

use std::sync::atomic::Ordering;

use std::sync::Arc;

use super::scoped::{apply_connection_update, check_connection_update, effective_request_headers};
use super::{
    generic_typed, setting, setting_problem, Connection, DictTransfer, LocalStream, RemoteStream,
    OP_HEADER,
};
use crate::body::{BodyCodec, BodyUsage, RAW_BODY};
use crate::dictionaries::{Dictionary, MAX_DICTIONARY_ID};
use crate::errors::{perr, ErrorCode, ProtocolError};
use crate::events::Event;
use crate::frames::{
    next_frame, scan, FrameRef, FrameType, FLAG_CONN, FLAG_DICT_LAST, FLAG_SETTINGS_ACK,
};
use crate::headers::Headers;
use crate::hello::{decode_hello, decode_hello_ack};
use crate::hpack::{Decoder, Encoder};
use crate::limits::{Limits, INITIAL_HEADER_TABLE_SIZE, MAX_PING_PAYLOAD, MIN_MAX_FRAME_SIZE};
use crate::messages;
use crate::messages::MessageTail;
use crate::presets::PresetTable;
use crate::state::{next_state, receivable, Role, State, Trigger};
use crate::typed::TypedTable;
use crate::varint::decode_varint_complete;

/// Marks an acknowledged id inside `unacked` while an ACK is processed.
const ACKED: u64 = 1 << 63;

/// What decoding a message frame needs from the connection.
struct MessageContext<'a> {
    decoder: Option<&'a mut Decoder>,
    limits: &'a Limits,
    codec: &'a BodyCodec,
    typed: &'a TypedTable,
    usage: Option<&'a BodyUsage>,
    recv_epoch_ms: u64,
}

impl MessageContext<'_> {
    /// Decode an HPACK block, appending to `headers`; return its list size.
    fn block(&mut self, block: &[u8], headers: &mut Headers) -> Result<u64, ProtocolError> {
        if block.is_empty() {
            return Ok(0);
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return perr(ErrorCode::StateError, "header block before HELLO");
        };
        decoder.decode(block, self.limits.max_header_list_size, headers)
    }

    fn typed(
        &self,
        tail: &MessageTail<'_>,
        echo_value: Option<&str>,
        used: u64,
        headers: &mut Headers,
    ) -> Result<(), ProtocolError> {
        if tail.typed_section.is_empty() {
            return Ok(());
        }
        let budget = self.limits.max_header_list_size as i128 - used as i128;
        self.typed.decode(
            tail.typed_section,
            self.recv_epoch_ms,
            echo_value,
            budget,
            headers,
        )
    }

    fn body(&self, tail: &MessageTail<'_>) -> Result<Vec<u8>, ProtocolError> {
        let limits = self.limits;
        if !tail.compressed {
            if tail.body.len() as u64 > limits.max_body_size {
                return perr(ErrorCode::BodyTooLarge, "raw body exceeds max_body_size");
            }
            if let Some(usage) = self.usage {
                let size = tail.body.len() as u64;
                usage.received(RAW_BODY, size, size);
            }
            return Ok(tail.body.to_vec());
        }
        let body =
            self.codec
                .decode(tail.body, limits.max_body_size, limits.max_zstd_window_size)?;
        if let Some(usage) = self.usage {
            let dict = decode_varint_complete(tail.body, 0).map_or(0, |(id, _)| id as i64);
            usage.received(dict, body.len() as u64, tail.body.len() as u64);
        }
        Ok(body)
    }
}

/// Decode a RESPONSE's or PUSH's header block, typed section and body.
fn decode_message(
    mut context: MessageContext<'_>,
    payload: &[u8],
    offset: usize,
    flags: u8,
    echo_value: Option<&str>,
) -> Result<(Headers, Vec<u8>), ProtocolError> {
    let tail = messages::decode_tail(payload, offset, flags)?;
    let mut headers = Headers::new();
    let hpack_size = context.block(tail.header_block, &mut headers)?;
    context.typed(&tail, echo_value, hpack_size, &mut headers)?;
    let body = context.body(&tail)?;
    Ok((headers, body))
}

/// A REQUEST's effective headers (`:op` first), body, and the connection
/// header list after it (None: unchanged), checked in spec section 6.4's order.
fn decode_request(
    mut context: MessageContext<'_>,
    payload: &[u8],
    offset: usize,
    flags: u8,
    connection: &Headers,
) -> Result<(Headers, Vec<u8>, Option<Headers>), ProtocolError> {
    let tail = messages::decode_tail(payload, offset, flags)?;
    let mut own = Headers::new();
    let hpack_size = context.block(tail.header_block, &mut own)?;
    let mut updated = None;
    if !tail.conn_block.is_empty() {
        let mut update = Headers::new();
        context.block(tail.conn_block, &mut update)?;
        check_connection_update(&update)?;
        let after = apply_connection_update(connection, &update);
        let limit = context.limits.max_connection_header_list_size;
        if after.list_size() > limit {
            return Err(ProtocolError::new(
                ErrorCode::HeaderListTooLarge,
                format!(
                    "connection headers of {} bytes exceed max_connection_header_list_size {limit}",
                    after.list_size()
                ),
            ));
        }
        updated = Some(after);
    }
    context.typed(&tail, None, hpack_size, &mut own)?;
    let connection = updated.as_ref().unwrap_or(connection);
    let headers = if connection.is_empty() {
        own
    } else {
        let effective = effective_request_headers(connection, &own);
        let limit = context.limits.max_header_list_size;
        if effective.list_size() > limit {
            return Err(ProtocolError::new(
                ErrorCode::HeaderListTooLarge,
                format!("request with its connection headers exceeds max_header_list_size {limit}"),
            ));
        }
        effective
    };
    let body = context.body(&tail)?;
    match headers.get(0) {
        Some((name, value)) if name == OP_HEADER && !value.is_empty() => {}
        _ => {
            return perr(
                ErrorCode::FieldError,
                "REQUEST must start with an :op header",
            )
        }
    }
    Ok((headers, body, updated))
}

impl Connection {
    fn message_context<'a>(
        &'a mut self,
        preset: &'a Option<Arc<PresetTable>>,
    ) -> MessageContext<'a> {
        MessageContext {
            decoder: self.decoder.as_mut(),
            limits: &self.limits,
            codec: &self.codec,
            typed: preset.as_deref().map_or(generic_typed(), |p| p.typed()),
            usage: self.usage.as_deref(),
            recv_epoch_ms: self.recv_epoch_ms,
        }
    }

    /// Process bytes from the peer, appending the events they carried.
    ///
    /// On a protocol violation the connection queues an ERROR frame on stream
    /// 0 (take it with [`take_output`](Self::take_output) and write it), is
    /// closed, and returns the error; like the reference, it then reports no
    /// event from this call (`events` is left as it was). A closed connection
    /// ignores what it receives.
    pub fn receive(&mut self, data: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        self.receive_frames(data, usize::MAX, events).map(|_| ())
    }

    /// Like [`receive`](Self::receive), handling at most `max_frames` frames;
    /// returns whether complete frames may still be buffered (then
    /// `receive_frames(&[], n, ..)` goes on). Lets an I/O driver bound the
    /// work one peer causes at a time.
    pub fn receive_frames(
        &mut self,
        data: &[u8],
        max_frames: usize,
        events: &mut Vec<Event>,
    ) -> Result<bool, ProtocolError> {
        if self.state == State::Closed {
            return Ok(false);
        }
        let events_before = events.len();
        let result = if self.partial.is_empty() {
            self.receive_buffer(data, max_frames, events)
                .map(|(consumed, more)| {
                    if consumed < data.len() && self.state != State::Closed {
                        self.partial = data[consumed..].to_vec();
                    }
                    more
                })
        } else {
            let mut buffer = std::mem::take(&mut self.partial);
            buffer.extend_from_slice(data);
            self.receive_buffer(&buffer, max_frames, events)
                .map(|(consumed, more)| {
                    if consumed < buffer.len() && self.state != State::Closed {
                        buffer.drain(..consumed);
                        self.partial = buffer;
                    }
                    more
                })
        };
        if let Err(error) = &result {
            events.truncate(events_before);
            self.partial = Vec::new();
            self.close_with_error(error.code, &error.message, 0);
        }
        result
    }

    /// Handle up to `max_frames` complete frames of `buffer`; return the bytes
    /// consumed and whether the frame budget stopped it.
    fn receive_buffer(
        &mut self,
        buffer: &[u8],
        max_frames: usize,
        events: &mut Vec<Event>,
    ) -> Result<(usize, bool), ProtocolError> {
        let mut offset = 0;
        let mut budget = max_frames;
        if self.state == State::AwaitHello && budget > 0 && !buffer.is_empty() {
            // The HELLO alone first, under max_hello_size (spec section 4.1);
            // the frames behind it are read under the limits it sets.
            let limit = self.limits.max_frame_size.min(self.limits.max_hello_size);
            let Some(frame) = next_frame(buffer, 0, limit)? else {
                return Ok((0, false));
            };
            self.handle(frame, &buffer[frame.start..frame.end], events)?;
            offset = frame.end;
            budget -= 1;
            if self.state == State::Closed {
                return Ok((offset, false));
            }
        }
        // The frame headers are checked before any of these frames is handled,
        // with the limit in force when the bytes arrived, as the reference does.
        let max_frame_size = self.limits.max_frame_size;
        let (complete, count) = scan(buffer, offset, max_frame_size, budget)?;
        while offset < complete {
            let Some(frame) = next_frame(buffer, offset, max_frame_size)? else {
                break;
            };
            self.handle(frame, &buffer[frame.start..frame.end], events)?;
            offset = frame.end;
            if self.state == State::Closed {
                return Ok((offset, false));
            }
        }
        Ok((complete, count == budget && complete < buffer.len()))
    }

    fn handle(
        &mut self,
        frame: FrameRef,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let frame_type = frame.frame_type;
        if let Some(counters) = &self.counters {
            counters.received[frame_type as usize].fetch_add(1, Ordering::Relaxed);
            counters.received_bytes[frame_type as usize]
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        if receivable(self.role, self.state) & frame_type.bit() == 0 {
            return Err(ProtocolError::new(
                ErrorCode::StateError,
                format!(
                    "{} cannot receive {} in state {}",
                    self.role.name(),
                    frame_type.name(),
                    self.state.name()
                ),
            ));
        }
        match frame_type {
            FrameType::Hello => self.on_hello(payload, events),
            FrameType::HelloAck => self.on_hello_ack(payload, events),
            FrameType::Request => self.on_request(payload, frame.flags, events),
            FrameType::Response => self.on_response(payload, frame.flags, events),
            FrameType::Push => self.on_push(payload, frame.flags, events),
            FrameType::Ack => self.on_ack(payload, events),
            FrameType::Ping => self.on_ping(payload, events),
            FrameType::Pong => {
                events.push(Event::PongReceived {
                    payload: payload.to_vec(),
                });
                Ok(())
            }
            FrameType::Settings => self.on_settings(payload, frame.flags, events),
            FrameType::GoAway => self.on_goaway(payload, events),
            FrameType::Error => self.on_error(payload, events),
            FrameType::Cancel => self.on_cancel(payload, events),
            FrameType::Dict => self.on_dict(payload, frame.flags, events),
        }
    }

    fn on_hello(&mut self, payload: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        let hello = decode_hello(payload, &self.limits)?;
        let Some(preset) = self.presets.get(hello.preset_id).cloned() else {
            return Err(ProtocolError::new(
                ErrorCode::UnknownPreset,
                self.presets.unknown_message(hello.preset_id),
            ));
        };
        self.decoder = Some(Decoder::new(preset.clone(), self.limits.header_table_size));
        let mut encoder = Encoder::new(preset.clone(), self.encoder_table_size_cap);
        self.preset = Some(preset);
        encoder.use_peer_table_size(hello.header_table_size);
        self.encoder = Some(encoder);
        self.peer_max_frame_size = hello.max_frame_size;
        self.peer_max_body_size = hello.max_body_size;
        self.peer_max_concurrent_streams = hello.max_concurrent_streams;
        self.peer_max_header_list_size = hello.max_header_list_size;
        self.outgoing_dictionary = hello
            .dictionaries
            .iter()
            .filter(|&&d| self.codec.has_dictionary(d))
            .max()
            .map_or(0, |&d| d as u32);
        self.recv_epoch_ms = hello.client_time_ms;
        if let Some(resolve) = self.usage_for_app.take() {
            self.usage = resolve(&hello.app_id);
        }
        self.state = next_state(self.role, self.state, Trigger::RecvHello)
            .map_err(|m| ProtocolError::new(ErrorCode::StateError, m))?;
        events.push(Event::HelloReceived(Box::new(hello)));
        Ok(())
    }

    fn on_hello_ack(
        &mut self,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let ack = decode_hello_ack(payload)?;
        if ack.preset_id != self.preset_id() as u64 {
            return Err(ProtocolError::new(
                ErrorCode::UnknownPreset,
                format!(
                    "HELLO_ACK preset {} differs from the HELLO's {}",
                    ack.preset_id,
                    self.preset_id()
                ),
            ));
        }
        self.recv_epoch_ms = ack.server_time_ms;
        if let Some(encoder) = &mut self.encoder {
            encoder.use_peer_table_size(ack.header_table_size);
        }
        self.peer_max_frame_size = ack.max_frame_size;
        self.peer_max_body_size = ack.max_body_size;
        self.peer_max_concurrent_streams = ack.max_concurrent_streams;
        self.peer_max_header_list_size = ack.max_header_list_size;
        self.peer_max_connection_header_list_size = ack.max_connection_header_list_size;
        let listed = std::mem::take(&mut self.hello_dictionaries);
        self.outgoing_dictionary = self
            .codec
            .dictionary_ids()
            .into_iter()
            .filter(|&d| d as u64 <= ack.newest_dictionary && listed.contains(&(d as u64)))
            .max()
            .unwrap_or(0);
        self.state = next_state(self.role, self.state, Trigger::RecvHelloAck)
            .map_err(|m| ProtocolError::new(ErrorCode::StateError, m))?;
        events.push(Event::HelloAccepted(Box::new(ack)));
        Ok(())
    }

    fn on_request(
        &mut self,
        payload: &[u8],
        flags: u8,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let (stream_id, offset) = messages::decode_stream_id(payload)?;
        let own_parity = if self.role == Role::Client { 1 } else { 0 };
        if stream_id % 2 == own_parity {
            return Err(ProtocolError::new(
                ErrorCode::StreamIdError,
                format!("REQUEST on stream {stream_id} has our parity"),
            ));
        }
        if self.remote_streams.iter().any(|s| s.id == stream_id) {
            return Err(ProtocolError::new(
                ErrorCode::StreamIdError,
                format!("stream {stream_id} is already open"),
            ));
        }
        if flags & FLAG_CONN != 0 && self.role == Role::Client {
            return perr(ErrorCode::ProtocolError, "CONN flag on a server's REQUEST");
        }
        let preset = self.preset.clone();
        let connection = std::mem::take(&mut self.conn_headers);
        let decoded = decode_request(
            self.message_context(&preset),
            payload,
            offset,
            flags,
            &connection,
        );
        let (mut headers, body, updated) = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                self.conn_headers = connection;
                return Err(error);
            }
        };
        self.conn_headers = updated.unwrap_or(connection);
        if self.goaway_sent {
            self.refuse(stream_id, "draining: retry on a new connection");
            return Ok(());
        }
        if self.remote_streams.len() as u64 >= self.limits.max_concurrent_streams {
            let why = format!(
                "max_concurrent_streams {}",
                self.limits.max_concurrent_streams
            );
            self.refuse(stream_id, &why);
            return Ok(());
        }
        let trace_id = self.typed().echo_value_of(&headers).map(Box::from);
        self.remote_streams.push(RemoteStream {
            id: stream_id,
            trace_id,
        });
        let op = headers.take_first_value();
        events.push(Event::RequestReceived {
            stream_id,
            op,
            headers,
            body,
        });
        Ok(())
    }

    fn refuse(&mut self, stream_id: u64, why: &str) {
        self.queue_error(stream_id, ErrorCode::RefusedStream.value(), 0, why);
    }

    /// Close one of our streams; `Ok(false)` if we had cancelled it.
    fn take_local_stream(
        &mut self,
        stream_id: u64,
        frame_name: &str,
    ) -> Result<bool, ProtocolError> {
        let Some(position) = self.local_streams.iter().position(|s| s.id == stream_id) else {
            return Err(ProtocolError::new(
                ErrorCode::StreamIdError,
                format!("{frame_name} for stream {stream_id} that is not open"),
            ));
        };
        let stream: LocalStream = self.local_streams.swap_remove(position);
        if self.local_streams.is_empty() {
            self.local_streams = Vec::new();
        }
        Ok(!stream.cancelled)
    }

    fn on_response(
        &mut self,
        payload: &[u8],
        flags: u8,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let (stream_id, offset) = messages::decode_stream_id(payload)?;
        let (status, offset) = decode_varint_complete(payload, offset)?;
        let echo = self
            .local_streams
            .iter()
            .find(|s| s.id == stream_id)
            .and_then(|s| s.trace_id.as_deref());
        let preset = self.preset.as_deref();
        let context = MessageContext {
            decoder: self.decoder.as_mut(),
            limits: &self.limits,
            codec: &self.codec,
            typed: preset.map_or(generic_typed(), |p| p.typed()),
            usage: self.usage.as_deref(),
            recv_epoch_ms: self.recv_epoch_ms,
        };
        let (headers, body) = decode_message(context, payload, offset, flags, echo)?;
        if self.take_local_stream(stream_id, "RESPONSE")? {
            events.push(Event::ResponseReceived {
                stream_id,
                status,
                headers,
                body,
            });
        }
        Ok(())
    }

    fn on_push(
        &mut self,
        payload: &[u8],
        flags: u8,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let (delivery_id, offset) = decode_varint_complete(payload, 0)?;
        if delivery_id <= self.last_delivery_id {
            return Err(ProtocolError::new(
                ErrorCode::ProtocolError,
                format!(
                    "PUSH delivery id {delivery_id} is not above {}",
                    self.last_delivery_id
                ),
            ));
        }
        self.last_delivery_id = delivery_id;
        let (length, offset) = decode_varint_complete(payload, offset)?;
        if length < 1
            || length > self.limits.max_message_id_length
            || length > (payload.len() - offset) as u64
        {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("PUSH message id length {length} invalid"),
            ));
        }
        let end = offset + length as usize;
        let message_id = payload[offset..end].to_vec();
        let preset = self.preset.clone();
        let (headers, body) =
            decode_message(self.message_context(&preset), payload, end, flags, None)?;
        events.push(Event::PushReceived {
            delivery_id,
            message_id,
            headers,
            body,
        });
        Ok(())
    }

    fn on_ack(&mut self, payload: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        let mut ids = Vec::new();
        messages::decode_ack(payload, self.limits.max_acks_per_frame, &mut ids)?;
        if self.unacked.is_empty() {
            return Ok(());
        }
        // Known ids in ACK order, each once; marked, then removed in one pass.
        let unacked = &mut self.unacked;
        ids.retain(
            |&id| match unacked.binary_search_by(|probe| (probe & !ACKED).cmp(&id)) {
                Ok(i) if unacked[i] & ACKED == 0 => {
                    unacked[i] |= ACKED;
                    true
                }
                _ => false,
            },
        );
        if ids.is_empty() {
            return Ok(());
        }
        self.unacked.retain(|&id| id & ACKED == 0);
        if self.unacked.is_empty() {
            self.unacked = Vec::new();
        }
        events.push(Event::AckReceived { delivery_ids: ids });
        Ok(())
    }

    fn on_ping(&mut self, payload: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        if payload.len() > MAX_PING_PAYLOAD {
            return perr(ErrorCode::FieldError, "PING payload over 8 bytes");
        }
        self.queue(FrameType::Pong, 0, payload);
        events.push(Event::PingReceived {
            payload: payload.to_vec(),
        });
        Ok(())
    }

    fn on_settings(
        &mut self,
        payload: &[u8],
        flags: u8,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        if flags & FLAG_SETTINGS_ACK != 0 {
            if !payload.is_empty() {
                return perr(ErrorCode::FieldError, "SETTINGS ACK must be empty");
            }
            // An ACK we did not ask for changes nothing, so it is ignored.
            if !self.settings_awaiting_ack.is_empty() {
                let first = self.settings_awaiting_ack.remove(0);
                if self.settings_awaiting_ack.is_empty() {
                    self.settings_awaiting_ack = Vec::new();
                }
                for (key, value) in first {
                    self.apply_own_setting(key, value);
                }
            }
            events.push(Event::SettingsAcknowledged);
            return Ok(());
        }
        let mut settings = Vec::new();
        messages::decode_settings(payload, &mut settings)?;
        for &(key, value) in &settings {
            self.apply_setting(key, value)?;
        }
        self.queue(FrameType::Settings, FLAG_SETTINGS_ACK, &[]);
        events.push(Event::SettingsReceived { settings });
        Ok(())
    }

    fn apply_setting(&mut self, key: u64, value: u64) -> Result<(), ProtocolError> {
        if let Some(problem) = setting_problem(key, value) {
            return Err(ProtocolError::new(
                ErrorCode::FieldError,
                format!("SETTINGS {key}={value}: {problem}"),
            ));
        }
        match key {
            setting::HEADER_TABLE_SIZE => {
                debug_assert!(value >= INITIAL_HEADER_TABLE_SIZE);
                if let Some(encoder) = &mut self.encoder {
                    encoder.use_peer_table_size(value);
                }
            }
            setting::MAX_FRAME_SIZE => {
                debug_assert!(value >= MIN_MAX_FRAME_SIZE);
                self.peer_max_frame_size = value;
            }
            setting::MAX_CONCURRENT_STREAMS => self.peer_max_concurrent_streams = value,
            setting::MAX_BODY_SIZE => self.peer_max_body_size = value,
            setting::MAX_HEADER_LIST_SIZE => self.peer_max_header_list_size = value,
            // HEARTBEAT_S and unknown settings need no wire-level action.
            _ => {}
        }
        Ok(())
    }

    fn on_goaway(&mut self, payload: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        let goaway = messages::decode_goaway(payload)?;
        self.goaway_received = true;
        self.state = next_state(self.role, self.state, Trigger::GoAway)
            .map_err(|m| ProtocolError::new(ErrorCode::StateError, m))?;
        events.push(Event::GoAwayReceived {
            code: goaway.code,
            reconnect_after_ms: goaway.reconnect_after_ms,
            alternate_endpoint: goaway.alternate_endpoint,
            message: goaway.message,
        });
        Ok(())
    }

    fn on_error(&mut self, payload: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        let error = messages::decode_error(payload)?;
        if error.stream_id == 0 {
            self.state = State::Closed;
            events.push(Event::ConnectionErrorReceived {
                code: error.code,
                retry_after_ms: error.retry_after_ms,
                message: error.message,
            });
            return Ok(());
        }
        if self.take_local_stream(error.stream_id, "ERROR")? {
            events.push(Event::StreamErrorReceived {
                stream_id: error.stream_id,
                code: error.code,
                retry_after_ms: error.retry_after_ms,
                message: error.message,
            });
        }
        Ok(())
    }

    fn on_cancel(&mut self, payload: &[u8], events: &mut Vec<Event>) -> Result<(), ProtocolError> {
        let (stream_id, offset) = messages::decode_stream_id(payload)?;
        if offset != payload.len() {
            return perr(
                ErrorCode::FieldError,
                "CANCEL carries bytes after its stream id",
            );
        }
        let Some(position) = self.remote_streams.iter().position(|s| s.id == stream_id) else {
            return Ok(()); // already answered: our final frame crossed the CANCEL
        };
        self.remote_streams.swap_remove(position);
        if self.remote_streams.is_empty() {
            self.remote_streams = Vec::new();
        }
        self.queue_error(stream_id, ErrorCode::Cancelled.value(), 0, "");
        events.push(Event::StreamCancelled { stream_id });
        Ok(())
    }

    fn on_dict(
        &mut self,
        payload: &[u8],
        flags: u8,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let chunk = messages::decode_dict_chunk(payload)?;
        let limit = self.limits.max_dictionary_size;
        if !(1..=MAX_DICTIONARY_ID).contains(&chunk.dict_id)
            || !(1..=limit).contains(&chunk.total_size)
        {
            return Err(ProtocolError::new(
                ErrorCode::DictionaryError,
                format!(
                    "DICT id {} size {} (limit {limit})",
                    chunk.dict_id, chunk.total_size
                ),
            ));
        }
        let transfer = self.dict_transfer.get_or_insert_with(|| {
            Box::new(DictTransfer {
                dict_id: chunk.dict_id as u32,
                total_size: chunk.total_size,
                data: Vec::new(),
            })
        });
        let held = transfer.data.len() as u64;
        if chunk.dict_id != transfer.dict_id as u64
            || chunk.total_size != transfer.total_size
            || chunk.offset != held
            || held + chunk.chunk.len() as u64 > transfer.total_size
        {
            return perr(ErrorCode::DictionaryError, "DICT chunk out of sequence");
        }
        transfer.data.extend_from_slice(chunk.chunk);
        if flags & FLAG_DICT_LAST == 0 {
            return Ok(());
        }
        let Some(transfer) = self.dict_transfer.take() else {
            return Ok(());
        };
        if transfer.data.len() as u64 != transfer.total_size {
            return perr(
                ErrorCode::DictionaryError,
                "DICT ended before its total size",
            );
        }
        let dictionary = Dictionary::new(transfer.dict_id, transfer.data)
            .map_err(|m| ProtocolError::new(ErrorCode::DictionaryError, m))?;
        self.codec.check_dictionary(&dictionary)?;
        self.codec.add_dictionary(dictionary.clone())?;
        // The server holds what it delivers, so requests may use it too.
        self.outgoing_dictionary = self.outgoing_dictionary.max(dictionary.dict_id);
        events.push(Event::DictionaryReceived(dictionary));
        Ok(())
    }
}
