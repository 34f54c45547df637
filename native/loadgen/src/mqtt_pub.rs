//! The MQTT publisher: one client that sends QoS 1 PUBLISHes to per-device topics
//! (open loop at a rate, or closed loop with a window of unacknowledged ones) or one
//! to a shared topic, and counts the broker's PUBACKs. Commands on stdin:
//!
//! ```text
//! unicast START_AT SECONDS RATE INFLIGHT SEQ0 SEED DUMP_PATH
//! broadcast TOPIC K
//! quit
//! ```
//! `unicast` prints `{"posted", "accepted", "late_p50_ms", "late_max_ms"}` and writes
//! (seq, sent at) of every PUBACKed message to DUMP_PATH as f64 pairs; `broadcast`
//! prints `{"sent_at", "acked_at"}` once the broker PUBACKed it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Waker};

use crate::link::{Links, Proto};
use crate::mqtt::{connect, publish, Packet, Reader};
use crate::net::{command_thread, monotonic_s, say, Sink, WAKER};

pub struct Publisher {
    version: u8,
    reader: Reader,
    /// packet id -> (seq, sent at)
    inflight: HashMap<u16, (f64, f64)>,
    accepted: Vec<[f64; 2]>,
    next_id: u16,
}

impl Proto for Publisher {
    fn receive(&mut self, data: &[u8], _out: &mut Vec<u8>, _sink: &mut Sink) -> Result<bool, ()> {
        let mut ready = false;
        let (inflight, accepted) = (&mut self.inflight, &mut self.accepted);
        self.reader.feed(self.version, data, |packet| {
            match packet {
                Packet::ConnAck { code: 0 } => ready = true,
                Packet::PubAck { packet_id } => {
                    if let Some((seq, sent)) = inflight.remove(&packet_id) {
                        accepted.push([seq, sent]);
                    }
                }
                Packet::PingResp => {}
                _ => return Err(()),
            }
            Ok(())
        })?;
        Ok(ready)
    }
}

impl Publisher {
    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

pub fn run(
    mut links: Links<Publisher>,
    config: Arc<rustls::ClientConfig>,
    version: u8,
    topics: Vec<String>,
) {
    let me = Publisher {
        version,
        reader: Reader::default(),
        inflight: HashMap::new(),
        accepted: Vec::new(),
        next_id: 0,
    };
    let first = connect(
        version,
        &format!("publisher-{}", std::process::id()),
        b"",
        b"",
        0,
    );
    let key = links.open(&config, me, &first, 0).expect("connect");
    let waker = Arc::new(Waker::new(links.poll.registry(), WAKER).expect("waker"));
    let inbox = command_thread(waker);
    let mut events = Events::with_capacity(256);
    while !links.links[key].ready {
        links
            .poll
            .poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(!events.is_empty(), "no CONNACK in 10 s");
        for event in events.iter() {
            if event.token() != WAKER {
                links.service(key).expect("publisher refused");
            }
        }
    }
    say("{\"ready\": 1}");
    loop {
        let Ok(command) = inbox.recv() else { return };
        let parts: Vec<&str> = command.split_whitespace().collect();
        match parts.as_slice() {
            ["unicast", start_at, seconds, rate, inflight, seq0, seed, path] => {
                let plan = Plan {
                    start_at: start_at.parse().unwrap(),
                    seconds: seconds.parse().unwrap(),
                    rate: rate.parse().unwrap(),
                    max_inflight: inflight.parse().unwrap(),
                    seq0: seq0.parse().unwrap(),
                };
                let mut rng = Rng(seed.parse::<u64>().unwrap() | 1);
                unicast(&mut links, key, &mut events, &plan, &topics, &mut rng, path);
            }
            ["broadcast", topic, k] => broadcast(&mut links, key, &mut events, topic, k),
            ["quit"] => return,
            _ => say("{\"error\": \"unknown command\"}"),
        }
    }
}

struct Plan {
    start_at: f64,
    seconds: f64,
    rate: f64,
    max_inflight: usize,
    seq0: u64,
}

fn pump(links: &mut Links<Publisher>, key: usize, events: &mut Events, timeout_s: f64) {
    let timeout = Duration::from_secs_f64(timeout_s.clamp(0.0, 0.05));
    links.poll.poll(events, Some(timeout)).unwrap();
    if events.iter().any(|e| e.token() != WAKER) {
        links.service(key).expect("publisher connection lost");
    }
}

fn unicast(
    links: &mut Links<Publisher>,
    key: usize,
    events: &mut Events,
    plan: &Plan,
    topics: &[String],
    rng: &mut Rng,
    path: &str,
) {
    while monotonic_s() < plan.start_at {
        pump(links, key, events, plan.start_at - monotonic_s());
    }
    links.links[key].proto.accepted.clear();
    let end = plan.start_at + plan.seconds;
    let interval = if plan.rate > 0.0 {
        1.0 / plan.rate
    } else {
        0.0
    };
    let mut k = 0u64;
    let mut late = Vec::new();
    let mut out = Vec::new();
    loop {
        let now = monotonic_s();
        if now >= end {
            break;
        }
        out.clear();
        let me = &mut links.links[key].proto;
        while me.inflight.len() < plan.max_inflight {
            let due = plan.start_at + k as f64 * interval;
            if interval > 0.0 && due > now {
                break;
            }
            if interval > 0.0 {
                late.push(now - due);
            }
            let seq = plan.seq0 + k;
            let sent = monotonic_s();
            let payload = format!(
                "{{\"seq\":{seq},\"t\":{sent:.6},\"kind\":\"order.shipped\",\"text\":\"Your parcel is on its way\"}}"
            );
            let id = me.packet_id();
            me.inflight.insert(id, (seq as f64, sent));
            publish(
                &mut out,
                me.version,
                &topics[rng.below(topics.len())],
                id,
                payload.as_bytes(),
            );
            k += 1;
        }
        if !out.is_empty() {
            links.send(key, &out).expect("publish");
        }
        // A full window waits for PUBACKs; otherwise until the next message is due.
        let full = links.links[key].proto.inflight.len() >= plan.max_inflight;
        let next_due = plan.start_at + k as f64 * interval;
        let wait = if full || interval == 0.0 {
            0.05
        } else {
            next_due - monotonic_s()
        };
        pump(links, key, events, wait);
    }
    let drain_until = monotonic_s() + 10.0;
    while !links.links[key].proto.inflight.is_empty() && monotonic_s() < drain_until {
        pump(links, key, events, 0.05);
    }
    let me = &mut links.links[key].proto;
    let mut data = Vec::with_capacity(me.accepted.len() * 16);
    for pair in &me.accepted {
        data.extend_from_slice(&pair[0].to_le_bytes());
        data.extend_from_slice(&pair[1].to_le_bytes());
    }
    std::fs::write(path, data).expect("dump");
    late.sort_by(f64::total_cmp);
    let p50 = late.get(late.len() / 2).map_or(-1.0, |v| v * 1000.0);
    let max = late.last().map_or(-1.0, |v| v * 1000.0);
    say(&format!(
        "{{\"posted\": {k}, \"accepted\": {}, \"unacked\": {}, \"late_p50_ms\": {p50:.3}, \"late_max_ms\": {max:.3}}}",
        me.accepted.len(),
        me.inflight.len()
    ));
    me.inflight.clear();
}

fn broadcast(links: &mut Links<Publisher>, key: usize, events: &mut Events, topic: &str, k: &str) {
    let me = &mut links.links[key].proto;
    me.accepted.clear();
    let sent = monotonic_s();
    let payload = format!(
        "{{\"b\":{k},\"t\":{sent:.6},\"kind\":\"promo\",\"text\":\"Red envelopes are live!\"}}"
    );
    let id = me.packet_id();
    me.inflight.insert(id, (0.0, sent));
    let mut out = Vec::new();
    publish(&mut out, me.version, topic, id, payload.as_bytes());
    links.send(key, &out).expect("publish");
    let until = monotonic_s() + 60.0;
    while links.links[key].proto.accepted.is_empty() && monotonic_s() < until {
        pump(links, key, events, 0.05);
    }
    say(&format!(
        "{{\"sent_at\": {sent:.6}, \"acked_at\": {:.6}}}",
        monotonic_s()
    ));
}
