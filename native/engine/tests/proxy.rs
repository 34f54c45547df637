//! PROXY protocol listeners: a real engine, this test playing the load balancer
//! (a PROXY header, then a device's TLS and HELLO on the same TCP connection).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use _engine::boundary::Event;
use _engine::engine::Kind;
use _engine::proxy::{Trusted, V2_SIGNATURE};
use _engine::runtime::{ListenOptions, Setup};
use common::*;

fn v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 10.0.0.9 51000 8443\r\n").into_bytes()
}

fn v2(source: [u8; 4], tlvs: &[u8]) -> Vec<u8> {
    let mut body = source.to_vec();
    body.extend_from_slice(&[10, 0, 0, 9, 0xC7, 0x38, 0x20, 0xFB]);
    body.extend_from_slice(tlvs);
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// v2 LOCAL: the balancer's own connection (a health check), no device address.
fn v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    header
}

/// An engine whose proxy listener trusts `trusted`; returns (harness, proxy port).
fn balanced(trusted: &str, change: impl FnOnce(&mut Setup)) -> (Harness, u16) {
    let h = Harness::start(setup(|s| {
        s.config.proxy_trusted = Trusted::parse(&[trusted.to_string()]).unwrap();
        change(s);
    }));
    let port = h.listen_with(
        Kind::Mmtp,
        ListenOptions {
            proxy: true,
            ..ListenOptions::default()
        },
    );
    (h, port)
}

/// Through the balancer: header, TLS, HELLO, ACCEPT; returns the device and the
/// address the engine told Python.
fn through(
    h: &mut Harness,
    port: u16,
    header: &[u8],
    device_id: &str,
    split: bool,
) -> (Device, IpAddr) {
    let config = client_config(ClientOptions::default());
    let mut device = Device::connect_proxied(port, config, header, split).unwrap();
    device.hello(device_id);
    let wanted = device_id.to_string();
    let Event::Hello { conn, peer_ip, .. } = h.expect(
        "HELLO",
        |e| matches!(e, Event::Hello { hello, .. } if hello.device_id == wanted),
    ) else {
        unreachable!()
    };
    h.accept(conn.0, 60);
    let events = device.events().unwrap();
    assert!(
        matches!(events[0], mmtp::Event::HelloAccepted(_)),
        "{events:?}"
    );
    (device, peer_ip)
}

/// The engine closes `sock` without sending a byte (EOF, or a reset if our bytes
/// raced the close).
fn cut_unanswered(mut sock: TcpStream) {
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("the refused socket got {n} bytes: {:?}", &buf[..n]),
    }
}

fn wait_stat(h: &Harness, name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.stat(name) != value {
        assert!(
            Instant::now() < deadline,
            "{name} = {}, want {value}",
            h.stat(name)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn per_ip_limits_and_python_see_the_device_address_not_the_balancer() {
    let (mut h, port) = balanced("127.0.0.1/32", |s| s.config.max_connections_per_ip = 1);
    let (_a, ip_a) = through(
        &mut h,
        port,
        &v2([198, 51, 100, 7], b"\x01\x00\x06mmtp/1"),
        "a",
        false,
    );
    assert_eq!(ip_a, "198.51.100.7".parse::<IpAddr>().unwrap());
    // The balancer (127.0.0.1) is not counted: a second device through it is welcome.
    let (_b, ip_b) = through(&mut h, port, &v1("198.51.100.8"), "b", false);
    assert_eq!(ip_b, "198.51.100.8".parse::<IpAddr>().unwrap());
    // A second device behind 198.51.100.7 is over its limit: cut before any TLS.
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    third.write_all(&v2([198, 51, 100, 7], b"")).unwrap();
    cut_unanswered(third);
    wait_stat(&h, "refused_per_ip", 1);
    assert_eq!(h.stat("tls_handshakes_full"), 2);
    wait_stat(&h, "connections", 2);
}

#[test]
fn a_header_sent_a_byte_at_a_time_then_tls() {
    let (mut h, port) = balanced("127.0.0.0/8", |_| {});
    let (_device, ip) = through(&mut h, port, &v1("203.0.113.5"), "slow-lb", true);
    assert_eq!(ip, "203.0.113.5".parse::<IpAddr>().unwrap());
}

#[test]
fn a_local_header_counts_the_balancer_itself() {
    let (mut h, port) = balanced("127.0.0.1", |s| s.config.max_connections_per_ip = 1);
    let (_check, ip) = through(&mut h, port, &v2_local(), "lb-check", false);
    assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    second.write_all(&v2_local()).unwrap();
    cut_unanswered(second);
    wait_stat(&h, "refused_per_ip", 1);
}

#[test]
fn untrusted_peers_are_cut_at_accept() {
    let (h, port) = balanced("192.0.2.1/32", |_| {});
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = sock.write_all(&v1("198.51.100.7"));
    cut_unanswered(sock);
    wait_stat(&h, "refused_proxy_untrusted", 1);
    assert_eq!(h.stat("connections_accepted"), 0);
    // The engine's other (plain) listener is not a proxy listener: anyone may connect.
    let mut h = h;
    let (_device, _) = accepted_device(&mut h, "direct");
}

#[test]
fn missing_malformed_and_oversized_headers_are_refused() {
    let (h, port) = balanced("127.0.0.1/32", |s| s.config.proxy_max_header_bytes = 64);
    let cases: Vec<Vec<u8>> = vec![
        b"\x16\x03\x01\x00\x05hello".to_vec(), // TLS straight away: no header
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
        // 16 + 60 bytes > 64: refused from the length field, before the rest.
        [&V2_SIGNATURE[..], &[0x21, 0x11, 0x00, 60]].concat(),
    ];
    let count = cases.len() as u64;
    for case in cases {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.write_all(&case).unwrap();
        cut_unanswered(sock);
    }
    wait_stat(&h, "refused_proxy_invalid", count);
    wait_stat(&h, "connections", 0);
    assert_eq!(h.stat("tls_failures"), 0, "no TLS work for any of them");
}

#[test]
fn a_header_that_never_ends_is_cut_at_the_handshake_deadline() {
    let (h, port) = balanced("127.0.0.1/32", |s| {
        s.config.handshake_timeout_ms = 300;
        s.config.sweep_interval_ms = 20;
    });
    let started = Instant::now();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.write_all(&v2([198, 51, 100, 7], b"")[..20]).unwrap();
    cut_unanswered(sock);
    assert!(started.elapsed() >= Duration::from_millis(300));
    wait_stat(&h, "handshake_timeouts", 1);
    wait_stat(&h, "connections", 0);
}

#[test]
fn a_proxy_listener_needs_trusted_balancers() {
    let h = Harness::start(setup(|_| {}));
    let options = ListenOptions {
        proxy: true,
        ..ListenOptions::default()
    };
    let error =
        h.rt.listen(Kind::Mmtp, "127.0.0.1", 0, options)
            .unwrap_err();
    assert!(error.contains("proxy_trusted"), "{error}");
}
