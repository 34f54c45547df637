//! QoS 1 pushes held by the engine on one MQTT connection, as MMTP's outstanding
//! pushes are: the PUBLISH is built here, goes out under the message's stable
//! packet id within the box's Receive Maximum, and its PUBACK is resolved here to
//! the message id Python hears of (batched ACKs, as MMTP's), so Python does no
//! per-packet-id work for pushes. A PUBACK refusing the push (MQTT 5, reason 0x80
//! or more) ends it too (MQTT-4.4.0-2: not sent again) but goes up with its reason
//! (`MQTT_REFUSED`): Python reports the push failed, as its own path does.
//!
//! Python's own QoS 1/2 PUBLISHes on such a connection (messages routed from other
//! boxes, RPC calls, retained copies, fan-out pushes; and a PUBREL restored on
//! reconnect) keep their state in Python (`channel.mqtt.flow`) but go out through
//! here (`hold`): their packet ids and the in-flight limit are shared with the
//! pushes, so two exchanges never share an id and the limit counts them all.
//! Their acknowledgements go up to Python as they came.
//!
//! The same rules as `channel.mqtt.flow.Outbound` (the Python engine's, the
//! reference): a message waits (in order) while the limit is reached or its id is
//! taken; one already in flight under its id is not sent again (a replay); more
//! than `max_waiting` waiting ends the connection (slow consumer). Nothing here
//! outlives the connection: a push stays in the device's queue until its ACK, and
//! the next connection of the session gets it again (DUP set, `resent`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::boundary::MessageId;

/// What the session's connection announced and the node configured (MQTT_PUSHES).
#[derive(Debug, Clone)]
pub struct PushSetup {
    /// The push topic as a length-prefixed UTF-8 string (checked by Python).
    pub head: Vec<u8>,
    /// MQTT 5: a push carries its `message-id` (and headers) as user properties.
    pub mqtt5: bool,
    /// PUBLISHes unacknowledged at most (the box's Receive Maximum or ours).
    pub limit: usize,
    /// Messages waiting behind the limit before the box is a slow consumer.
    pub max_waiting: usize,
    /// The box's Maximum Packet Size (0: none).
    pub max_packet_bytes: usize,
    /// Queued messages accepted at or before this (unix ms) may have reached an
    /// earlier connection of the session: they go out with DUP set (0: none).
    pub dup_before_ms: u64,
}

/// An exchange in flight (or waiting) on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A push: its acknowledgement is reported by the engine.
    Push {
        message_id: MessageId,
        tracked: bool,
    },
    /// Python's PUBLISH (QoS 1 or 2) or restored PUBREL (2): acknowledgements go up.
    Python { qos: u8 },
}

#[derive(Debug)]
struct Waiting {
    packet_id: u16,
    data: Vec<u8>,
    held: Held,
}

/// How a push went.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Written to `out`.
    Sent,
    /// Behind the limit (or its id is taken): written later, in order.
    Waiting,
    /// In flight already under its id (a replay): not sent twice.
    Replayed,
    /// It can never go to this box (too large, a header MQTT cannot carry).
    Refused(String),
    /// Too many waiting: the box is a slow consumer (the push stays queued).
    Overflow,
}

/// What a packet from the box meant for the exchanges held here.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// It acknowledged a push: the engine reports it; Python does not see the packet.
    /// `reason`: the PUBACK's reason code (0 when absent; 0x80 or more: the box
    /// refused the message, MQTT 5); `pubcomp`: it was a PUBCOMP (for the counts).
    Push {
        message_id: MessageId,
        tracked: bool,
        reason: u8,
        pubcomp: bool,
    },
    /// Python's to handle (`freed`: an id and a slot of the limit were freed).
    Forward { freed: bool },
}

/// Why the engine refuses a push, word for word as the Python engine's connection does.
pub const OVERFLOW_REASON: &str = "too many messages waiting for acknowledgements";

/// Packet ids are CRC-32 remainders (stable ids) or a counter's: one multiply spreads
/// them enough (SipHash, the default, showed in the engine's profile).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8 | u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap = HashMap<u16, Held, BuildHasherDefault<IdHasher>>;

/// (in flight, waiting) of one connection's pushes, readable from Python's thread
/// (the admin device lookup) while the engine thread changes them.
pub type HeldGauge = Arc<[AtomicUsize; 2]>;

#[derive(Debug)]
pub struct Outbound {
    setup: PushSetup,
    inflight: IdMap,
    waiting: VecDeque<Waiting>,
    /// Of them, pushes (the engine's gauges; Python counts its own).
    pushes_inflight: usize,
    pushes_waiting: usize,
    /// `pushes()` as last published (`sync_gauge`).
    gauge: HeldGauge,
    /// PUBLISHes and PUBRELs written to the output since `take_written`.
    publishes_out: u64,
    pubrels_out: u64,
}

impl Outbound {
    pub fn new(setup: PushSetup) -> Self {
        Outbound {
            setup,
            inflight: IdMap::default(),
            waiting: VecDeque::new(),
            pushes_inflight: 0,
            pushes_waiting: 0,
            gauge: HeldGauge::default(),
            publishes_out: 0,
            pubrels_out: 0,
        }
    }

    /// The per-connection gauge `sync_gauge` keeps up to date.
    pub fn gauge(&self) -> HeldGauge {
        self.gauge.clone()
    }

    /// Publish `pushes()` to the gauge (after a change).
    pub fn sync_gauge(&self) {
        self.gauge[0].store(self.pushes_inflight, Ordering::Relaxed);
        self.gauge[1].store(self.pushes_waiting, Ordering::Relaxed);
    }

    /// (PUBLISHes, PUBRELs) written since the last call: what went on the wire.
    pub fn take_written(&mut self) -> (u64, u64) {
        let written = (self.publishes_out, self.pubrels_out);
        (self.publishes_out, self.pubrels_out) = (0, 0);
        written
    }

    /// (in flight, waiting) of the pushes held (not Python's PUBLISHes).
    pub fn pushes(&self) -> (usize, usize) {
        (self.pushes_inflight, self.pushes_waiting)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A QoS 1 push: its PUBLISH appended to `out` now, or later (`ready`).
    pub fn push(
        &mut self,
        message_id: &MessageId,
        headers: &[(String, String)],
        body: &[u8],
        tracked: bool,
        out: &mut Vec<u8>,
    ) -> PushOutcome {
        let packet_id = stable_packet_id(message_id);
        let props_bytes = if self.setup.mqtt5 {
            match push_properties_len(message_id, headers) {
                Ok(len) => len,
                Err(why) => return PushOutcome::Refused(why),
            }
        } else {
            0
        };
        let remaining = self.setup.head.len() + 2 + props_bytes + body.len();
        let size = 1 + varint_len(remaining) + remaining;
        let max = self.setup.max_packet_bytes;
        if max != 0 && size > max {
            return PushOutcome::Refused(format!(
                "{size} bytes, over the box's maximum packet size {max}"
            ));
        }
        // Written straight into the output when it goes out now (the usual case: no
        // allocation per push); built apart only to wait.
        let publish = PushPublish {
            head: &self.setup.head,
            body,
            packet_id,
            dup: resent(message_id, self.setup.dup_before_ms),
            mqtt5: self.setup.mqtt5,
            message_id,
            headers,
            remaining,
        };
        if self.waiting.len() >= self.setup.max_waiting {
            return PushOutcome::Overflow;
        }
        let held = Held::Push {
            message_id: message_id.clone(),
            tracked,
        };
        match self.inflight.get(&packet_id) {
            Some(Held::Push {
                message_id: sent, ..
            }) if sent == message_id => return PushOutcome::Replayed,
            None if self.waiting.is_empty() && self.inflight.len() < self.setup.limit => {
                self.inflight.insert(packet_id, held);
                self.pushes_inflight += 1;
                self.publishes_out += 1;
                out.reserve(size);
                publish.write(out);
                return PushOutcome::Sent;
            }
            _ => {}
        }
        self.pushes_waiting += 1;
        let mut data = Vec::with_capacity(size);
        publish.write(&mut data);
        self.waiting.push_back(Waiting {
            packet_id,
            data,
            held,
        });
        PushOutcome::Waiting
    }

    /// Python's QoS 1/2 PUBLISH or a PUBREL (its id chosen by Python): written to
    /// `out` now or later, in order with the pushes. False: not such a packet (the
    /// caller writes it as it is).
    pub fn hold(&mut self, data: Vec<u8>, out: &mut Vec<u8>) -> bool {
        let Some((packet_id, qos)) = held_packet_id(&data) else {
            return false;
        };
        let held = Held::Python { qos };
        if self.waiting.is_empty()
            && self.inflight.len() < self.setup.limit
            && !self.inflight.contains_key(&packet_id)
        {
            self.count_written(&data);
            self.inflight.insert(packet_id, held);
            out.extend_from_slice(&data);
        } else {
            self.waiting.push_back(Waiting {
                packet_id,
                data,
                held,
            });
        }
        true
    }

    /// A packet from the box: PUBACK and PUBCOMP end an exchange (as
    /// `Outbound.done` does in Python, whatever its QoS), a PUBREC with a reason of
    /// 0x80 or more ends a QoS 2 one; anything else is Python's only.
    pub fn received(&mut self, packet: &[u8]) -> Resolved {
        let Some((kind, packet_id, reason)) = ack_of(packet) else {
            return Resolved::Forward { freed: false };
        };
        let reason = match reason {
            None => 0,
            // A reason code MQTT 3.1.1 has not, or one its packet may not carry: the
            // packet is malformed, and Python's parser ends the connection for it
            // (held pushes stay queued for the next one).
            Some(code) if self.setup.mqtt5 && allowed_reason(kind, code) => code,
            Some(_) => return Resolved::Forward { freed: false },
        };
        let ends = match kind {
            PUBACK | PUBCOMP => true,
            _ => {
                reason >= 0x80
                    && matches!(self.inflight.get(&packet_id), Some(Held::Python { qos: 2 }))
            }
        };
        if !ends {
            return Resolved::Forward { freed: false };
        }
        let held = self.inflight.remove(&packet_id);
        if self.inflight.is_empty() && self.inflight.capacity() > IDLE_CAPACITY {
            // An idle box keeps no table sized for a burst (as MMTP's in-flight Vec).
            self.inflight = IdMap::default();
        }
        match held {
            Some(Held::Push {
                message_id,
                tracked,
            }) => {
                self.pushes_inflight -= 1;
                Resolved::Push {
                    message_id,
                    tracked,
                    reason,
                    pubcomp: kind == PUBCOMP,
                }
            }
            Some(Held::Python { .. }) => Resolved::Forward { freed: true },
            None => Resolved::Forward { freed: false },
        }
    }

    fn count_written(&mut self, data: &[u8]) {
        if data.first().map(|b| b >> 4) == Some(PUBREL) {
            self.pubrels_out += 1;
        } else {
            self.publishes_out += 1;
        }
    }

    /// What waits and may go now (room in flight, its id free), appended to `out`
    /// in order; a message whose id is still taken keeps its place.
    pub fn ready(&mut self, out: &mut Vec<u8>) {
        if self.waiting.is_empty() {
            return;
        }
        let mut kept = VecDeque::new();
        while self.inflight.len() < self.setup.limit {
            let Some(item) = self.waiting.pop_front() else {
                break;
            };
            if self.inflight.contains_key(&item.packet_id) {
                kept.push_back(item);
                continue;
            }
            self.count_written(&item.data);
            out.extend_from_slice(&item.data);
            if matches!(item.held, Held::Push { .. }) {
                self.pushes_waiting -= 1;
                self.pushes_inflight += 1;
            }
            self.inflight.insert(item.packet_id, item.held);
        }
        kept.append(&mut self.waiting);
        self.waiting = kept;
    }
}

/// In-flight entries an empty table may keep room for (one to three pushes in flight
/// at a time, the usual case, allocate nothing per push).
const IDLE_CAPACITY: usize = 8;

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;

/// The reason codes MQTT 5 lets a PUBACK / PUBREC (3.4.2.1) or PUBCOMP (3.7.2.1)
/// carry (`channel.mqtt.reasons.ALLOWED_REASON_CODES`).
fn allowed_reason(kind: u8, code: u8) -> bool {
    match kind {
        PUBCOMP => matches!(code, 0x00 | 0x92),
        _ => matches!(
            code,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        ),
    }
}

/// (type, packet id, reason code if present) of a PUBACK, PUBREC or PUBCOMP; None
/// for other packets or ones too short to say.
fn ack_of(packet: &[u8]) -> Option<(u8, u16, Option<u8>)> {
    let kind = packet.first()? >> 4;
    if !matches!(kind, PUBACK | PUBREC | PUBCOMP) || packet[0] & 0x0F != 0 {
        return None;
    }
    let at = body_start(packet)?;
    let id = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    Some((kind, id, packet.get(at + 2).copied()))
}

/// Where a packet's variable header starts (after the remaining length).
fn body_start(packet: &[u8]) -> Option<usize> {
    let mut at = 1;
    while packet.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    Some(at + 1)
}

/// (packet id, QoS) of a QoS 1/2 PUBLISH or a PUBREL (QoS 2: it holds a slot
/// until PUBCOMP); None otherwise.
fn held_packet_id(data: &[u8]) -> Option<(u16, u8)> {
    let first = *data.first()?;
    let at = body_start(data)?;
    match first >> 4 {
        3 => {
            let qos = (first >> 1) & 3;
            if qos == 0 || qos == 3 {
                return None;
            }
            let topic_len = u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]) as usize;
            let id_at = at + 2 + topic_len;
            let id = u16::from_be_bytes([*data.get(id_at)?, *data.get(id_at + 1)?]);
            (id != 0).then_some((id, qos))
        }
        PUBREL => {
            let id = u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]);
            (id != 0).then_some((id, 2))
        }
        _ => None,
    }
}

/// The packet id a queued message is always sent under (1..65535):
/// `channel.mqtt.flow.stable_packet_id`, 1 + CRC-32 (zlib's) of the id mod 65535.
pub fn stable_packet_id(message_id: &[u8]) -> u16 {
    (1 + crc32(message_id) % 65535) as u16
}

fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &byte in data {
        crc = TABLE[((crc ^ byte as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// When the gateway accepted a message, from its id (`new_message_id`: 24 Crockford
/// base32 digits, the top 48 of 120 bits the unix ms); None for other ids.
/// `channel.mqtt.flow.accepted_at_ms`.
pub fn accepted_at_ms(message_id: &[u8]) -> Option<u64> {
    if message_id.len() != 24 {
        return None;
    }
    let mut value: u64 = 0;
    for &char in &message_id[..10] {
        let digit = match char {
            b'0'..=b'9' => char - b'0',
            b'a'..=b'h' => char - b'a' + 10,
            b'j' | b'k' => char - b'j' + 18,
            b'm' | b'n' => char - b'm' + 20,
            b'p'..=b't' => char - b'p' + 22,
            b'v'..=b'z' => char - b'v' + 27,
            _ => return None,
        };
        value = value << 5 | u64::from(digit);
    }
    Some(value >> 2)
}

/// `Outgoing.resent`: the message may have reached an earlier connection.
pub fn resent(message_id: &[u8], dup_before_ms: u64) -> bool {
    if dup_before_ms == 0 {
        return false;
    }
    accepted_at_ms(message_id).map_or(true, |at| at <= dup_before_ms)
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A push's QoS 1 PUBLISH, checked and measured, written where it goes.
struct PushPublish<'a> {
    head: &'a [u8],
    body: &'a [u8],
    packet_id: u16,
    dup: bool,
    mqtt5: bool,
    message_id: &'a [u8],
    headers: &'a [(String, String)],
    /// Its remaining length (`push_properties_len` included).
    remaining: usize,
}

impl PushPublish<'_> {
    /// The bytes `push_publish(head, body, packet_id, dup, &push_properties(..))`
    /// makes, appended to `out` (the strings were checked by `push_properties_len`).
    fn write(&self, out: &mut Vec<u8>) {
        out.push(0x32 | if self.dup { 0x08 } else { 0 });
        put_varint(out, self.remaining);
        out.extend_from_slice(self.head);
        out.extend_from_slice(&self.packet_id.to_be_bytes());
        if self.mqtt5 {
            let len = user_properties_len(self.message_id, self.headers);
            put_varint(out, len);
            put_user_property(out, b"message-id", self.message_id);
            for (name, value) in self.headers {
                put_user_property(out, name.as_bytes(), value.as_bytes());
            }
        }
        out.extend_from_slice(self.body);
    }
}

fn user_properties_len(message_id: &[u8], headers: &[(String, String)]) -> usize {
    let pair = |name: usize, value: usize| 1 + 2 + name + 2 + value;
    headers
        .iter()
        .fold(pair(10, message_id.len()), |sum, (name, value)| {
            sum + pair(name.len(), value.len())
        })
}

fn put_user_property(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(USER_PROPERTY);
    for text in [name, value] {
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text);
    }
}

/// The bytes of a push's MQTT 5 properties (length included), or why MQTT cannot
/// carry them (`push_properties`' checks, without building them).
pub fn push_properties_len(
    message_id: &[u8],
    headers: &[(String, String)],
) -> Result<usize, String> {
    let strings = headers
        .iter()
        .flat_map(|(name, value)| [name.as_bytes(), value.as_bytes()]);
    for text in std::iter::once(message_id).chain(strings) {
        check_string(text)?;
    }
    let len = user_properties_len(message_id, headers);
    Ok(varint_len(len) + len)
}

fn check_string(text: &[u8]) -> Result<(), String> {
    if text.contains(&0) {
        return Err("UTF-8 strings may not contain U+0000".into());
    }
    if text.len() > usize::from(u16::MAX) {
        return Err(format!("string of {} bytes exceeds 65535", text.len()));
    }
    Ok(())
}

/// A QoS 1 PUBLISH of a push (`channel.mqtt.publish.push_bytes`).
pub fn push_publish(head: &[u8], body: &[u8], packet_id: u16, dup: bool, props: &[u8]) -> Vec<u8> {
    let remaining = head.len() + 2 + props.len() + body.len();
    let mut data = Vec::with_capacity(remaining + 5);
    data.push(0x32 | if dup { 0x08 } else { 0 });
    put_varint(&mut data, remaining);
    data.extend_from_slice(head);
    data.extend_from_slice(&packet_id.to_be_bytes());
    data.extend_from_slice(props);
    data.extend_from_slice(body);
    data
}

const USER_PROPERTY: u8 = 0x26;

fn put_string(out: &mut Vec<u8>, text: &[u8]) -> Result<(), String> {
    check_string(text)?;
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
    Ok(())
}

/// A push's MQTT 5 properties: the `message-id` user property, then its headers
/// (`channel.mqtt.publish.push_properties`).
pub fn push_properties(message_id: &[u8], headers: &[(String, String)]) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(16 + message_id.len());
    body.push(USER_PROPERTY);
    put_string(&mut body, b"message-id")?;
    put_string(&mut body, message_id)?;
    for (name, value) in headers {
        body.push(USER_PROPERTY);
        put_string(&mut body, name.as_bytes())?;
        put_string(&mut body, value.as_bytes())?;
    }
    let mut props = Vec::with_capacity(body.len() + 4);
    put_varint(&mut props, body.len());
    props.extend_from_slice(&body);
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(limit: usize, mqtt5: bool) -> PushSetup {
        PushSetup {
            head: b"\x00\x03d/p".to_vec(),
            mqtt5,
            limit,
            max_waiting: 4,
            max_packet_bytes: 0,
            dup_before_ms: 0,
        }
    }

    fn id(text: &str) -> MessageId {
        MessageId::from(text.as_bytes())
    }

    fn puback(packet_id: u16) -> Vec<u8> {
        let [high, low] = packet_id.to_be_bytes();
        vec![0x40, 0x02, high, low]
    }

    #[test]
    fn stable_ids_are_zlibs_crc32() {
        // zlib.crc32(b"123456789") == 0xCBF43926; 1 + that % 65535.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            stable_packet_id(b"123456789"),
            (1 + 0xCBF4_3926u32 % 65535) as u16
        );
        assert_eq!(stable_packet_id(b""), 1);
        // A gateway id, and what channel.mqtt.flow says of it.
        assert_eq!(stable_packet_id(b"06h4z06mff3r97hkz9skm4xf"), 59765);
        assert_eq!(
            accepted_at_ms(b"06h4z06mff3r97hkz9skm4xf"),
            Some(1_796_630_172_795)
        );
    }

    #[test]
    fn accepted_at_reads_the_id_time() {
        // 10 digits "0000000001" = 1, >> 2 = 0; "0000000040" = 4 * 32 = 128 -> 32.
        assert_eq!(accepted_at_ms(b"000000000100000000000000"), Some(0));
        assert_eq!(accepted_at_ms(b"000000004000000000000000"), Some(32));
        assert_eq!(accepted_at_ms(b"00000000zz00000000000000"), Some(1023 >> 2));
        assert_eq!(accepted_at_ms(b"short"), None);
        assert_eq!(
            accepted_at_ms(b"0000000i0000000000000000"),
            None,
            "i is no digit"
        );
        assert!(
            resent(b"short", 5),
            "an id not made by the gateway: maybe sent"
        );
        assert!(!resent(b"short", 0));
        assert!(resent(b"000000004000000000000000", 32));
        assert!(!resent(b"000000004000000000000000", 31));
    }

    #[test]
    fn a_push_goes_out_and_its_puback_resolves_it() {
        let mut outbound = Outbound::new(setup(2, false));
        let mut out = Vec::new();
        let m = id("m1");
        assert_eq!(
            outbound.push(&m, &[], b"hi", true, &mut out),
            PushOutcome::Sent
        );
        let packet_id = stable_packet_id(b"m1");
        assert_eq!(
            out,
            push_publish(b"\x00\x03d/p", b"hi", packet_id, false, b"")
        );
        assert_eq!(out[0], 0x32);
        assert_eq!(outbound.inflight(), 1);
        assert_eq!(
            outbound.received(&puback(packet_id)),
            Resolved::Push {
                message_id: m,
                tracked: true,
                reason: 0,
                pubcomp: false
            }
        );
        assert_eq!(outbound.inflight(), 0);
        // Again, or for an id never sent: Python's to answer (it ignores it).
        assert_eq!(
            outbound.received(&puback(packet_id)),
            Resolved::Forward { freed: false }
        );
    }

    #[test]
    fn a_refusing_puback_ends_the_exchange_with_its_reason() {
        let mut outbound = Outbound::new(setup(1, true));
        let mut out = Vec::new();
        let (a, b) = (id("a"), id("b"));
        outbound.push(&a, &[], b"1", true, &mut out);
        assert_eq!(
            outbound.push(&b, &[], b"2", false, &mut out),
            PushOutcome::Waiting
        );
        assert_eq!(
            outbound.take_written(),
            (1, 0),
            "the waiting one is not out"
        );
        let [high, low] = stable_packet_id(b"a").to_be_bytes();
        // PUBACK 0x87 (Not authorized) with an empty property length.
        assert_eq!(
            outbound.received(&[0x40, 0x04, high, low, 0x87, 0x00]),
            Resolved::Push {
                message_id: a,
                tracked: true,
                reason: 0x87,
                pubcomp: false
            }
        );
        // A code PUBACK may not carry: Python's (it ends the connection), held on.
        let [high, low] = stable_packet_id(b"b").to_be_bytes();
        outbound.ready(&mut out);
        assert_eq!(outbound.take_written(), (1, 0));
        assert_eq!(
            outbound.received(&[0x40, 0x03, high, low, 0x81]),
            Resolved::Forward { freed: false }
        );
        outbound.sync_gauge();
        let gauge = outbound.gauge();
        assert_eq!(gauge[0].load(Ordering::Relaxed), 1);
        assert_eq!(gauge[1].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_idle_box_keeps_no_table_sized_for_a_burst() {
        let mut outbound = Outbound::new(setup(100, false));
        let mut out = Vec::new();
        let ids: Vec<MessageId> = (0..50).map(|n| id(&format!("m{n}"))).collect();
        for m in &ids {
            assert_eq!(
                outbound.push(m, &[], b"", true, &mut out),
                PushOutcome::Sent
            );
        }
        assert!(outbound.inflight.capacity() >= 50);
        for m in &ids {
            outbound.received(&puback(stable_packet_id(m)));
        }
        assert_eq!(outbound.inflight(), 0);
        assert!(outbound.inflight.capacity() <= IDLE_CAPACITY);
    }

    #[test]
    fn the_limit_holds_pushes_back_in_order() {
        let mut outbound = Outbound::new(setup(1, false));
        let mut out = Vec::new();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        assert_eq!(
            outbound.push(&a, &[], b"1", true, &mut out),
            PushOutcome::Sent
        );
        assert_eq!(
            outbound.push(&b, &[], b"2", true, &mut out),
            PushOutcome::Waiting
        );
        assert_eq!(
            outbound.push(&c, &[], b"3", false, &mut out),
            PushOutcome::Waiting
        );
        assert_eq!((outbound.inflight(), outbound.waiting()), (1, 2));
        assert_eq!(outbound.pushes(), (1, 2));
        let sent = out.len();
        outbound.ready(&mut out);
        assert_eq!(out.len(), sent, "no room yet");
        assert!(matches!(
            outbound.received(&puback(stable_packet_id(b"a"))),
            Resolved::Push { .. }
        ));
        outbound.ready(&mut out);
        assert_eq!(
            &out[sent..],
            push_publish(b"\x00\x03d/p", b"2", stable_packet_id(b"b"), false, b"")
        );
        assert_eq!((outbound.inflight(), outbound.waiting()), (1, 1));
        assert_eq!(outbound.pushes(), (1, 1));
    }

    #[test]
    fn a_replay_in_flight_is_not_sent_twice_and_too_many_waiting_overflow() {
        let mut outbound = Outbound::new(setup(1, false));
        let mut out = Vec::new();
        let a = id("a");
        assert_eq!(
            outbound.push(&a, &[], b"1", true, &mut out),
            PushOutcome::Sent
        );
        assert_eq!(
            outbound.push(&a, &[], b"1", true, &mut out),
            PushOutcome::Replayed
        );
        for n in 0..4 {
            let m = id(&format!("w{n}"));
            assert_eq!(
                outbound.push(&m, &[], b"", true, &mut out),
                PushOutcome::Waiting
            );
        }
        assert_eq!(
            outbound.push(&id("x"), &[], b"", true, &mut out),
            PushOutcome::Overflow
        );
    }

    #[test]
    fn python_publishes_share_ids_and_the_limit() {
        let mut outbound = Outbound::new(setup(2, true));
        let mut out = Vec::new();
        let a = id("a");
        let taken = stable_packet_id(b"a");
        assert_eq!(
            outbound.push(&a, &[], b"1", true, &mut out),
            PushOutcome::Sent
        );
        // Python's QoS 1 PUBLISH under the id the push holds: it waits for it.
        let [high, low] = taken.to_be_bytes();
        let publish = vec![0x32, 0x06, 0x00, 0x01, b't', high, low, b'x'];
        let sent = out.len();
        assert!(outbound.hold(publish.clone(), &mut out));
        assert_eq!(out.len(), sent);
        assert!(matches!(
            outbound.received(&puback(taken)),
            Resolved::Push { .. }
        ));
        outbound.ready(&mut out);
        assert_eq!(&out[sent..], &publish[..]);
        // Its PUBACK is Python's, and frees the slot.
        assert_eq!(
            outbound.received(&puback(taken)),
            Resolved::Forward { freed: true }
        );
        assert_eq!(outbound.inflight(), 0);
        // QoS 2: PUBREC keeps it (unless refused), PUBCOMP ends it.
        let qos2 = vec![0x34, 0x06, 0x00, 0x01, b't', 0x00, 0x07, b'x'];
        assert!(outbound.hold(qos2.clone(), &mut out));
        assert_eq!(
            outbound.received(&[0x50, 0x02, 0x00, 0x07]),
            Resolved::Forward { freed: false }
        );
        assert_eq!(outbound.inflight(), 1);
        assert_eq!(
            outbound.received(&[0x70, 0x02, 0x00, 0x07]),
            Resolved::Forward { freed: true }
        );
        assert!(outbound.hold(qos2, &mut out));
        assert_eq!(
            outbound.received(&[0x50, 0x04, 0x00, 0x07, 0x80, 0x00]),
            Resolved::Forward { freed: true }
        );
        // A restored PUBREL holds a slot; QoS 0 and other packets are not held.
        assert!(outbound.hold(vec![0x62, 0x02, 0x00, 0x09], &mut out));
        assert_eq!(outbound.inflight(), 1);
        assert!(!outbound.hold(vec![0x30, 0x04, 0x00, 0x01, b't', b'x'], &mut out));
        assert!(!outbound.hold(vec![0x90, 0x03, 0x00, 0x01, 0x00], &mut out));
    }

    #[test]
    fn mqtt5_pushes_carry_their_message_id_and_headers() {
        let mut outbound = Outbound::new(setup(5, true));
        let mut out = Vec::new();
        let headers = vec![("k".to_string(), "v".to_string())];
        let m = id("m");
        assert_eq!(
            outbound.push(&m, &headers, b"b", true, &mut out),
            PushOutcome::Sent
        );
        let props = b"\x17\x26\x00\x0amessage-id\x00\x01m\x26\x00\x01k\x00\x01v";
        assert_eq!(
            out,
            push_publish(b"\x00\x03d/p", b"b", stable_packet_id(b"m"), false, props)
        );
        let bad = vec![("k".to_string(), "a\0b".to_string())];
        assert!(matches!(
            outbound.push(&id("n"), &bad, b"b", true, &mut out),
            PushOutcome::Refused(_)
        ));
    }

    #[test]
    fn a_publish_written_in_place_is_the_one_built_apart() {
        let headers = vec![("kind".to_string(), "x".repeat(200))];
        for mqtt5 in [false, true] {
            for size in [0usize, 90, 200, 20_000, 3_000_000] {
                let mut resumed = setup(1, mqtt5);
                resumed.dup_before_ms = 32;
                let mut outbound = Outbound::new(resumed);
                let body = vec![b'b'; size];
                let (now, later) = (id("000000004000000000000000"), id("later"));
                let (mut out, mut more) = (Vec::new(), Vec::new());
                let sent = outbound.push(&now, &headers, &body, true, &mut out);
                assert_eq!(sent, PushOutcome::Sent);
                let waits = outbound.push(&later, &headers, &body, true, &mut more);
                assert_eq!(waits, PushOutcome::Waiting);
                outbound.received(&puback(stable_packet_id(&now)));
                outbound.ready(&mut more);
                for (message_id, written) in [(&now, &out), (&later, &more)] {
                    let props = if mqtt5 {
                        push_properties(message_id, &headers).unwrap()
                    } else {
                        Vec::new()
                    };
                    let packet_id = stable_packet_id(message_id);
                    let dup = resent(message_id, 32);
                    let built = push_publish(b"\x00\x03d/p", &body, packet_id, dup, &props);
                    assert!(*written == built, "mqtt5 {mqtt5}, {size} bytes");
                }
            }
        }
    }

    #[test]
    fn too_large_for_the_box_and_dup_after_a_reconnect() {
        let mut small = setup(5, false);
        small.max_packet_bytes = 10;
        let mut outbound = Outbound::new(small);
        let mut out = Vec::new();
        assert_eq!(
            outbound.push(&id("m"), &[], b"0123456789", true, &mut out),
            PushOutcome::Refused("19 bytes, over the box's maximum packet size 10".into())
        );
        let mut resumed = setup(5, false);
        resumed.dup_before_ms = 32;
        let mut outbound = Outbound::new(resumed);
        let old = id("000000004000000000000000");
        let new = id("000000008000000000000000");
        outbound.push(&old, &[], b"", true, &mut out);
        outbound.push(&new, &[], b"", true, &mut out);
        assert_eq!(
            out[0], 0x3A,
            "DUP set: it may have gone to the last connection"
        );
        let second = out.len() / 2;
        assert_eq!(out[second], 0x32, "accepted after: new to the session");
    }
}
