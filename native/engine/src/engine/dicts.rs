//! Dictionary delivery (spec section 10.5) and per-app body usage.
//!
//! Python decides *what* a device gets (its app's current dictionary, when its
//! HELLO did not list it or a new one was published) with a `DICT` command; the
//! engine decides *when*: one chunk of `dict_chunk_bytes` at a time, only when
//! the connection has nothing else waiting to be written (no queued answer or
//! push: a chunk never goes ahead of them and delays the next by at most one
//! chunk), within a node-wide rate (`dict_delivery_bytes_per_s`) and a
//! per-connection budget (`dict_budget_bytes`, checked before a delivery starts,
//! so a transfer is never left half done). Per connection this costs 16 bytes
//! (`Delivery`); the dictionary itself is shared (the codec's `Arc`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::conn::{flag, Proto};
use super::Engine;
use crate::ids::ConnId;
use crate::stats::Stats;

/// How often deliveries are looked at while any is under way (ms).
pub const PACE_INTERVAL_MS: u64 = 10;
/// Connections looked at per round: the rest wait for the next (bounded work).
const PACE_PER_ROUND: usize = 1024;

/// One app's rows: (dictionary id, [sent, raw, wire, received, raw, wire]).
pub type UsageRows = Vec<(i64, [u64; 6])>;

/// Per-app body counters (`mmtp::BodyUsage`), by HELLO `app_id`; apps not
/// listed share the "" row, so a device cannot grow the table.
#[derive(Default)]
pub struct UsageTable {
    apps: RwLock<HashMap<String, Arc<mmtp::BodyUsage>>>,
    other: Arc<mmtp::BodyUsage>,
}

impl UsageTable {
    pub fn set_apps(&self, apps: &[String]) {
        let mut table = self.apps.write().unwrap_or_else(|e| e.into_inner());
        for app in apps {
            table.entry(app.clone()).or_default();
        }
    }

    pub fn usage_for(&self, app: &str) -> Arc<mmtp::BodyUsage> {
        let table = self.apps.read().unwrap_or_else(|e| e.into_inner());
        table
            .get(app)
            .cloned()
            .unwrap_or_else(|| self.other.clone())
    }

    /// (app, rows) for every app with counts; "" is the other apps.
    pub fn snapshot(&self) -> Vec<(String, UsageRows)> {
        let table = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = table
            .iter()
            .map(|(app, usage)| (app.clone(), usage.snapshot()))
            .collect();
        out.push((String::new(), self.other.snapshot()));
        out.retain(|(_, rows)| !rows.is_empty());
        out.sort();
        out
    }

    /// The resolver every server connection is built with.
    pub fn resolver(table: &Arc<UsageTable>) -> mmtp::UsageResolver {
        let table = table.clone();
        Arc::new(move |app: &str| Some(table.usage_for(app)))
    }
}

impl Engine {
    /// `DICT`: queue `dict_id` for each connection (skipped: not accepted, unknown
    /// dictionary, already sending it, over budget).
    pub(super) fn start_deliveries(&mut self, conns: Vec<ConnId>, dict_id: u32) {
        let stats = self.shared.clone();
        let stats = &stats.stats;
        let Some(dictionary) = self.shared.codec.dictionary(dict_id) else {
            Stats::add(&stats.dict_deliveries_skipped, conns.len() as u64);
            return;
        };
        let size = dictionary.content.len() as u64;
        let budget = self.config.dict_budget_bytes;
        for id in conns {
            let Some(slot) = self.live(id) else {
                Stats::inc(&stats.dict_deliveries_skipped);
                continue;
            };
            let conn = &mut self.conns[slot];
            let accepted = conn.has(flag::ACCEPTED);
            let Proto::Mmtp(m) = &mut conn.proto else {
                Stats::inc(&stats.dict_deliveries_skipped);
                continue;
            };
            let d = &mut m.delivery;
            if !accepted || d.dict_id == dict_id || d.next_id == dict_id {
                Stats::inc(&stats.dict_deliveries_skipped);
                continue;
            }
            // What is committed: this one, plus the rest of one in progress.
            let in_progress = if d.dict_id != 0 {
                self.shared
                    .codec
                    .dictionary(d.dict_id)
                    .map_or(0, |c| c.content.len() as u64 - d.offset as u64)
            } else {
                0
            };
            if d.sent as u64 + in_progress + size > budget {
                Stats::inc(&stats.dict_deliveries_skipped);
                continue;
            }
            Stats::inc(&stats.dict_deliveries);
            if d.dict_id != 0 {
                // One transfer at a time (spec 10.5): the newer one follows it.
                d.next_id = dict_id;
                continue;
            }
            d.dict_id = dict_id;
            d.offset = 0;
            self.delivering.push_back(id);
        }
    }

    /// Send what the rate allows: one chunk per connection with nothing else waiting.
    pub(super) fn pace_deliveries(&mut self) {
        if self.delivering.is_empty() {
            return;
        }
        let now = self.now_ms;
        let rate = self.config.dict_delivery_bytes_per_s as f64;
        let chunk = self.config.dict_chunk_bytes;
        let burst = (rate / 10.0).max(chunk as f64);
        let elapsed_s = now.saturating_sub(self.dict_refill_ms) as f64 / 1000.0;
        self.dict_tokens = (self.dict_tokens + elapsed_s * rate).min(burst);
        self.dict_refill_ms = now;
        for _ in 0..self.delivering.len().min(PACE_PER_ROUND) {
            if self.dict_tokens < chunk as f64 {
                return;
            }
            let Some(id) = self.delivering.pop_front() else {
                return;
            };
            let Some(slot) = self.live(id) else {
                continue; // gone: the delivery goes with it
            };
            if self.conns[slot].pending_output() > 0 {
                self.delivering.push_back(id); // answers and pushes first
                continue;
            }
            let (sent, more) = self.send_chunk(slot, chunk);
            self.dict_tokens -= sent as f64;
            if sent > 0 {
                self.mark_dirty(slot);
            }
            if more {
                self.delivering.push_back(id);
            }
        }
    }

    /// One chunk on `slot`: (bytes sent, whether the delivery goes on).
    fn send_chunk(&mut self, slot: usize, chunk: usize) -> (usize, bool) {
        let codec = self.shared.codec.clone();
        let stats = self.shared.clone();
        let stats = &stats.stats;
        let Proto::Mmtp(m) = &mut self.conns[slot].proto else {
            return (0, false);
        };
        let d = m.delivery;
        let Some(dictionary) = codec.dictionary(d.dict_id) else {
            m.delivery = Default::default();
            return (0, false);
        };
        let offset = d.offset as usize;
        match m
            .wire
            .send_dictionary_chunk(&dictionary, offset, Some(chunk))
        {
            Ok(end) => {
                let sent = end - offset;
                Stats::inc(&stats.dict_chunks);
                Stats::add(&stats.dict_bytes, sent as u64);
                m.delivery.offset = end as u32;
                m.delivery.sent = m.delivery.sent.saturating_add(sent as u32);
                if end < dictionary.content.len() {
                    return (sent, true);
                }
                Stats::inc(&stats.dict_deliveries_done);
                let next = m.delivery.next_id;
                m.delivery = mmtp_delivery_after(m.delivery.sent, next);
                (sent, next != 0)
            }
            Err(_) => {
                m.delivery = Default::default();
                (0, false)
            }
        }
    }
}

fn mmtp_delivery_after(sent: u32, next: u32) -> super::conn::Delivery {
    super::conn::Delivery {
        dict_id: next,
        offset: 0,
        next_id: 0,
        sent,
    }
}
