//! A native MMTP device simulator for load tests (`stress/native_engine.py`):
//! one thread, mio, rustls clients, the `mmtp` crate in the client role. It must
//! cost far less CPU than the server it measures, so it verifies no certificate.
//!
//! ```text
//! mmtp_devices hold  PORT COUNT [CONCURRENCY]   # connect, HELLO, stay; ACK every PUSH
//! mmtp_devices churn PORT SECONDS WORKERS full|resumed
//! ```
//! hold prints `{"ready": n, "failed": m}` once every device is accepted (or failed),
//! then answers `stats` on stdin with `{"pushes": n, "open": m}` until `quit`.
//! churn prints `{"handshakes": n, "resumed": m, "errors": e, "seconds": s}`:
//! each worker loops connect -> TLS -> HELLO -> HELLO_ACK -> close (RST).

use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use slab::Slab;

const WAKER: Token = Token(usize::MAX);

#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
        ]
    }
}

fn client_config(resume: bool) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(_engine::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"mmtp/1".to_vec()];
    config.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(16)
    } else {
        rustls::client::Resumption::disabled()
    };
    Arc::new(config)
}

struct Device {
    sock: TcpStream,
    tls: ClientConnection,
    wire: mmtp::Connection,
    open: bool,
    /// churn: the worker (its own ticket cache) this connection belongs to.
    worker: usize,
}

struct Sim {
    poll: Poll,
    addr: SocketAddr,
    devices: Slab<Device>,
    codec: Arc<mmtp::BodyCodec>,
    presets: Arc<mmtp::Presets>,
    configs: Vec<Arc<ClientConfig>>,
    started: u64,
    ready: u64,
    failed: u64,
    resumed: u64,
    pushes: u64,
    buf: Vec<u8>,
    events: Vec<mmtp::Event>,
    out: Vec<u8>,
}

impl Sim {
    fn open(&mut self, worker: usize) {
        self.started += 1;
        let sock = match TcpStream::connect(self.addr) {
            Ok(sock) => sock,
            Err(_) => {
                self.failed += 1;
                return;
            }
        };
        let config = self.configs[worker % self.configs.len()].clone();
        let mut tls =
            ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut wire = mmtp::Connection::new(
            mmtp::Role::Client,
            mmtp::Limits::default(),
            self.codec.clone(),
            self.presets.clone(),
        );
        let hello = mmtp::Hello {
            device_id: format!("sim-{}-{}", std::process::id(), self.started),
            ..mmtp::Hello::default()
        };
        wire.send_hello(&hello, 0).unwrap();
        let mut out = Vec::new();
        wire.take_output(&mut out);
        // Queued now, sent by rustls right behind the client's Finished.
        tls.writer().write_all(&out).unwrap();
        let entry = self.devices.vacant_entry();
        let mut device = Device {
            sock,
            tls,
            wire,
            open: false,
            worker,
        };
        self.poll
            .registry()
            .register(
                &mut device.sock,
                Token(entry.key()),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        entry.insert(device);
    }

    /// Handle readiness; Some(true): accepted now; Err: the device failed / closed.
    fn service(&mut self, key: usize) -> Result<bool, ()> {
        let device = self.devices.get_mut(key).ok_or(())?;
        let mut accepted_now = false;
        loop {
            match device.tls.read_tls(&mut device.sock) {
                Ok(0) => return Err(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
            let state = device.tls.process_new_packets().map_err(|_| ())?;
            if state.plaintext_bytes_to_read() > 0 {
                if self.buf.len() < state.plaintext_bytes_to_read() {
                    self.buf.resize(state.plaintext_bytes_to_read(), 0);
                }
                let n = device.tls.reader().read(&mut self.buf).map_err(|_| ())?;
                self.events.clear();
                device
                    .wire
                    .receive(&self.buf[..n], &mut self.events)
                    .map_err(|_| ())?;
                let mut acks = Vec::new();
                for event in self.events.drain(..) {
                    match event {
                        mmtp::Event::HelloAccepted(_) => {
                            device.open = true;
                            accepted_now = true;
                        }
                        mmtp::Event::PushReceived { delivery_id, .. } => acks.push(delivery_id),
                        mmtp::Event::ConnectionErrorReceived { .. } => return Err(()),
                        _ => {}
                    }
                }
                if !acks.is_empty() {
                    self.pushes += acks.len() as u64;
                    device.wire.send_ack(&acks).map_err(|_| ())?;
                }
                self.out.clear();
                device.wire.take_output(&mut self.out);
                if !self.out.is_empty() {
                    device.tls.writer().write_all(&self.out).map_err(|_| ())?;
                }
            }
        }
        while device.tls.wants_write() {
            match device.tls.write_tls(&mut device.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(()),
            }
        }
        Ok(accepted_now)
    }

    fn close(&mut self, key: usize) -> Option<Device> {
        let mut device = self.devices.try_remove(key)?;
        let _ = self.poll.registry().deregister(&mut device.sock);
        // RST instead of FIN: no TIME_WAIT piles up on loopback during churn.
        let _ = socket2::SockRef::from(&device.sock).set_linger(Some(Duration::ZERO));
        Some(device)
    }
}

fn new_sim(port: u16, configs: Vec<Arc<ClientConfig>>, capacity: usize) -> (Sim, Arc<Waker>) {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
    let sim = Sim {
        poll,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        devices: Slab::with_capacity(capacity),
        codec: Arc::new(mmtp::BodyCodec::default()),
        presets: Arc::new(mmtp::Presets::builtin()),
        configs,
        started: 0,
        ready: 0,
        failed: 0,
        resumed: 0,
        pushes: 0,
        buf: vec![0; 64 * 1024],
        events: Vec::new(),
        out: Vec::new(),
    };
    (sim, waker)
}

fn hold(port: u16, count: u64, concurrency: u64) {
    let (mut sim, waker) = new_sim(port, vec![client_config(false)], count as usize);
    let (commands, inbox) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands.send(line).is_err() {
                break;
            }
            let _ = waker.wake();
        }
        let _ = commands.send("quit".into());
        let _ = waker.wake();
    });
    let mut events = Events::with_capacity(1024);
    let mut in_flight = 0u64;
    let mut reported = false;
    loop {
        while in_flight < concurrency && sim.started < count {
            sim.open(0);
            in_flight += 1;
        }
        if !reported && sim.ready + sim.failed >= count {
            println!("{{\"ready\": {}, \"failed\": {}}}", sim.ready, sim.failed);
            io::stdout().flush().unwrap();
            reported = true;
        }
        sim.poll.poll(&mut events, None).unwrap();
        for event in events.iter() {
            if event.token() == WAKER {
                while let Ok(command) = inbox.try_recv() {
                    match command.trim() {
                        "stats" => {
                            println!(
                                "{{\"pushes\": {}, \"open\": {}}}",
                                sim.pushes,
                                sim.devices.len()
                            );
                            io::stdout().flush().unwrap();
                        }
                        "quit" => return,
                        _ => {}
                    }
                }
                continue;
            }
            let key = event.token().0;
            let was_open = sim.devices.get(key).is_some_and(|d| d.open);
            match sim.service(key) {
                Ok(true) => {
                    sim.ready += 1;
                    in_flight -= 1;
                }
                Ok(false) => {}
                Err(()) => {
                    sim.close(key);
                    if !was_open {
                        sim.failed += 1;
                        in_flight -= 1;
                    }
                }
            }
        }
    }
}

fn churn(port: u16, seconds: u64, workers: usize, resume: bool) {
    let configs = (0..workers).map(|_| client_config(resume)).collect();
    let (mut sim, _waker) = new_sim(port, configs, workers);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut events = Events::with_capacity(1024);
    for worker in 0..workers {
        sim.open(worker);
    }
    let mut errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sim.poll
            .poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        let now = Instant::now();
        for event in events.iter() {
            let key = event.token().0;
            let outcome = sim.service(key);
            let done = match outcome {
                Ok(true) => {
                    sim.ready += 1;
                    let device = sim.devices.get(key).unwrap();
                    if device.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        sim.resumed += 1;
                    }
                    true
                }
                Ok(false) => false,
                Err(()) => {
                    errors += 1;
                    true
                }
            };
            if done {
                if let Some(device) = sim.close(key) {
                    if now < end {
                        sim.open(device.worker);
                    }
                }
            }
        }
        if now >= end && sim.devices.is_empty() {
            stop.store(true, Ordering::Relaxed);
        }
        if now >= end + Duration::from_secs(5) {
            break;
        }
    }
    println!(
        "{{\"handshakes\": {}, \"resumed\": {}, \"errors\": {}, \"seconds\": {:.3}}}",
        sim.ready,
        sim.resumed,
        errors,
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("usage: see the module doc (argument {i})"))
    };
    match args.get(1).map(String::as_str) {
        Some("hold") => hold(arg(2) as u16, arg(3), args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64)),
        Some("churn") => churn(
            arg(2) as u16,
            arg(3),
            arg(4) as usize,
            args.get(5).map(String::as_str) == Some("resumed"),
        ),
        _ => eprintln!("usage: mmtp_devices hold PORT COUNT [CONCURRENCY] | churn PORT SECONDS WORKERS full|resumed"),
    }
}
