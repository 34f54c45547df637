//! From TCP connect to the first RPC response: bytes and round trips for a full TLS
//! handshake, a resumed one, and a resumed one whose HELLO and request ride as TLS 1.3
//! early data, each with and without TCP Fast Open; and the early-data visits the
//! Python tests drive through the gateway.
//!
//! ```text
//! first_response measure [HOST:]PORT CA_PEM DEVICE TOKEN_FILE COUNT OP
//!     one JSON line per mode (full, resumed, early; then each with TCP Fast Open)
//! first_response early [HOST:]PORT[/PORT2] CA_PEM DEVICE TOKEN_FILE OP...
//!     a full visit to PORT (for a ticket), a visit to PORT2 (or PORT) sending HELLO
//!     and OP... as early data (requests refused with REFUSED_STREAM are sent again
//!     after the handshake), and a replay of that visit's first flight to PORT on a new
//!     connection: one JSON document
//! ```
//!
//! Round trips are counted by a lazy client: after its first flight it sends nothing
//! until the server has gone quiet (`STALL`), so every round trip counted is one the
//! answer could not arrive without; the TCP handshake adds one unless the SYN carried
//! the ClientHello (TCP Fast Open with a cookie, checked in `TCP_INFO`). Bytes are TLS
//! bytes on the socket (TCP/IP headers not included) until the response is read.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Quiet this long after a read: the server has nothing more to say before we speak.
const STALL: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(10);

struct Target {
    host: [u8; 4],
    port: u16,
    /// Another node of the fleet (early: the resumed visit goes there).
    second_port: Option<u16>,
    roots: Arc<RootCertStore>,
    device: String,
    token: Vec<u8>,
}

#[derive(Clone, Copy, Default)]
struct Options {
    early: bool,
    fast_open: bool,
    /// Send only when the server is quiet (round trip counting); else at once.
    lazy: bool,
    /// Send again, after the handshake, a request refused with REFUSED_STREAM.
    retry_refused: bool,
}

#[derive(Debug, Default)]
struct Answer {
    op: String,
    status: u64,
    /// A stream error's code (0: a RESPONSE).
    error: u64,
    retried: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    resumed: bool,
    early_sent: usize,
    early_accepted: bool,
    syn_data: bool,
    bytes_out: usize,
    bytes_in: usize,
    round_trips: usize,
    micros: u128,
    answers: Vec<Answer>,
    first_flight: Vec<u8>,
}

fn config(target: &Target, resumption: bool, early: bool) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(_engine::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(target.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"mmtp/1".to_vec()];
    if !resumption {
        config.resumption = Resumption::disabled();
    }
    config.enable_early_data = early;
    Arc::new(config)
}

fn connect(host: [u8; 4], port: u16, fast_open: bool) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if fast_open {
        _engine::sys::enable_fast_open_connect(&socket)?;
    }
    socket.connect(&SocketAddr::from((host, port)).into())?;
    let sock: TcpStream = socket.into();
    sock.set_nodelay(true)?;
    Ok(sock)
}

fn mmtp_client() -> mmtp::Connection {
    mmtp::Connection::new(
        mmtp::Role::Client,
        mmtp::Limits::default(),
        Arc::new(mmtp::BodyCodec::default()),
        Arc::new(mmtp::Presets::builtin()),
    )
}

fn visit(
    target: &Target,
    config: Arc<ClientConfig>,
    ops: &[&str],
    options: Options,
) -> io::Result<Outcome> {
    let started = Instant::now();
    let mut sock = connect(target.host, target.port, options.fast_open)?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut tls = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut wire = mmtp_client();
    let hello = mmtp::Hello {
        device_id: target.device.clone(),
        app_id: "demo".into(),
        token: target.token.clone(),
        ..mmtp::Hello::default()
    };
    wire.send_hello(&hello, 0).map_err(io::Error::other)?;
    let mut pending: Vec<(u64, usize)> = Vec::new(); // (stream id, index in answers)
    let mut outcome = Outcome::default();
    for op in ops {
        let stream = wire
            .send_request(op, b"{}", &[] as &[(&str, &str)])
            .map_err(io::Error::other)?;
        pending.push((stream, outcome.answers.len()));
        outcome.answers.push(Answer {
            op: op.to_string(),
            ..Answer::default()
        });
    }
    let mut plain = Vec::new();
    wire.take_output(&mut plain);
    let mut early_bytes = Vec::new();
    if options.early {
        if let Some(mut early) = tls.early_data() {
            let n = early.write(&plain)?;
            early_bytes = plain.drain(..n).collect();
        }
    }
    outcome.early_sent = early_bytes.len();
    let mut accepted = false;
    let mut must_send = true;
    let mut sent = false;
    let mut first_flight = true;
    let mut buf = vec![0u8; 65536];
    let mut early_checked = false;
    loop {
        if !tls.is_handshaking() {
            if !early_checked {
                early_checked = true;
                if !early_bytes.is_empty() && !tls.is_early_data_accepted() {
                    // Refused: what went as early data goes again, ahead of the rest.
                    early_bytes.extend_from_slice(&plain);
                    plain = std::mem::take(&mut early_bytes);
                }
            }
            if !plain.is_empty() {
                tls.writer().write_all(&plain)?;
                plain.clear();
            }
        }
        if must_send || !options.lazy {
            while tls.wants_write() {
                let mut out = Vec::new();
                tls.write_tls(&mut out)?;
                if first_flight {
                    outcome.first_flight.extend_from_slice(&out);
                }
                sock.write_all(&out)?;
                outcome.bytes_out += out.len();
                sent = true;
            }
            must_send = false;
        }
        if accepted && pending.is_empty() {
            break;
        }
        if sent {
            outcome.round_trips += 1;
            sent = false;
            first_flight = false;
        }
        sock.set_read_timeout(Some(if options.lazy { STALL } else { PATIENCE }))?;
        let n = match tls.read_tls(&mut sock) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if options.lazy && (tls.wants_write() || !plain.is_empty() || tls.is_handshaking())
                {
                    must_send = true;
                    continue;
                }
                return Err(io::Error::other("the server went quiet"));
            }
            Err(e) => return Err(e),
        };
        outcome.bytes_in += n;
        tls.process_new_packets().map_err(io::Error::other)?;
        let mut events = Vec::new();
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => wire
                    .receive(&buf[..n], &mut events)
                    .map_err(|e| io::Error::other(format!("{e:?}")))?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        for event in events {
            match event {
                mmtp::Event::HelloAccepted(_) => accepted = true,
                mmtp::Event::ResponseReceived {
                    stream_id, status, ..
                } => {
                    if let Some(at) = pending.iter().position(|(s, _)| *s == stream_id) {
                        let (_, index) = pending.swap_remove(at);
                        outcome.answers[index].status = status;
                    }
                }
                mmtp::Event::StreamErrorReceived {
                    stream_id, code, ..
                } => {
                    let Some(at) = pending.iter().position(|(s, _)| *s == stream_id) else {
                        continue;
                    };
                    let (_, index) = pending.swap_remove(at);
                    let answer = &mut outcome.answers[index];
                    if code == mmtp::ErrorCode::RefusedStream.value()
                        && options.retry_refused
                        && !answer.retried
                    {
                        answer.retried = true;
                        let stream = wire
                            .send_request(&answer.op, b"{}", &[] as &[(&str, &str)])
                            .map_err(io::Error::other)?;
                        pending.push((stream, index));
                        must_send = true;
                    } else {
                        answer.error = code;
                    }
                }
                mmtp::Event::ConnectionErrorReceived { code, message, .. } => {
                    return Err(io::Error::other(format!("ERROR {code}: {message}")));
                }
                _ => {}
            }
        }
        wire.take_output(&mut plain); // requests sent again, automatic answers
    }
    outcome.micros = started.elapsed().as_micros();
    outcome.resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    outcome.early_accepted = tls.is_early_data_accepted();
    outcome.syn_data = _engine::sys::syn_carried_data(&sock);
    if !outcome.syn_data {
        outcome.round_trips += 1; // the TCP handshake, before the first flight
    }
    // Not counted: finish the handshake and wait for a PONG, so the ticket the server
    // sends once it has the client's Finished is in before we leave (the next visit
    // resumes with it), then leave cleanly.
    wire.send_ping(b"tickets!").map_err(io::Error::other)?;
    wire.take_output(&mut plain);
    tls.writer().write_all(&plain)?;
    sock.set_read_timeout(Some(PATIENCE))?;
    'pong: loop {
        while tls.wants_write() {
            tls.write_tls(&mut sock)?;
        }
        if tls.read_tls(&mut sock)? == 0 {
            break;
        }
        tls.process_new_packets().map_err(io::Error::other)?;
        let mut events = Vec::new();
        while let Ok(n) = tls.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = wire.receive(&buf[..n], &mut events);
        }
        if events
            .iter()
            .any(|e| matches!(e, mmtp::Event::PongReceived { .. }))
        {
            break 'pong;
        }
    }
    tls.send_close_notify();
    while tls.wants_write() {
        if tls.write_tls(&mut sock).is_err() {
            break;
        }
    }
    Ok(outcome)
}

// ----------------------------------------------------------------- output

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn outcome_json(o: &Outcome) -> String {
    let answers: Vec<String> = o
        .answers
        .iter()
        .map(|a| {
            format!(
                "{{\"op\": {}, \"status\": {}, \"error\": {}, \"retried\": {}}}",
                json_string(&a.op),
                a.status,
                a.error,
                a.retried
            )
        })
        .collect();
    format!(
        "{{\"resumed\": {}, \"early_sent\": {}, \"early_accepted\": {}, \"syn_data\": {}, \
         \"bytes_out\": {}, \"bytes_in\": {}, \"round_trips\": {}, \"micros\": {}, \
         \"answers\": [{}]}}",
        o.resumed,
        o.early_sent,
        o.early_accepted,
        o.syn_data,
        o.bytes_out,
        o.bytes_in,
        o.round_trips,
        o.micros,
        answers.join(", ")
    )
}

fn median(values: &mut [u128]) -> u128 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

// ---------------------------------------------------------------- commands

fn measure(target: &Target, count: usize, op: &str) -> io::Result<()> {
    let modes: [(&str, bool, bool); 3] = [
        ("full", false, false),
        ("resumed", true, false),
        ("early", true, true),
    ];
    for fast_open in [false, true] {
        for (name, resumption, early) in modes {
            let config = config(target, resumption, early);
            let options = Options {
                early,
                fast_open,
                lazy: true,
                retry_refused: false,
            };
            // Not measured: the first visit gets the ticket (and the TFO cookie).
            visit(target, config.clone(), &[op], options)?;
            let mut runs = Vec::new();
            for _ in 0..count {
                runs.push(visit(target, config.clone(), &[op], options)?);
            }
            let pick = |f: &dyn Fn(&Outcome) -> u128| {
                let mut values: Vec<u128> = runs.iter().map(f).collect();
                median(&mut values)
            };
            let all = |f: &dyn Fn(&Outcome) -> bool| runs.iter().filter(|o| f(o)).count();
            println!(
                "{{\"mode\": {}, \"fast_open\": {}, \"visits\": {}, \"resumed\": {}, \
                 \"early_accepted\": {}, \"syn_data\": {}, \"bytes_out\": {}, \"bytes_in\": {}, \
                 \"round_trips\": {}, \"round_trips_max\": {}, \"answers_ok\": {}}}",
                json_string(name),
                fast_open,
                runs.len(),
                all(&|o| o.resumed),
                all(&|o| o.early_accepted),
                all(&|o| o.syn_data),
                pick(&|o| o.bytes_out as u128),
                pick(&|o| o.bytes_in as u128),
                pick(&|o| o.round_trips as u128),
                runs.iter().map(|o| o.round_trips).max().unwrap_or(0),
                all(&|o| o.answers.iter().all(|a| a.error == 0)),
            );
        }
    }
    Ok(())
}

fn early(target: &Target, ops: &[&str]) -> io::Result<()> {
    let config = config(target, true, true);
    let eager = Options {
        early: true,
        retry_refused: true,
        ..Options::default()
    };
    let first = visit(target, config.clone(), &[], eager)?;
    let elsewhere = Target {
        host: target.host,
        port: target.second_port.unwrap_or(target.port),
        second_port: None,
        roots: target.roots.clone(),
        device: target.device.clone(),
        token: target.token.clone(),
    };
    let second = visit(&elsewhere, config, ops, eager)?;
    // The network replays the second visit's first flight: ClientHello + early data.
    let mut replay = connect(target.host, target.port, false)?;
    replay.write_all(&second.first_flight)?;
    replay.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut received = 0;
    let mut buf = [0u8; 4096];
    loop {
        match replay.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    println!(
        "{{\"first\": {}, \"early\": {}, \"replay\": {{\"bytes_sent\": {}, \"bytes_in\": {}}}}}",
        outcome_json(&first),
        outcome_json(&second),
        second.first_flight.len(),
        received
    );
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: first_response (measure PORT CA DEVICE TOKEN_FILE COUNT OP | \
                 early PORT[/PORT2] CA DEVICE TOKEN_FILE OP...)";
    if args.len() < 6 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args[3]).map_err(io::Error::other)? {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let (address, second_port) = match args[2].split_once('/') {
        Some((a, b)) => (a, Some(b.parse().map_err(io::Error::other)?)),
        None => (args[2].as_str(), None),
    };
    // HOST:PORT or PORT (127.0.0.1): another loopback address than everyone's keeps
    // the kernel's TCP Fast Open cookie for it from being evicted by their traffic.
    let (host, port) = match address.split_once(':') {
        Some((host, port)) => {
            let ip: std::net::Ipv4Addr = host.parse().map_err(io::Error::other)?;
            (ip.octets(), port)
        }
        None => ([127, 0, 0, 1], address),
    };
    let target = Target {
        host,
        port: port.parse().map_err(io::Error::other)?,
        second_port,
        roots: Arc::new(roots),
        device: args[4].clone(),
        token: std::fs::read(&args[5])?,
    };
    let rest: Vec<&str> = args[6..].iter().map(String::as_str).collect();
    match args[1].as_str() {
        "measure" if rest.len() == 2 => {
            let count = rest[0].parse().map_err(io::Error::other)?;
            measure(&target, count, rest[1])
        }
        "early" => early(&target, &rest),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
