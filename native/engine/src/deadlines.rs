//! Per-connection deadlines as pure functions of a connection's timing and the
//! clock, so they are tested with a clock the test controls.
//!
//! The engine keeps each connection's next deadline in a compact array and scans
//! it every sweep; a deadline found due is re-checked against the connection's
//! real timing (`expired`), which may have moved on (input pushes the idle deadline
//! later without touching the array: see `engine::sweep`).

/// Where a connection is in its life, as far as deadlines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// TCP accepted; TLS, HELLO / CONNECT and Python's answer still to come.
    Handshake,
    /// Accepted by Python: the idle deadline applies (if any).
    Open,
    /// Its last bytes are going out; then it is closed.
    Closing,
}

/// What ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Handshake,
    Idle,
    SlowConsumer,
    Linger,
}

/// The engine-wide durations (ms).
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub handshake_ms: u64,
    pub slow_consumer_grace_ms: u64,
    pub close_linger_ms: u64,
}

/// One connection's clocks (ms on the engine's monotonic clock).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub phase: Phase,
    /// When the current phase's clock started: accept (Handshake), close (Closing).
    pub since_ms: u64,
    pub last_input_ms: u64,
    /// Silence allowed in `Open`; 0 = none.
    pub idle_ms: u64,
    /// Since when output has stayed above the high-water mark.
    pub slow_since_ms: Option<u64>,
}

impl Timing {
    pub fn accepted(now_ms: u64) -> Timing {
        Timing {
            phase: Phase::Handshake,
            since_ms: now_ms,
            last_input_ms: now_ms,
            idle_ms: 0,
            slow_since_ms: None,
        }
    }

    /// Python accepted the device: from now on only idleness (and slowness) end it.
    pub fn open(&mut self, now_ms: u64, idle_ms: u64) {
        self.phase = Phase::Open;
        self.since_ms = now_ms;
        self.idle_ms = idle_ms;
    }

    pub fn closing(&mut self, now_ms: u64) {
        self.phase = Phase::Closing;
        self.since_ms = now_ms;
    }

    /// The earliest moment something may expire (u64::MAX: never).
    pub fn next_deadline(&self, d: &Durations) -> u64 {
        let phase = match self.phase {
            Phase::Handshake => self.since_ms.saturating_add(d.handshake_ms),
            Phase::Open if self.idle_ms > 0 => self.last_input_ms.saturating_add(self.idle_ms),
            Phase::Open => u64::MAX,
            Phase::Closing => return self.since_ms.saturating_add(d.close_linger_ms),
        };
        let slow = self.slow_since_ms.map_or(u64::MAX, |since| {
            since.saturating_add(d.slow_consumer_grace_ms)
        });
        phase.min(slow)
    }

    /// What has expired at `now_ms`, if anything (the most telling reason first).
    pub fn expired(&self, now_ms: u64, d: &Durations) -> Option<Expiry> {
        if self.phase == Phase::Closing {
            return (now_ms >= self.since_ms.saturating_add(d.close_linger_ms))
                .then_some(Expiry::Linger);
        }
        if let Some(since) = self.slow_since_ms {
            if now_ms >= since.saturating_add(d.slow_consumer_grace_ms) {
                return Some(Expiry::SlowConsumer);
            }
        }
        match self.phase {
            Phase::Handshake if now_ms >= self.since_ms.saturating_add(d.handshake_ms) => {
                Some(Expiry::Handshake)
            }
            Phase::Open
                if self.idle_ms > 0
                    && now_ms >= self.last_input_ms.saturating_add(self.idle_ms) =>
            {
                Some(Expiry::Idle)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Durations = Durations {
        handshake_ms: 10_000,
        slow_consumer_grace_ms: 5_000,
        close_linger_ms: 2_000,
    };

    #[test]
    fn handshake_deadline_counts_from_accept_whatever_arrives() {
        let mut t = Timing::accepted(1_000);
        assert_eq!(t.next_deadline(&D), 11_000);
        t.last_input_ms = 9_000; // TLS and HELLO bytes do not extend it
        assert_eq!(t.expired(10_999, &D), None);
        assert_eq!(t.expired(11_000, &D), Some(Expiry::Handshake));
    }

    #[test]
    fn idle_deadline_moves_with_input() {
        let mut t = Timing::accepted(0);
        t.open(500, 60_000);
        assert_eq!(t.next_deadline(&D), 60_000);
        t.last_input_ms = 30_000;
        assert_eq!(
            t.expired(60_000, &D),
            None,
            "input at 30 s moved it to 90 s"
        );
        assert_eq!(t.next_deadline(&D), 90_000);
        assert_eq!(t.expired(90_000, &D), Some(Expiry::Idle));
    }

    #[test]
    fn no_idle_timeout_means_no_idle_deadline() {
        let mut t = Timing::accepted(0);
        t.open(0, 0);
        assert_eq!(t.next_deadline(&D), u64::MAX);
        assert_eq!(t.expired(u64::MAX - 1, &D), None);
    }

    #[test]
    fn slow_consumer_grace_beats_a_later_idle_deadline() {
        let mut t = Timing::accepted(0);
        t.open(0, 100_000);
        t.slow_since_ms = Some(20_000);
        assert_eq!(t.next_deadline(&D), 25_000);
        assert_eq!(t.expired(24_999, &D), None);
        assert_eq!(t.expired(25_000, &D), Some(Expiry::SlowConsumer));
        t.slow_since_ms = None; // it caught up
        assert_eq!(t.expired(25_000, &D), None);
    }

    #[test]
    fn closing_has_only_the_linger() {
        let mut t = Timing::accepted(0);
        t.slow_since_ms = Some(0);
        t.closing(100);
        assert_eq!(t.next_deadline(&D), 2_100);
        assert_eq!(t.expired(2_099, &D), None);
        assert_eq!(t.expired(2_100, &D), Some(Expiry::Linger));
    }

    #[test]
    fn huge_durations_saturate() {
        let d = Durations {
            handshake_ms: u64::MAX,
            ..D
        };
        let t = Timing::accepted(5);
        assert_eq!(t.next_deadline(&d), u64::MAX);
        assert_eq!(t.expired(u64::MAX - 1, &d), None);
    }
}
