//! A minimal MQTT 3.1.1 / 5.0 client: CONNECT, SUBSCRIBE, PUBLISH (QoS 0/1),
//! PUBACK, PINGREQ; it parses CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP and
//! DISCONNECT and refuses anything else.

use crate::drive::Factory;
use crate::link::Proto;
use crate::net::{monotonic_s, Sink};

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    out.push(first);
    put_varint(out, body.len());
    out.extend_from_slice(body);
}

pub fn connect(
    version: u8,
    client_id: &str,
    username: &[u8],
    password: &[u8],
    keepalive_s: u16,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + password.len());
    put_str(&mut body, b"MQTT");
    body.push(version);
    let mut flags = 0x02; // clean session / clean start
    if !username.is_empty() {
        flags |= 0x80;
    }
    if !password.is_empty() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    if version == 5 {
        body.push(0); // no properties
    }
    put_str(&mut body, client_id.as_bytes());
    if !username.is_empty() {
        put_str(&mut body, username);
    }
    if !password.is_empty() {
        put_str(&mut body, password);
    }
    let mut out = Vec::new();
    packet(&mut out, 0x10, &body);
    out
}

pub fn subscribe(version: u8, packet_id: u16, topics: &[String]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&packet_id.to_be_bytes());
    if version == 5 {
        body.push(0);
    }
    for topic in topics {
        put_str(&mut body, topic.as_bytes());
        body.push(1); // QoS 1
    }
    let mut out = Vec::new();
    packet(&mut out, 0x82, &body);
    out
}

pub fn publish(out: &mut Vec<u8>, version: u8, topic: &str, packet_id: u16, payload: &[u8]) {
    let qos1 = packet_id != 0;
    let props = usize::from(version == 5);
    let len = 2 + topic.len() + if qos1 { 2 } else { 0 } + props + payload.len();
    out.push(if qos1 { 0x32 } else { 0x30 });
    put_varint(out, len);
    put_str(out, topic.as_bytes());
    if qos1 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if version == 5 {
        out.push(0);
    }
    out.extend_from_slice(payload);
}

pub fn puback(out: &mut Vec<u8>, packet_id: u16) {
    out.extend_from_slice(&[0x40, 0x02]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub enum Packet<'a> {
    ConnAck {
        code: u8,
    },
    SubAck {
        refused: bool,
    },
    Publish {
        qos: u8,
        packet_id: u16,
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    PingResp,
    Disconnect,
}

/// Whole packets from a byte stream (partial ones wait in the buffer).
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    /// Feed `data`; call `each` for every complete packet. `Err` on bad input.
    pub fn feed(
        &mut self,
        version: u8,
        data: &[u8],
        mut each: impl FnMut(Packet<'_>) -> Result<(), ()>,
    ) -> Result<(), ()> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while let Some((len, header)) = remaining_length(&self.buf[at..])? {
            if self.buf.len() - at < header + len {
                break;
            }
            let first = self.buf[at];
            let body = &self.buf[at + header..at + header + len];
            each(parse(version, first, body)?)?;
            at += header + len;
        }
        self.buf.drain(..at);
        Ok(())
    }
}

fn remaining_length(data: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = data.get(1 + i) else {
            return Ok(None);
        };
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, 2 + i)));
        }
    }
    Err(())
}

fn skip_props(version: u8, body: &[u8], at: usize) -> Result<usize, ()> {
    if version != 5 {
        return Ok(at);
    }
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *body.get(at + i).ok_or(())?;
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(at + i + 1 + len);
        }
    }
    Err(())
}

fn u16_at(body: &[u8], at: usize) -> Result<u16, ()> {
    Ok(u16::from_be_bytes([
        *body.get(at).ok_or(())?,
        *body.get(at + 1).ok_or(())?,
    ]))
}

fn parse(version: u8, first: u8, body: &[u8]) -> Result<Packet<'_>, ()> {
    Ok(match first >> 4 {
        2 => Packet::ConnAck {
            code: *body.get(1).ok_or(())?,
        },
        9 => {
            let at = skip_props(version, body, 2)?;
            Packet::SubAck {
                refused: body.get(at..).ok_or(())?.iter().any(|&c| c >= 0x80),
            }
        }
        3 => {
            let qos = (first >> 1) & 3;
            let topic_len = u16_at(body, 0)? as usize;
            let mut at = 2 + topic_len;
            let mut packet_id = 0;
            if qos > 0 {
                packet_id = u16_at(body, at)?;
                at += 2;
            }
            at = skip_props(version, body, at)?;
            Packet::Publish {
                qos,
                packet_id,
                payload: body.get(at..).ok_or(())?,
            }
        }
        4 => Packet::PubAck {
            packet_id: u16_at(body, 0)?,
        },
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        _ => return Err(()),
    })
}

/// A subscriber: CONNECT (then SUBSCRIBE, if it has topics), PUBACK every QoS 1
/// PUBLISH at once; ready at SUBACK (or CONNACK when it subscribes to nothing).
pub struct MqttDev {
    version: u8,
    reader: Reader,
    subscribe: Option<Vec<u8>>,
}

impl Proto for MqttDev {
    fn receive(&mut self, data: &[u8], out: &mut Vec<u8>, sink: &mut Sink) -> Result<bool, ()> {
        let mut ready = false;
        let mut acked_at = 0.0;
        let subscribe = &mut self.subscribe;
        self.reader.feed(self.version, data, |packet| {
            match packet {
                Packet::ConnAck { code } => {
                    if code != 0 {
                        if std::env::var_os("LOADGEN_DEBUG").is_some() {
                            eprintln!("CONNACK refused: {code:#x}");
                        }
                        return Err(());
                    }
                    match subscribe.take() {
                        Some(bytes) => out.extend_from_slice(&bytes),
                        None => ready = true,
                    }
                }
                Packet::SubAck { refused } => {
                    if refused {
                        return Err(());
                    }
                    ready = true;
                }
                Packet::Publish {
                    qos,
                    packet_id,
                    payload,
                } => {
                    if acked_at == 0.0 {
                        acked_at = monotonic_s();
                    }
                    if qos == 1 {
                        puback(out, packet_id);
                    }
                    sink.record(payload, acked_at);
                }
                Packet::PubAck { .. } | Packet::PingResp => {}
                Packet::Disconnect => return Err(()),
            }
            Ok(())
        })?;
        Ok(ready)
    }
}

/// Clients from a file of `client_id username password_hex` lines (`-`: none);
/// `{id}` in a topic is the client id.
pub struct MqttFactory {
    pub version: u8,
    pub keepalive_s: u16,
    pub clients: Vec<(String, Vec<u8>, Vec<u8>)>,
    pub topics: Vec<String>,
}

impl Factory<MqttDev> for MqttFactory {
    fn make(&mut self, index: usize, _ticket: &[u8]) -> (MqttDev, Vec<u8>) {
        let (id, username, password) = &self.clients[index % self.clients.len()];
        let topics: Vec<String> = self.topics.iter().map(|t| t.replace("{id}", id)).collect();
        let dev = MqttDev {
            version: self.version,
            reader: Reader::default(),
            subscribe: (!topics.is_empty()).then(|| subscribe(self.version, 1, &topics)),
        };
        (
            dev,
            connect(self.version, id, username, password, self.keepalive_s),
        )
    }
}
