//! The engine end to end on loopback: real sockets, real TLS, real MMTP devices.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use _engine::boundary::{Command, Event};
use _engine::engine::Kind;
use _engine::ids::ConnId;
use _engine::runtime::Setup;
use common::*;

/// Bytes zstd cannot shrink (bodies are compressed when that saves bytes).
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn code_of(events: &[mmtp::Event]) -> Option<u64> {
    events.iter().find_map(|e| match e {
        mmtp::Event::ConnectionErrorReceived { code, .. } => Some(*code),
        _ => None,
    })
}

#[test]
fn hello_accept_request_respond_push_ack_ping() {
    let mut h = Harness::start(setup(|_| {}));
    let (mut device, conn) = accepted_device(&mut h, "dev-1");
    let stream_id = device
        .wire
        .send_request("user.get", b"{\"id\":7}", &[("locale", "zh-CN")])
        .unwrap();
    device.flush().unwrap();
    let request = h.expect("REQUEST", |e| matches!(e, Event::Request { .. }));
    let Event::Request {
        conn: c,
        stream_id: s,
        op,
        headers,
        body,
        early: false,
        gate: None,
        busy: 0,
    } = request
    else {
        unreachable!()
    };
    assert_eq!(
        (c.0, s, op.as_str(), body.as_slice()),
        (conn, stream_id, "user.get", &b"{\"id\":7}"[..])
    );
    assert_eq!(headers.value_of("locale"), Some("zh-CN"));
    h.submit(vec![
        Command::Respond {
            conn: ConnId(conn),
            stream_id,
            status: 0,
            headers: vec![("x".into(), "y".into())],
            body: b"answer".to_vec(),
        },
        Command::Push {
            conn: ConnId(conn),
            message_id: Arc::from(&b"m-1"[..]),
            headers: vec![],
            body: b"hi".to_vec(),
            tracked: true,
        },
    ]);
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(device.events().unwrap());
    }
    assert!(matches!(&events[0], mmtp::Event::ResponseReceived { body, .. } if body == b"answer"));
    let mmtp::Event::PushReceived {
        delivery_id,
        message_id,
        ..
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!(message_id, b"m-1");
    device.wire.send_ack(&[*delivery_id]).unwrap();
    device.wire.send_ping(b"12345678").unwrap();
    device.flush().unwrap();
    let acks = h.expect("ACKS", |e| matches!(e, Event::Acks { .. }));
    assert!(
        matches!(acks, Event::Acks { conn: c, message_ids } if c.0 == conn && message_ids[0].as_ref() == b"m-1")
    );
    let events = device.events().unwrap();
    assert!(matches!(&events[0], mmtp::Event::PongReceived { payload } if payload == b"12345678"));
    assert_eq!(h.stat("mmtp_pings_answered"), 1);
    assert_eq!(h.stat("acks_tracked"), 1);
}

#[test]
fn a_client_without_alpn_mmtp_fails_its_handshake_with_no_application_protocol() {
    // Spec 3.2: the handshake fails with the alert, whether the client offers other
    // protocols (rustls would refuse those itself) or none (rustls would let it in).
    let mut h = Harness::start(setup(|_| {}));
    let offers: [&[&[u8]]; 3] = [&[], &[b"h2"], &[b"h2", b"http/1.1"]];
    for offered in offers {
        let mut config = (*client_config(ClientOptions::default())).clone();
        config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
        let Err(error) = Device::connect(h.port, Arc::new(config)) else {
            panic!("{offered:?}: the handshake is not refused");
        };
        let text = format!("{error:?}");
        assert!(
            text.contains("AlertReceived(NoApplicationProtocol)"),
            "{offered:?}: {text}"
        );
    }
    // Bytes that are no ClientHello: decode_error, then FIN.
    let mut raw = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, [21, 3, 3, 0, 2, 2, 50]);
    // A device with ALPN still gets through, and its HELLO is the only one.
    let (_ok, _) = accepted_device(&mut h, "with-alpn");
    assert!(!h
        .backlog
        .iter()
        .any(|e| matches!(e, Event::Hello { .. } | Event::Closed { .. })));
    assert_eq!(h.stat("alpn_refused"), 3);
    assert_eq!(h.stat("tls_failures"), 1);
}

#[test]
fn a_failed_handshake_tells_the_client_why_with_the_alert_rustls_queued() {
    let h = Harness::start(setup(|s: &mut Setup| {
        if let Some(tls) = &mut s.tls {
            tls.client_ca_pem = Some(read_cert("client-ca.pem"));
            tls.require_client_cert = true;
        }
    }));
    // TLS 1.3: the client finishes its side before the server checks its (missing)
    // certificate; its next read finds the server's alert, not a bare reset.
    let mut device = Device::connect(h.port, client_config(ClientOptions::default())).unwrap();
    device.hello("no-cert");
    let error = device.events().expect_err("the server refuses");
    assert!(
        format!("{error:?}").contains("AlertReceived(CertificateRequired)"),
        "{error:?}"
    );
    let with = Device::connect(
        h.port,
        client_config(ClientOptions {
            client_cert: true,
            ..ClientOptions::default()
        }),
    );
    assert!(with.is_ok());
    // Counted once the failed pass returned (the alert may reach the client before).
    assert_eq!(h.stat("tls_failures"), 1);
}

#[test]
fn per_ip_limit_closes_the_socket_before_any_tls_work() {
    let mut h = Harness::start(setup(|s| s.config.max_connections_per_ip = 1));
    let (_first, _) = accepted_device(&mut h, "first");
    let mut second = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    // Closed at accept: EOF (or a reset if our ClientHello raced the close).
    let _ = second.write_all(b"\x16\x03\x01\x00\x05hello");
    match second.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("the refused socket got {n} bytes"),
    }
    assert_eq!(h.stat("refused_per_ip"), 1);
    assert_eq!(
        h.stat("tls_handshakes_full"),
        1,
        "no TLS work for the refused one"
    );
    assert_eq!(h.stat("connections"), 1);
}

#[test]
fn handshake_deadline_cuts_silent_sockets_and_tells_tls_devices_why() {
    let mut h = Harness::start(setup(|s| {
        s.config.handshake_timeout_ms = 300;
        s.config.sweep_interval_ms = 20;
    }));
    let started = Instant::now();
    let mut raw = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut device = Device::connect(h.port, client_config(ClientOptions::default())).unwrap();
    let seen = device.until_closed();
    assert_eq!(
        code_of(&seen),
        Some(mmtp::ErrorCode::HandshakeTimeout.value())
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(raw.read(&mut buf), Ok(0) | Err(_)),
        "the silent TCP socket is cut"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.stat("handshake_timeouts"), 2);
    // Neither was ever told to Python.
    assert!(h.backlog.is_empty());
    let _ = &mut h;
}

#[test]
fn fanout_reaches_every_device_and_acks_are_summed() {
    let mut h = Harness::start(setup(|_| {}));
    let mut devices: Vec<(Device, u64)> = (0..40)
        .map(|i| accepted_device(&mut h, &format!("fan-{i}")))
        .collect();
    // A connection that never said HELLO is not a fan-out target.
    let _unaccepted = Device::connect(h.port, client_config(ClientOptions::default())).unwrap();
    let push = mmtp::PreparedPush::new(
        b"fan-1",
        b"to everyone",
        &[("k", "v")],
        Arc::new(mmtp::BodyCodec::default()),
    );
    h.submit(vec![Command::Fanout {
        push: Arc::new(push),
        message_id: Arc::from(&b"fan-1"[..]),
        targets: None,
    }]);
    for (device, _) in devices.iter_mut() {
        let events = device.events().unwrap();
        let mmtp::Event::PushReceived {
            delivery_id, body, ..
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!(body, b"to everyone");
        device.wire.send_ack(&[*delivery_id]).unwrap();
        device.flush().unwrap();
    }
    let done = h.expect("FANOUT_DONE", |e| matches!(e, Event::FanoutDone { .. }));
    assert!(
        matches!(
            done,
            Event::FanoutDone {
                written: 40,
                skipped: 0,
                ..
            }
        ),
        "{done:?}"
    );
    h.expect_fanout_acks(b"fan-1", 40);
    assert_eq!(h.fanout_acks[&b"fan-1"[..]], 40);
    assert_eq!(h.stat("fanout_deliveries"), 40);
    // Targets by id: two of them, and a stale id skipped.
    let targets = vec![ConnId(devices[0].1), ConnId(devices[1].1), ConnId(u64::MAX)];
    let push = mmtp::PreparedPush::new(
        b"fan-2",
        b"two",
        &[] as &[(&str, &str)],
        Arc::new(mmtp::BodyCodec::default()),
    );
    h.submit(vec![Command::Fanout {
        push: Arc::new(push),
        message_id: Arc::from(&b"fan-2"[..]),
        targets: Some(targets),
    }]);
    let done = h.expect("FANOUT_DONE", |e| matches!(e, Event::FanoutDone { .. }));
    assert!(
        matches!(
            done,
            Event::FanoutDone {
                written: 2,
                skipped: 1,
                ..
            }
        ),
        "{done:?}"
    );
}

#[test]
fn the_session_ticket_leaves_with_hello_ack_in_one_write() {
    // A full handshake costs the server two socket writes: its flight (ServerHello ..
    // Finished), then the session ticket and HELLO_ACK together (the ticket was a
    // write of its own, right after the client's Finished). A device whose HELLO is
    // refused gets the ticket with the ERROR.
    let mut h = Harness::start(setup(|_| {}));
    let config = client_config(ClientOptions::default());
    let mut device = Device::connect(h.port, config.clone()).unwrap();
    device.hello("one-write");
    let conn = h.hello_of("one-write");
    // Usually only the first flight is out before HELLO_ACK. The ticket is held only
    // when the client's Finished was read in an earlier pass than the one that emits
    // the ticket (`handshake_over` is read once per pass): when Finished and the
    // ticket fall in one pass the ticket still goes alone, so 2 is possible here.
    let before = h.stat("writes");
    assert!(
        (1..=2).contains(&before),
        "writes before HELLO_ACK: {before}"
    );
    h.accept(conn, 60);
    let events = device.events().unwrap();
    assert!(
        matches!(&events[0], mmtp::Event::HelloAccepted(_)),
        "{events:?}"
    );
    assert_eq!(
        h.stat("writes"),
        before + 1,
        "HELLO_ACK (and a held ticket) in one write"
    );
    // The ticket was there: the next connection resumes.
    let mut again = Device::connect(h.port, config).unwrap();
    assert_eq!(
        again.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    again.hello("refused");
    let conn = h.hello_of("refused");
    h.submit(vec![Command::Reject {
        conn: ConnId(conn),
        code: mmtp::ErrorCode::Forbidden,
        message: "no".into(),
        retry_after_ms: 0,
    }]);
    assert_eq!(
        code_of(&again.until_closed()),
        Some(mmtp::ErrorCode::Forbidden.value())
    );
}

#[test]
fn a_second_engine_with_the_same_ticket_keys_resumes_the_session() {
    let keys = || Some((3u8, vec![(3u8, vec![42u8; 32])]));
    let mut a = Harness::start(setup(|s| s.ticket_keys = keys()));
    let mut b = Harness::start(setup(|s| s.ticket_keys = keys()));
    let mut c = Harness::start(setup(|_| {})); // its own random key
    let config = client_config(ClientOptions::default());
    let mut first = Device::connect(a.port, config.clone()).unwrap();
    first.hello("resumer");
    let conn = a.hello_of("resumer");
    a.accept(conn, 60);
    first.events().unwrap(); // HELLO_ACK: the ticket arrived before it
    assert_eq!(
        first.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    let second = Device::connect(b.port, config.clone()).unwrap();
    assert_eq!(
        second.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let third = Device::connect(c.port, config).unwrap();
    assert_eq!(
        third.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // The counters agree (the server saw a resumption only where the keys match).
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stat("tls_handshakes_resumed") < 1 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(b.stat("tls_handshakes_resumed"), 1);
    assert_eq!(c.stat("tls_handshakes_resumed"), 0);
    let _ = (&mut b, &mut c);
}

#[test]
fn mqtt_whole_packets_native_pingresp_and_the_size_limit() {
    let mut h = Harness::start(setup(|s| s.config.mqtt_max_packet_size = 64));
    let port = h.listen(Kind::Mqtt, false);
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // CONNECT (MQTT 3.1.1, client id "c1") split across writes, and a PINGREQ behind it.
    let connect = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1";
    sock.write_all(&connect[..5]).unwrap();
    sock.flush().unwrap();
    sock.write_all(&connect[5..]).unwrap();
    sock.write_all(&[0xC0, 0x00]).unwrap();
    let open = h.expect("MQTT_OPEN", |e| matches!(e, Event::MqttOpen { .. }));
    let Event::MqttOpen {
        conn, tls: false, ..
    } = open
    else {
        panic!("{open:?}")
    };
    let packets = h.expect("MQTT_PACKETS", |e| matches!(e, Event::MqttPackets { .. }));
    // Before SET_IDLE, a PINGREQ is Python's to judge (it is not accepted yet).
    let Event::MqttPackets { packets, .. } = packets else {
        unreachable!()
    };
    assert_eq!(packets, vec![connect.to_vec(), vec![0xC0, 0x00]]);
    h.submit(vec![
        Command::MqttWrite {
            conn,
            data: vec![0x20, 0x02, 0x00, 0x00],
        },
        Command::SetIdle {
            conn,
            idle_timeout_ms: 90_000,
        },
    ]);
    let mut buf = [0u8; 4];
    sock.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0x20, 0x02, 0x00, 0x00]);
    sock.write_all(&[0xC0, 0x00]).unwrap();
    let mut pong = [0u8; 2];
    sock.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
    assert_eq!(h.stat("mqtt_pings_answered"), 1);
    // Once accepted, a read of bare PUBACKs goes up as packet ids.
    sock.write_all(&[0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x12, 0x34])
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        match h.expect("MQTT_PUBACKS", |e| matches!(e, Event::MqttPubacks { .. })) {
            Event::MqttPubacks { packet_ids, .. } => ids.extend(packet_ids),
            _ => unreachable!(),
        }
    }
    assert_eq!(ids, vec![1, 0x1234]);
    // Packet id 0 (malformed) is Python's to judge, as a whole packet.
    sock.write_all(&[0x40, 0x02, 0x00, 0x00]).unwrap();
    let packets = h.expect("MQTT_PACKETS", |e| matches!(e, Event::MqttPackets { .. }));
    let Event::MqttPackets { packets, .. } = packets else {
        unreachable!()
    };
    assert_eq!(packets, vec![vec![0x40, 0x02, 0x00, 0x00]]);
    // A PUBLISH announcing 200 bytes (> 64): closed from its fixed header.
    sock.write_all(&[0x30, 0xC8, 0x01, 0x00]).unwrap();
    let closed = h.expect("CLOSED", |e| matches!(e, Event::Closed { .. }));
    assert!(
        matches!(closed, Event::Closed { reason: 2, .. }),
        "{closed:?}"
    );
    // MQTT 3.1.1 has no packet to say why: only the close.
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    assert_eq!(rest, b"");
    assert_eq!(h.stat("mqtt_framing_errors"), 1);
}

#[test]
fn an_mqtt5_client_over_the_size_limit_hears_why_before_the_close() {
    let mut h = Harness::start(setup(|s| s.config.mqtt_max_packet_size = 64));
    let port = h.listen(Kind::Mqtt, false);
    // MQTT 5 CONNECT (client id "c5", no properties), split inside its protocol name.
    let connect = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02c5";
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&connect[..6]).unwrap();
    sock.flush().unwrap();
    std::thread::yield_now();
    sock.write_all(&connect[6..]).unwrap();
    let conn = match h.expect("MQTT_OPEN", |e| matches!(e, Event::MqttOpen { .. })) {
        Event::MqttOpen { conn, .. } => conn,
        _ => unreachable!(),
    };
    h.submit(vec![
        Command::MqttWrite {
            conn,
            data: vec![0x20, 0x03, 0x00, 0x00, 0x00],
        },
        Command::SetIdle {
            conn,
            idle_timeout_ms: 90_000,
        },
    ]);
    let mut connack = [0u8; 5];
    sock.read_exact(&mut connack).unwrap();
    // Connected: a PUBLISH announcing 200 bytes gets DISCONNECT 0x95, then the close.
    sock.write_all(&[0x30, 0xC8, 0x01, 0x00]).unwrap();
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    assert_eq!(rest, [0xE0, 0x02, 0x95, 0x00]);
    let closed = h.expect("CLOSED", |e| matches!(e, Event::Closed { .. }));
    assert!(
        matches!(closed, Event::Closed { reason: 2, .. }),
        "{closed:?}"
    );
    // A CONNECT that is itself too large is refused with CONNACK 0x95 (no DISCONNECT
    // before a CONNACK); Python never hears of the connection.
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"\x10\xc8\x01\x00\x04MQTT\x05\x02\x00\x3c")
        .unwrap();
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    assert_eq!(rest, [0x20, 0x03, 0x00, 0x95, 0x00]);
    assert_eq!(h.stat("mqtt_framing_errors"), 2);
    assert!(!h
        .backlog
        .iter()
        .any(|e| matches!(e, Event::MqttOpen { .. })));
}

#[test]
fn a_flooding_device_does_not_starve_another() {
    let mut h = Harness::start(setup(|s| {
        s.config.max_frames_per_round = 64;
        s.config.max_read_per_round_bytes = 16 * 1024;
    }));
    let (mut flooder, _) = accepted_device(&mut h, "flooder");
    let mut quiet = Device::connect(h.port, client_config(ClientOptions::default())).unwrap();
    // 300,000 PINGs (2 bytes each), read 16 KiB and handled 64 frames per round.
    const PINGS: u64 = 300_000;
    for _ in 0..PINGS {
        flooder.wire.send_ping(b"").unwrap();
    }
    let mut flood = Vec::new();
    flooder.wire.take_output(&mut flood);
    let writer = std::thread::spawn(move || {
        flooder.write_plain(&flood).unwrap();
        flooder
    });
    // Once the engine is busy with the flood, the quiet device speaks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.stat("mmtp_pings_answered") == 0 {
        assert!(Instant::now() < deadline, "the flood never arrived");
        std::thread::yield_now();
    }
    quiet.hello("quiet");
    h.hello_of("quiet");
    let answered = h.stat("mmtp_pings_answered");
    assert!(
        answered < PINGS,
        "the HELLO waited for the whole flood ({answered} pings)"
    );
    assert!(h.stat("fairness_yields") > 0);
    drop(writer);
}

#[test]
fn commands_for_a_gone_connection_are_ignored_and_its_slot_gets_a_new_id() {
    let mut h = Harness::start(setup(|_| {}));
    let (device, old) = accepted_device(&mut h, "leaver");
    drop(device);
    let closed = h.expect("CLOSED", |e| matches!(e, Event::Closed { .. }));
    assert!(matches!(closed, Event::Closed { conn, reason: 0 } if conn.0 == old));
    h.submit(vec![Command::Push {
        conn: ConnId(old),
        message_id: Arc::from(&b"late"[..]),
        headers: vec![],
        body: vec![],
        tracked: true,
    }]);
    let failed = h.expect("PUSH_FAILED", |e| matches!(e, Event::PushFailed { .. }));
    assert!(matches!(failed, Event::PushFailed { reason, .. } if reason == "closed"));
    // Another device may take the slot; it has another id.
    let (_next, new) = accepted_device(&mut h, "next");
    assert_ne!(new, old);
    assert_eq!(ConnId(new).slot(), ConnId(old).slot());
    assert_eq!(h.stat("commands_stale"), 1);
}

#[test]
fn a_full_event_queue_stops_reading_until_python_takes() {
    let mut h = Harness::start(setup(|s| s.config.max_pending_event_bytes = 64 * 1024));
    let (mut device, _) = accepted_device(&mut h, "chatty");
    let body = incompressible(4000);
    for _ in 0..60 {
        device
            .wire
            .send_request("bulk", &body, &[] as &[(&str, &str)])
            .unwrap();
        let mut out = Vec::new();
        device.wire.take_output(&mut out);
        device.write_plain(&out).unwrap();
    }
    // Nothing is taken: the engine pauses reading once 64 KiB of events wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.stat("event_backpressure_pauses") == 0 {
        assert!(Instant::now() < deadline, "the engine never paused");
        std::thread::yield_now();
    }
    let mut requests = 0;
    while requests < 60 {
        h.expect("REQUEST", |e| matches!(e, Event::Request { .. }));
        requests += 1;
    }
}

#[test]
fn a_device_that_does_not_read_is_cut_as_a_slow_consumer() {
    let mut h = Harness::start(setup(|s| s.config.send_buffer_high_water_bytes = 16 * 1024));
    let (device, conn) = accepted_device_with(&mut h, "sleepy", 4096);
    let body = incompressible(60_000);
    // The device never reads: kernel buffers fill, then the engine's queue.
    for i in 0..100 {
        h.submit(vec![Command::Push {
            conn: ConnId(conn),
            message_id: Arc::from(format!("m{i}").as_bytes()),
            headers: vec![],
            body: body.clone(),
            tracked: true,
        }]);
    }
    let closed = h.expect("CLOSED", |e| matches!(e, Event::Closed { .. }));
    assert!(
        matches!(closed, Event::Closed { reason: 24, .. }),
        "{closed:?}"
    );
    assert_eq!(h.stat("slow_consumers"), 1);
    drop(device);
}

#[test]
fn reloading_the_certificate_keeps_open_devices() {
    let mut h = Harness::start(setup(|_| {}));
    let (mut before, conn) = accepted_device(&mut h, "before");
    let old_cert = before.tls.peer_certificates().unwrap()[0].clone();
    h.rt.reload_tls(&_engine::tls::TlsMaterial {
        cert_pem: read_cert("server2.pem"),
        key_pem: read_cert("server2.key"),
        ..Default::default()
    })
    .unwrap();
    let (after, _) = accepted_device(&mut h, "after");
    let new_cert = after.tls.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        old_cert, new_cert,
        "new connections get the new certificate"
    );
    assert_eq!(
        new_cert.as_ref(),
        rustls::pki_types::CertificateDer::from_pem_slice(&read_cert("server2.pem"))
            .unwrap()
            .as_ref()
    );
    h.submit(vec![Command::Push {
        conn: ConnId(conn),
        message_id: Arc::from(&b"still"[..]),
        headers: vec![],
        body: b"here".to_vec(),
        tracked: false,
    }]);
    let events = before.events().unwrap();
    assert!(matches!(&events[0], mmtp::Event::PushReceived { body, .. } if body == b"here"));
    assert_eq!(h.stat("tls_reloads"), 1);
}

use rustls::pki_types::pem::PemObject;

#[test]
fn client_certificate_common_name_reaches_hello() {
    let mut h = Harness::start(setup(|s: &mut Setup| {
        if let Some(tls) = &mut s.tls {
            tls.client_ca_pem = Some(read_cert("client-ca.pem"));
        }
    }));
    let mut with = Device::connect(
        h.port,
        client_config(ClientOptions {
            client_cert: true,
            ..ClientOptions::default()
        }),
    )
    .unwrap();
    with.hello("iot-box");
    let hello = h.expect("HELLO", |e| matches!(e, Event::Hello { .. }));
    assert!(matches!(hello, Event::Hello { client_cert_cn: Some(cn), .. } if cn == "device-cn-1"));
    let mut without = Device::connect(h.port, client_config(ClientOptions::default())).unwrap();
    without.hello("phone");
    let hello = h.expect("HELLO", |e| matches!(e, Event::Hello { .. }));
    assert!(matches!(
        hello,
        Event::Hello {
            client_cert_cn: None,
            ..
        }
    ));
}

/// A real (trained-like) dictionary: raw content zstd loads as it is.
fn test_dictionary(id: u32) -> mmtp::Dictionary {
    let content: Vec<u8> = (0..12_000u32)
        .flat_map(|i| {
            format!(
                "{{\"type\":\"chat\",\"title\":\"message {}\",\"from\":\"ann\"}}",
                i % 97
            )
            .into_bytes()
        })
        .take(12_000)
        .collect();
    mmtp::Dictionary::new(id, content).unwrap()
}

#[test]
fn a_dictionary_is_delivered_in_chunks_after_answers_and_then_used() {
    let mut h = Harness::start(setup(|s| {
        s.config.dict_chunk_bytes = 1024;
        s.config.usage_apps = vec!["app-a".into()];
    }));
    let (mut device, conn) = accepted_device(&mut h, "dev-dict");
    let dictionary = test_dictionary(42);
    let stream_id = device.wire.send_request("x", b"", &[("a", "b")]).unwrap();
    device.flush().unwrap();
    h.expect("REQUEST", |e| matches!(e, Event::Request { .. }));
    // The answer and the delivery in one batch: the answer goes first, whole.
    h.submit(vec![
        Command::AddDictionary(dictionary.clone()),
        Command::Respond {
            conn: ConnId(conn),
            stream_id,
            status: 0,
            headers: vec![],
            body: b"answer".to_vec(),
        },
        Command::Dict {
            conns: vec![ConnId(conn)],
            dict_id: 42,
        },
    ]);
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e| matches!(e, mmtp::Event::DictionaryReceived(_)))
    {
        events.extend(device.events().unwrap());
    }
    assert!(
        matches!(&events[0], mmtp::Event::ResponseReceived { .. }),
        "{events:?}"
    );
    assert_eq!(device.wire.outgoing_dictionary(), 42);
    assert_eq!(h.stat("dict_deliveries_done"), 1);
    assert_eq!(h.stat("dict_bytes"), dictionary.content.len() as u64);
    assert!(h.stat("dict_chunks") >= 12);
    // The server compresses with it from now on.
    let body = br#"{"type":"chat","title":"message 5","from":"ann","text":"see you"}"#;
    h.submit(vec![Command::Push {
        conn: ConnId(conn),
        message_id: Arc::from(&b"m-d"[..]),
        headers: vec![],
        body: body.to_vec(),
        tracked: false,
    }]);
    let events = device.events().unwrap();
    assert!(matches!(&events[0], mmtp::Event::PushReceived { body: b, .. } if b == body));
    // Delivering it again is skipped (budget and duplicate rules are per connection).
    h.submit(vec![Command::Dict {
        conns: vec![ConnId(conn), ConnId(conn + 99)],
        dict_id: 42,
    }]);
    h.submit(vec![Command::Dict {
        conns: vec![ConnId(conn)],
        dict_id: 7,
    }]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stat("dict_deliveries_skipped") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        h.stat("dict_deliveries_skipped"),
        2,
        "unknown conn, unknown dictionary"
    );
}

#[test]
fn deliveries_stay_within_the_connection_budget() {
    let mut h = Harness::start(setup(|s| {
        s.config.dict_budget_bytes = 20_000;
    }));
    let (mut device, conn) = accepted_device(&mut h, "dev-budget");
    h.submit(vec![
        Command::AddDictionary(test_dictionary(50)),
        Command::AddDictionary(test_dictionary(51)),
        Command::Dict {
            conns: vec![ConnId(conn)],
            dict_id: 50,
        },
        Command::Dict {
            conns: vec![ConnId(conn)],
            dict_id: 51,
        },
    ]);
    let mut received = 0;
    while received < 1 {
        received += device
            .events()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, mmtp::Event::DictionaryReceived(_)))
            .count();
    }
    assert_eq!(h.stat("dict_deliveries"), 1);
    assert_eq!(h.stat("dict_deliveries_skipped"), 1);
    assert_eq!(device.wire.outgoing_dictionary(), 50);
}

#[test]
fn presets_added_while_running_serve_new_devices_and_usage_counts_per_app() {
    let mut h = Harness::start(setup(|s| s.config.usage_apps = vec!["chirp".into()]));
    let typed = vec![("x-req".to_string(), mmtp::Kind::Uuid)];
    let table = mmtp::PresetTable::with_declarations(
        77,
        "chirp",
        vec![("x-app".into(), "chirp".into())],
        Some(typed),
        vec!["cookie".into()],
        vec![],
    )
    .unwrap();
    h.submit(vec![Command::AddPreset(Box::new(table.clone()))]);
    let config = client_config(ClientOptions::default());
    let mut device = Device::connect(h.port, config).unwrap();
    let mut presets = mmtp::Presets::builtin();
    presets.insert(table).unwrap();
    device.wire = mmtp::Connection::new(
        mmtp::Role::Client,
        mmtp::Limits::default(),
        Arc::new(mmtp::BodyCodec::default()),
        Arc::new(presets),
    );
    let hello = mmtp::Hello {
        device_id: "dev-chirp".into(),
        app_id: "chirp".into(),
        preset_id: 77,
        ..mmtp::Hello::default()
    };
    device.wire.send_hello(&hello, 0).unwrap();
    let headers = [
        ("cookie", "sid=1"),
        ("x-req", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ];
    device.wire.send_request("feed", b"{}", &headers).unwrap();
    device.flush().unwrap();
    let conn = h.hello_of("dev-chirp");
    let request = h.expect("REQUEST", |e| matches!(e, Event::Request { .. }));
    let Event::Request { headers: got, .. } = request else {
        unreachable!()
    };
    assert_eq!(got.value_of("cookie"), Some("sid=1"));
    assert_eq!(
        got.value_of("x-req"),
        Some("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    );
    h.accept(conn, 60);
    assert!(matches!(
        device.events().unwrap()[0],
        mmtp::Event::HelloAccepted(_)
    ));
    let usage = h.rt.shared.usage.snapshot();
    let (app, rows) = &usage[0];
    assert_eq!(app, "chirp");
    assert_eq!(rows[0].0, mmtp::RAW_BODY);
    assert_eq!(rows[0].1[3], 1, "one body received, raw");
}
