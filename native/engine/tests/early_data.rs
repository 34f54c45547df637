//! TLS 1.3 early data on single-use tickets, end to end on loopback: a rustls client
//! with `enable_early_data`, two engines sharing the ticket keys and (as Python would
//! give them) one take-once ticket store, and a replay of the client's first flight.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use _engine::boundary::{Command, Event};
use _engine::ids::ConnId;
use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// The fleet's ticket store as Python keeps it (Redis GETDEL): each ticket taken once.
#[derive(Default)]
struct Store {
    tickets: HashMap<Vec<u8>, Vec<u8>>,
}

impl Store {
    /// Keep every ticket the engine issued (TLS_TICKET events in its backlog).
    fn keep_issued(&mut self, h: &mut Harness) {
        h.backlog.retain(|event| match event {
            Event::TlsTicket { ticket_id, state } => {
                self.tickets.insert(ticket_id.clone(), state.clone());
                false
            }
            _ => true,
        });
    }

    /// Answer the next TLS_RESUME: the ticket's state, once.
    fn serve_lookup(&mut self, h: &mut Harness) -> ConnId {
        let Event::TlsResume { conn, ticket_id } =
            h.expect("TLS_RESUME", |e| matches!(e, Event::TlsResume { .. }))
        else {
            unreachable!()
        };
        let state = self.tickets.remove(&ticket_id);
        h.submit(vec![Command::TlsResume {
            conn,
            ticket_id,
            state,
        }]);
        conn
    }
}

fn early_setup(h: &mut _engine::runtime::Setup) {
    h.config.early_data_max_bytes = 16384;
    h.ticket_keys = Some((1, vec![(1, vec![9u8; 32])]));
}

fn early_client() -> Arc<ClientConfig> {
    let mut config = (*client_config(ClientOptions::default())).clone();
    config.enable_early_data = true;
    Arc::new(config)
}

fn mmtp_client() -> mmtp::Connection {
    mmtp::Connection::new(
        mmtp::Role::Client,
        mmtp::Limits::default(),
        Arc::new(mmtp::BodyCodec::default()),
        Arc::new(mmtp::Presets::builtin()),
    )
}

/// A first, full connection that leaves a single-use ticket in `config`'s cache.
fn first_visit(h: &mut Harness, store: &mut Store, config: Arc<ClientConfig>, device: &str) {
    let mut first = Device::connect(h.port, config).unwrap();
    first.hello(device);
    let conn = h.hello_of(device);
    h.accept(conn, 60);
    first.events().unwrap(); // HELLO_ACK; the ticket came before it
    let ticket = h.expect("TLS_TICKET", |e| matches!(e, Event::TlsTicket { .. }));
    h.backlog.push(ticket);
    store.keep_issued(h);
}

/// A resumed connection whose HELLO and one REQUEST go as early data; returns the
/// socket, the TLS client, the wire and the bytes of its first flight.
fn early_visit(
    port: u16,
    config: Arc<ClientConfig>,
    device: &str,
    op: &str,
) -> (TcpStream, ClientConnection, mmtp::Connection, Vec<u8>) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls =
        ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut wire = mmtp_client();
    let hello = mmtp::Hello {
        device_id: device.into(),
        ..mmtp::Hello::default()
    };
    wire.send_hello(&hello, 0).unwrap();
    wire.send_request(op, b"{}", &[] as &[(&str, &str)])
        .unwrap();
    let mut plain = Vec::new();
    wire.take_output(&mut plain);
    let mut early = tls.early_data().expect("the ticket allows early data");
    early.write_all(&plain).unwrap();
    let mut flight = Vec::new();
    tls.write_tls(&mut flight).unwrap();
    sock.write_all(&flight).unwrap();
    (sock, tls, wire, flight)
}

/// Drive `tls` until the wire has produced `count` events.
fn read_events(
    sock: &mut TcpStream,
    tls: &mut ClientConnection,
    wire: &mut mmtp::Connection,
    count: usize,
) -> Vec<mmtp::Event> {
    let mut events = Vec::new();
    let mut buf = vec![0u8; 65536];
    while events.len() < count {
        if tls.wants_write() {
            tls.write_tls(sock).unwrap();
        }
        tls.read_tls(sock).unwrap();
        tls.process_new_packets().unwrap();
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => wire.receive(&buf[..n], &mut events).unwrap(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    if tls.wants_write() {
        tls.write_tls(sock).unwrap();
    }
    events
}

#[test]
fn early_data_resumes_on_another_node_once_and_a_replay_is_not_processed() {
    let mut a = Harness::start(common::setup(early_setup));
    let mut b = Harness::start(common::setup(early_setup));
    let mut store = Store::default();
    let config = early_client();
    first_visit(&mut a, &mut store, config.clone(), "phone");
    assert_eq!(store.tickets.len(), 1);

    // On node b: the ClientHello waits for the look-up, then HELLO and the REQUEST
    // arrive as early data, marked so.
    let (mut sock, mut tls, mut wire, flight) =
        early_visit(b.port, config.clone(), "phone", "app.get");
    let looked_up = store.serve_lookup(&mut b);
    let conn = b.hello_of("phone");
    assert_eq!(conn, looked_up.0);
    let request = b.expect("REQUEST", |e| matches!(e, Event::Request { .. }));
    let Event::Request {
        stream_id,
        op,
        early,
        ..
    } = request
    else {
        unreachable!()
    };
    assert_eq!((op.as_str(), early), ("app.get", true));
    b.accept(conn, 60);
    b.submit(vec![Command::Respond {
        conn: ConnId(conn),
        stream_id,
        status: 0,
        headers: vec![],
        body: b"early answer".to_vec(),
    }]);
    let events = read_events(&mut sock, &mut tls, &mut wire, 2);
    assert!(tls.is_early_data_accepted());
    assert_eq!(tls.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    assert!(
        matches!(events[0], mmtp::Event::HelloAccepted(_)),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], mmtp::Event::ResponseReceived { body, .. } if body == b"early answer")
    );
    // A request after the handshake is not early.
    let again = wire
        .send_request("app.get", b"{}", &[] as &[(&str, &str)])
        .unwrap();
    let mut plain = Vec::new();
    wire.take_output(&mut plain);
    tls.writer().write_all(&plain).unwrap();
    tls.write_tls(&mut sock).unwrap();
    let later = b.expect("REQUEST", |e| matches!(e, Event::Request { .. }));
    assert!(matches!(later, Event::Request { stream_id, early: false, .. } if stream_id == again));
    assert_eq!(b.stat("early_data_accepted"), 1);
    assert_eq!(b.stat("early_data_requests"), 1);

    // The network replays the first flight to node a: its ticket is taken, so rustls
    // does a full handshake and skips the early data; Python hears nothing of it.
    let mut replay = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    replay
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    replay.write_all(&flight).unwrap();
    store.serve_lookup(&mut a);
    let mut answer = [0u8; 5];
    replay.read_exact(&mut answer).unwrap(); // the server's (full) first flight
    assert_eq!(answer[0], 22, "a handshake record");
    drop(replay);
    // The next device shows the engine went on; the replay produced no HELLO/REQUEST.
    let (_other, _) = accepted_device(&mut a, "other");
    assert!(
        !a.backlog
            .iter()
            .any(|e| matches!(e, Event::Hello { .. } | Event::Request { .. })),
        "{:?}",
        a.backlog
    );
    assert_eq!(a.stat("early_data_accepted"), 0);
    assert_eq!(a.stat("early_data_offered"), 1);
}

#[test]
fn without_a_stored_ticket_or_with_early_data_off_the_handshake_is_full() {
    // A ticket the store does not have (expired, evicted, Redis down): full handshake,
    // the early data skipped, and the device's HELLO sent again after it works.
    let mut h = Harness::start(common::setup(early_setup));
    let mut store = Store::default();
    let config = early_client();
    first_visit(&mut h, &mut store, config.clone(), "tablet");
    store.tickets.clear();
    let (mut sock, mut tls, _wire, _) = early_visit(h.port, config, "tablet", "app.get");
    store.serve_lookup(&mut h);
    while tls.is_handshaking() {
        tls.complete_io(&mut sock).unwrap();
    }
    assert!(!tls.is_early_data_accepted());
    assert_eq!(tls.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let mut wire = mmtp_client();
    let hello = mmtp::Hello {
        device_id: "tablet".into(),
        ..mmtp::Hello::default()
    };
    wire.send_hello(&hello, 0).unwrap();
    let mut plain = Vec::new();
    wire.take_output(&mut plain);
    tls.writer().write_all(&plain).unwrap();
    tls.write_tls(&mut sock).unwrap();
    let conn = h.hello_of("tablet");
    h.accept(conn, 60);
    let events = read_events(&mut sock, &mut tls, &mut wire, 1);
    assert!(matches!(events[0], mmtp::Event::HelloAccepted(_)));
    assert_eq!(h.stat("early_data_accepted"), 0);

    // Early data off (the default): sealed tickets, no early data offered by rustls.
    let mut off = Harness::start(common::setup(|_| {}));
    let mut device = Device::connect(off.port, early_client()).unwrap();
    device.hello("watch");
    let conn = off.hello_of("watch");
    off.accept(conn, 60);
    device.events().unwrap();
    let mut tls =
        ClientConnection::new(early_client(), ServerName::try_from("localhost").unwrap()).unwrap();
    assert!(
        tls.early_data().is_none(),
        "a sealed ticket never allows early data"
    );
    assert!(!off
        .backlog
        .iter()
        .any(|e| matches!(e, Event::TlsTicket { .. })));
}

#[test]
fn a_sealed_ticket_from_a_node_without_early_data_still_resumes_on_one_with_it() {
    // A rolling change: node `off` (sealed tickets) and node `on` (early data) share
    // the ticket keys; the device's sealed ticket resumes on `on` at once, no look-up.
    let mut off = Harness::start(common::setup(|s| {
        s.ticket_keys = Some((1, vec![(1, vec![9u8; 32])]));
    }));
    let on = Harness::start(common::setup(early_setup));
    let config = client_config(ClientOptions::default());
    let mut first = Device::connect(off.port, config.clone()).unwrap();
    first.hello("rolling");
    let conn = off.hello_of("rolling");
    off.accept(conn, 60);
    first.events().unwrap();
    let second = Device::connect(on.port, config).unwrap();
    assert_eq!(
        second.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(on.stat("tls_ticket_lookups"), 0);
}
