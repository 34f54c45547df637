//! Counters for /metrics: atomics the engine thread bumps and Python reads at
//! scrape time (no lock, no per-connection memory).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Engine counters (gauges are marked so); all start at 0.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// (name, value) of every counter, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Native RPC calls sent upstream by the engine.
    rpc_native_started,
    /// ...answered by the engine (a simple 2xx).
    rpc_native_answered,
    /// ...handed to Python with their upstream socket (any other answer, slow, broken).
    rpc_handoffs,
    /// ...handed to Python unsent (the connection to the upstream did not come up).
    rpc_unsent,
    /// ...ended with their device's connection or stream.
    rpc_native_cancelled,
    /// Upstream connections the engine opened, and those that failed to.
    rpc_upstream_connects,
    rpc_upstream_connect_failures,
    /// Gauge: sockets held (handshaking, open and closing).
    connections,
    /// Gauge: MMTP connections held.
    connections_mmtp,
    /// Gauge: MQTT connections held.
    connections_mqtt,
    /// Sockets admitted at accept.
    connections_accepted,
    /// Sockets closed at accept: max_connections reached.
    refused_max_connections,
    /// Sockets closed at accept: max_connections_per_ip reached for the address.
    refused_per_ip,
    /// Sockets closed at accept: the peer is not a trusted balancer (PROXY listeners).
    refused_proxy_untrusted,
    /// Connections cut for a missing, malformed or oversized PROXY protocol header.
    refused_proxy_invalid,
    /// accept() failures other than "nothing to accept" (EMFILE, ENOBUFS, ...).
    accept_errors,
    /// Connections whose SYN carried the ClientHello (TCP Fast Open).
    fast_open_connections,
    /// TLS handshakes completed without resumption.
    tls_handshakes_full,
    /// TLS handshakes that resumed a session from a ticket.
    tls_handshakes_resumed,
    /// TLS handshakes or records that failed (bad input, refused certificate, ...).
    tls_failures,
    /// MMTP connections closed because ALPN mmtp/1 was not negotiated.
    alpn_refused,
    /// Closed: no ACCEPT (MMTP) / SET_IDLE (MQTT) within handshake_timeout_ms.
    handshake_timeouts,
    /// Closed: silent past the idle deadline.
    idle_closed,
    /// Cut: output stayed above the high-water mark past the grace (or 4x it).
    slow_consumers,
    /// Closing connections cut when close_linger_ms ran out.
    linger_expired,
    /// MMTP connections ended by a protocol error of the device.
    protocol_errors,
    /// MQTT connections ended by bad framing or an oversized packet.
    mqtt_framing_errors,
    /// Whole MQTT packets handed to Python.
    mqtt_packets_in,
    /// MQTT_WRITE commands (one or more packets each).
    mqtt_writes,
    /// PINGREQ answered by the engine.
    mqtt_pings_answered,
    /// Gauge: QoS 1 pushes the engine holds for MQTT boxes, awaiting their PUBACK.
    mqtt_pushes_inflight,
    /// Gauge: ... waiting for room in flight (or for their packet id).
    mqtt_pushes_waiting,
    /// PUBLISHes / PUBRELs the engine wrote for a connection whose pushes it holds
    /// (its pushes and Python's held QoS 1/2 packets), when they went out.
    mqtt_held_publishes_out,
    mqtt_held_pubrels_out,
    /// PUBACKs / PUBCOMPs of held pushes resolved here (Python does not see them).
    mqtt_held_pubacks_in,
    mqtt_held_pubcomps_in,
    /// MMTP PINGs answered by the engine.
    mmtp_pings_answered,
    /// Bytes read from sockets (TLS records included).
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// write() calls.
    writes,
    /// Writes the kernel could not take in full (output queued).
    writes_blocked,
    /// Connections that had input left when their per-round budget ran out.
    fairness_yields,
    /// Events handed to Python.
    events,
    /// eventfd wake-ups (one per batch).
    event_batches,
    /// Times reading stopped because Python had not taken max_pending_event_bytes.
    event_backpressure_pauses,
    /// Commands received.
    commands,
    /// Commands for connections that are gone or closing (ignored).
    commands_stale,
    /// Commands the connection's state refused (e.g. RESPOND to an unknown stream).
    commands_failed,
    /// PUSH commands written.
    pushes_written,
    /// PUSH commands refused (PUSH_FAILED).
    pushes_failed,
    /// FANOUT commands.
    fanouts,
    /// Connections a FANOUT was written to.
    fanout_deliveries,
    /// FANOUT targets skipped (closing, not accepted, limits, unacked cap).
    fanout_skipped,
    /// Tracked push ACKs (ACKS events).
    acks_tracked,
    /// Fan-out push ACKs (FANOUT_ACKS counts).
    acks_fanout,
    /// TLS certificate reloads.
    tls_reloads,
    /// Dictionary deliveries started (DICT commands, per connection).
    dict_deliveries,
    /// Dictionary deliveries whose last chunk went out.
    dict_deliveries_done,
    /// DICT targets skipped (not accepted, unknown dictionary, over the connection's budget).
    dict_deliveries_skipped,
    /// DICT chunks written.
    dict_chunks,
    /// Dictionary bytes written in DICT chunks.
    dict_bytes,
    /// ClientHellos that asked to send TLS early data (early data on).
    early_data_offered,
    /// Connections whose early data was accepted (on a single-use ticket).
    early_data_accepted,
    /// Plaintext bytes received as early data.
    early_data_bytes,
    /// Requests that arrived as early data (REQUEST with early = True).
    early_data_requests,
    /// Single-use tickets issued (TLS_TICKET events).
    tls_tickets_issued,
    /// ClientHellos held for a ticket look-up (TLS_RESUME events).
    tls_ticket_lookups,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// A gauge moved from `before` to `after`.
    pub fn moved(counter: &AtomicU64, before: usize, after: usize) {
        if after > before {
            counter.fetch_add((after - before) as u64, Ordering::Relaxed);
        } else if before > after {
            counter.fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_every_counter() {
        let stats = Stats::default();
        Stats::inc(&stats.connections);
        Stats::add(&stats.bytes_in, 10);
        let snapshot = stats.snapshot();
        assert!(snapshot.contains(&("connections", 1)));
        assert!(snapshot.contains(&("bytes_in", 10)));
        assert!(snapshot.contains(&("slow_consumers", 0)));
        assert_eq!(snapshot.len(), 67);
    }
}
