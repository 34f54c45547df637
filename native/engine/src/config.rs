//! The engine's settings: every limit and deadline it enforces, with defaults.
//!
//! Python builds them from `channel.config` ([server], [limits], [heartbeat], [tls])
//! and hands them to `Engine(config)` as a flat dict (`py.rs` names each key).

use crate::proxy::{Trusted, V2_MAX_HEADER_BYTES, V2_MIN_LIMIT_BYTES};

/// Limits, deadlines and budgets of one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Sockets held at once (all listeners, handshaking and closing ones included);
    /// more are closed at accept, before any TLS work.
    pub max_connections: usize,
    /// Sockets held at once from one IP address.
    pub max_connections_per_ip: u32,
    /// TCP accept -> ACCEPT (MMTP: TLS + HELLO + Python's answer) or SET_IDLE (MQTT:
    /// TLS + CONNECT + Python's CONNACK).
    pub handshake_timeout_ms: u64,
    /// An MMTP device silent for heartbeat_s x this is closed (IDLE_TIMEOUT).
    pub idle_factor: f64,
    /// Output waiting for the device above this: stop reading its input, start the
    /// slow-consumer clock.
    pub send_buffer_high_water_bytes: usize,
    /// Above the high-water mark this long (or above 4x the mark at all): cut.
    pub slow_consumer_grace_ms: u64,
    /// A closing connection gets this long to take its last bytes before it is cut.
    pub close_linger_ms: u64,
    /// Fairness: bytes read from one connection per poll round.
    pub max_read_per_round_bytes: usize,
    /// Fairness: MMTP frames / MQTT packets handled for one connection per poll round.
    pub max_frames_per_round: usize,
    /// Events waiting for Python above this many (approximate) bytes: stop reading sockets.
    pub max_pending_event_bytes: usize,
    /// Pushes awaiting their ACK on one connection; more are refused (PUSH_FAILED).
    pub max_unacked_pushes: usize,
    /// Largest MQTT packet (fixed header included); a larger one closes the connection
    /// as soon as its fixed header says so.
    pub mqtt_max_packet_size: usize,
    /// How often deadlines are checked; they are this precise.
    pub sweep_interval_ms: u64,
    /// Native RPC calls answered are reported to Python at most this often (or per 256).
    pub rpc_report_interval_ms: u64,
    /// Accepts per listener per poll round (a SYN flood cannot starve the devices).
    pub accepts_per_round: usize,
    /// TLS 1.3 session ticket lifetime told to clients.
    pub ticket_lifetime_s: u32,
    /// TLS 1.3 early data accepted per MMTP connection, in bytes; 0: none (sealed,
    /// stateless tickets). Above 0: single-use tickets held by Python (`singleuse.rs`).
    pub early_data_max_bytes: u32,
    /// Balancers whose PROXY protocol header is believed, on listeners opened with
    /// `proxy` (`[server] proxy_trusted`); any other peer is cut at accept.
    pub proxy_trusted: Trusted,
    /// Longest PROXY v2 header (TLVs included); a longer one is refused from its
    /// length field (`[server] proxy_max_header_bytes`).
    pub proxy_max_header_bytes: usize,
    /// MMTP limits of every device connection.
    pub mmtp: mmtp::Limits,
    /// Dictionary delivery: bytes per DICT chunk (a chunk goes out only when the
    /// connection has nothing else waiting, so it delays an answer by at most this).
    pub dict_chunk_bytes: usize,
    /// Dictionary delivery: DICT bytes per second over all connections of the engine.
    pub dict_delivery_bytes_per_s: u64,
    /// Dictionary delivery: DICT bytes one connection may be sent in its life.
    pub dict_budget_bytes: u64,
    /// Apps whose bodies are counted on their own (`usage()`); others count as "".
    pub usage_apps: Vec<String>,
    /// Size classes of bodies whose recent compressed bodies saved less than this
    /// share go raw untried, one in 32 still tried (`mmtp::BodyCodec::set_min_saving`).
    pub compress_min_saving: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_connections: 100_000,
            max_connections_per_ip: 5_000,
            handshake_timeout_ms: 10_000,
            idle_factor: 1.75,
            send_buffer_high_water_bytes: 1024 * 1024,
            slow_consumer_grace_ms: 10_000,
            close_linger_ms: 2_000,
            max_read_per_round_bytes: 64 * 1024,
            max_frames_per_round: 256,
            max_pending_event_bytes: 16 * 1024 * 1024,
            max_unacked_pushes: 4096,
            mqtt_max_packet_size: 1024 * 1024,
            sweep_interval_ms: 200,
            rpc_report_interval_ms: 10,
            accepts_per_round: 256,
            ticket_lifetime_s: 7200,
            early_data_max_bytes: 0,
            proxy_trusted: Trusted::default(),
            proxy_max_header_bytes: 1024,
            mmtp: mmtp::Limits::default(),
            dict_chunk_bytes: 4096,
            dict_delivery_bytes_per_s: 8 * 1024 * 1024,
            dict_budget_bytes: 256 * 1024,
            usage_apps: Vec::new(),
            compress_min_saving: mmtp::body::DEFAULT_MIN_SAVING,
        }
    }
}

impl EngineConfig {
    /// Refuse settings the engine cannot work with, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("slow_consumer_grace_ms", self.slow_consumer_grace_ms),
            ("max_frames_per_round", self.max_frames_per_round as u64),
            ("max_unacked_pushes", self.max_unacked_pushes as u64),
            ("sweep_interval_ms", self.sweep_interval_ms),
            ("rpc_report_interval_ms", self.rpc_report_interval_ms),
            ("accepts_per_round", self.accepts_per_round as u64),
            ("ticket_lifetime_s", self.ticket_lifetime_s as u64),
            ("dict_delivery_bytes_per_s", self.dict_delivery_bytes_per_s),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(self.idle_factor >= 1.2 && self.idle_factor.is_finite()) {
            return Err("idle_factor must be >= 1.2 (a late PING is not a dead device)".into());
        }
        if self.send_buffer_high_water_bytes < 16 * 1024 {
            return Err("send_buffer_high_water_bytes must be >= 16384".into());
        }
        if self.max_read_per_round_bytes < 16 * 1024 {
            return Err("max_read_per_round_bytes must be >= 16384 (one TLS record)".into());
        }
        if self.max_pending_event_bytes < 64 * 1024 {
            return Err("max_pending_event_bytes must be >= 65536".into());
        }
        if !(5..=268_435_460).contains(&self.mqtt_max_packet_size) {
            return Err("mqtt_max_packet_size must be 5..=268435460 (MQTT's largest)".into());
        }
        if self.dict_chunk_bytes < 256 {
            return Err("dict_chunk_bytes must be >= 256".into());
        }
        if self.early_data_max_bytes > 0 && !(1024..=65_536).contains(&self.early_data_max_bytes) {
            return Err("early_data_max_bytes must be 0 (off) or 1024..=65536".into());
        }
        if self.ticket_lifetime_s > 7 * 86_400 {
            return Err("ticket_lifetime_s must be at most 604800 (TLS 1.3's cap)".into());
        }
        if !(V2_MIN_LIMIT_BYTES..=V2_MAX_HEADER_BYTES).contains(&self.proxy_max_header_bytes) {
            return Err(format!(
                "proxy_max_header_bytes must be {V2_MIN_LIMIT_BYTES}..={V2_MAX_HEADER_BYTES}"
            ));
        }
        self.mmtp.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(EngineConfig, &str)> = vec![
            (
                EngineConfig {
                    max_connections: 0,
                    ..Default::default()
                },
                "max_connections",
            ),
            (
                EngineConfig {
                    idle_factor: 1.0,
                    ..Default::default()
                },
                "idle_factor",
            ),
            (
                EngineConfig {
                    idle_factor: f64::NAN,
                    ..Default::default()
                },
                "idle_factor",
            ),
            (
                EngineConfig {
                    send_buffer_high_water_bytes: 100,
                    ..Default::default()
                },
                "send_buffer_high_water_bytes",
            ),
            (
                EngineConfig {
                    mqtt_max_packet_size: 2,
                    ..Default::default()
                },
                "mqtt_max_packet_size",
            ),
            (
                EngineConfig {
                    early_data_max_bytes: 100,
                    ..Default::default()
                },
                "early_data_max_bytes",
            ),
            (
                EngineConfig {
                    ticket_lifetime_s: 8 * 86_400,
                    ..Default::default()
                },
                "ticket_lifetime_s",
            ),
            (
                EngineConfig {
                    proxy_max_header_bytes: 20,
                    ..Default::default()
                },
                "proxy_max_header_bytes",
            ),
            (
                EngineConfig {
                    mmtp: mmtp::Limits {
                        max_frame_size: 10,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "max_frame_size",
            ),
        ];
        for (config, key) in cases {
            let error = config.validate().unwrap_err();
            assert!(error.contains(key), "{error:?} should name {key}");
        }
    }
}
