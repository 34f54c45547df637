//! The two loops every protocol shares: `hold` (connect N, stay, answer pushes,
//! take commands on stdin) and `churn` (connect -> handshake -> ready -> RST, in a loop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Waker};
use rustls::ClientConfig;

use crate::link::{Links, Proto};
use crate::net::{command_thread, monotonic_s, say, WAKER};

/// What a protocol gives the loops: a new connection's state and first bytes.
pub trait Factory<P> {
    /// Connection `index` (hold) or the next one of `worker` (churn), which may
    /// resume with `ticket` (what its previous connection left, see `Proto`).
    fn make(&mut self, index: usize, ticket: &[u8]) -> (P, Vec<u8>);
    /// What a ready connection leaves for the next one of its worker (MMTP ticket).
    fn ticket(&self, _proto: &P) -> Vec<u8> {
        Vec::new()
    }
}

pub struct HoldOptions {
    pub count: usize,
    pub concurrency: usize,
    /// Send these bytes on every ready link this often (MQTT PINGREQ).
    pub ping: Option<(Duration, Vec<u8>)>,
}

/// Connect `count` links, at most `concurrency` handshakes at a time; print
/// `{"ready": n, "failed": m, "seconds": s}`, then serve commands until `quit`:
/// `stats`, `reset` (forget counts and records), `wait N MS` (answer once N pushes
/// arrived since the reset, or MS passed), `dump PATH` (records, f64 triples), `close`.
pub fn hold<P: Proto, F: Factory<P>>(
    mut links: Links<P>,
    config: Arc<ClientConfig>,
    mut factory: F,
    options: HoldOptions,
) {
    links.lean = true;
    let waker = Arc::new(Waker::new(links.poll.registry(), WAKER).expect("waker"));
    let inbox = command_thread(waker);
    let mut events = Events::with_capacity(1024);
    let (mut started, mut ready, mut failed, mut in_flight) = (0usize, 0usize, 0usize, 0usize);
    let mut reported = false;
    let mut waiting: Option<(u64, Instant)> = None;
    let began = Instant::now();
    let mut next_ping = options
        .ping
        .as_ref()
        .map(|(every, _)| Instant::now() + *every);
    loop {
        while in_flight < options.concurrency && started < options.count {
            let (proto, first) = factory.make(started, &[]);
            started += 1;
            match links.open(&config, proto, &first, 0) {
                Ok(_) => in_flight += 1,
                Err(_) => failed += 1,
            }
        }
        if !reported && ready + failed >= options.count {
            say(&format!(
                "{{\"ready\": {ready}, \"failed\": {failed}, \"seconds\": {:.3}}}",
                began.elapsed().as_secs_f64()
            ));
            reported = true;
        }
        if let Some((target, deadline)) = waiting {
            if links.sink.pushes >= target || Instant::now() >= deadline {
                say(&format!(
                    "{{\"pushes\": {}, \"at\": {:.6}}}",
                    links.sink.pushes,
                    monotonic_s()
                ));
                waiting = None;
            }
        }
        let now = Instant::now();
        let mut timeout = waiting.map(|(_, d)| d.saturating_duration_since(now));
        if let (Some(at), Some((every, bytes))) = (next_ping, options.ping.as_ref()) {
            if now >= at {
                let keys: Vec<usize> = links
                    .links
                    .iter()
                    .filter(|(_, l)| l.ready)
                    .map(|(k, _)| k)
                    .collect();
                for key in keys {
                    let _ = links.send(key, bytes);
                }
                next_ping = Some(now + *every);
            }
            let until = next_ping.unwrap().saturating_duration_since(now);
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        links.poll.poll(&mut events, timeout).expect("poll");
        for event in events.iter() {
            if event.token() == WAKER {
                while let Ok(command) = inbox.try_recv() {
                    let parts: Vec<&str> = command.split_whitespace().collect();
                    match parts.as_slice() {
                        ["stats"] => say(&format!(
                            "{{\"pushes\": {}, \"records\": {}, \"open\": {}, \"ready\": {}}}",
                            links.sink.pushes,
                            links.sink.records.len(),
                            links.links.len(),
                            links.links.iter().filter(|(_, l)| l.ready).count()
                        )),
                        ["reset"] => {
                            links.sink = Default::default();
                            say("{\"ok\": true}");
                        }
                        ["wait", n, ms] => {
                            let ms: u64 = ms.parse().unwrap_or(0);
                            waiting = Some((
                                n.parse().unwrap_or(0),
                                Instant::now() + Duration::from_millis(ms),
                            ));
                        }
                        ["dump", path] => match links.sink.dump(path) {
                            Ok(()) => {
                                say(&format!("{{\"records\": {}}}", links.sink.records.len()))
                            }
                            Err(e) => say(&format!("{{\"error\": \"{e}\"}}")),
                        },
                        ["close"] => {
                            let keys: Vec<usize> = links.links.iter().map(|(k, _)| k).collect();
                            for key in keys {
                                links.close(key, false);
                            }
                            say("{\"ok\": true}");
                        }
                        ["quit"] => return,
                        _ => say("{\"error\": \"unknown command\"}"),
                    }
                }
                continue;
            }
            let key = event.token().0;
            let was_ready = links.links.get(key).is_some_and(|l| l.ready);
            match links.service(key) {
                Ok(true) => {
                    ready += 1;
                    in_flight -= 1;
                }
                Ok(false) => {}
                Err(()) => {
                    if links.close(key, false).is_some() && !was_ready {
                        failed += 1;
                        in_flight -= 1;
                    }
                }
            }
        }
    }
}

/// `workers` loops of connect -> TLS -> first bytes -> ready -> RST for `seconds`;
/// prints `{"handshakes": n, "resumed": m, "errors": e, "seconds": s}` (resumed:
/// TLS resumptions). `configs[w]` holds worker w's TLS tickets when resuming.
/// `resume`: a connection also shows what its predecessor left (the MMTP resume
/// ticket); without it every connection is a full one (MMTP: the token is checked).
pub fn churn<P: Proto, F: Factory<P>>(
    mut links: Links<P>,
    configs: Vec<Arc<ClientConfig>>,
    mut factory: F,
    seconds: f64,
    resume: bool,
) {
    let workers = configs.len();
    let began = Instant::now();
    let end = began + Duration::from_secs_f64(seconds);
    let mut tickets: Vec<Vec<u8>> = vec![Vec::new(); workers];
    let mut events = Events::with_capacity(1024);
    let (mut done, mut resumed, mut errors) = (0u64, 0u64, 0u64);
    for (worker, config) in configs.iter().enumerate() {
        let (proto, first) = factory.make(worker, &[]);
        if links.open(config, proto, &first, worker).is_err() {
            errors += 1;
        }
    }
    loop {
        let now = Instant::now();
        if (now >= end && links.links.is_empty()) || now >= end + Duration::from_secs(5) {
            break;
        }
        links
            .poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .expect("poll");
        for event in events.iter() {
            let key = event.token().0;
            let finished = match links.service(key) {
                Ok(true) => {
                    done += 1;
                    let link = links.links.get(key).expect("serviced link");
                    if link.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        resumed += 1;
                    }
                    if resume {
                        tickets[link.worker] = factory.ticket(&link.proto);
                    }
                    true
                }
                Ok(false) => false,
                Err(()) => {
                    errors += 1;
                    true
                }
            };
            if finished {
                if let Some(link) = links.close(key, true) {
                    if Instant::now() < end {
                        let worker = link.worker;
                        let (proto, first) = factory.make(worker, &tickets[worker]);
                        if links.open(&configs[worker], proto, &first, worker).is_err() {
                            errors += 1;
                        }
                    }
                }
            }
        }
    }
    say(&format!(
        "{{\"handshakes\": {done}, \"resumed\": {resumed}, \"errors\": {errors}, \"seconds\": {:.3}}}",
        began.elapsed().as_secs_f64()
    ));
}
