//! A real engine on loopback and real devices: rustls clients with the mmtp crate
//! in the client role (the Python tests use `channel.wire` and Python's ssl).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use _engine::boundary::{Event, MessageId};
use _engine::engine::Kind;
use _engine::runtime::{ListenOptions, Runtime, Setup};
use _engine::tls::TlsMaterial;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

pub const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/certs");

pub fn read_cert(name: &str) -> Vec<u8> {
    std::fs::read(format!("{CERTS}/{name}")).unwrap()
}

pub fn tls_material() -> TlsMaterial {
    TlsMaterial {
        cert_pem: read_cert("server.pem"),
        key_pem: read_cert("server.key"),
        ..TlsMaterial::default()
    }
}

/// A setup with the test certificate and `change` applied.
pub fn setup(change: impl FnOnce(&mut Setup)) -> Setup {
    let mut setup = Setup {
        tls: Some(tls_material()),
        ..Setup::default()
    };
    change(&mut setup);
    setup
}

pub struct Harness {
    pub rt: Runtime,
    pub port: u16,
    /// Events taken but not yet looked at by a test.
    pub backlog: Vec<Event>,
    pub fanout_acks: HashMap<MessageId, u64>,
}

impl Harness {
    pub fn start(setup: Setup) -> Harness {
        let rt = Runtime::start(setup).unwrap();
        let port = rt
            .listen(Kind::Mmtp, "127.0.0.1", 0, ListenOptions::default())
            .unwrap();
        Harness {
            rt,
            port,
            backlog: Vec::new(),
            fanout_acks: HashMap::new(),
        }
    }

    pub fn listen_with(&self, kind: Kind, options: ListenOptions) -> u16 {
        self.rt.listen(kind, "127.0.0.1", 0, options).unwrap()
    }

    pub fn listen(&self, kind: Kind, tls: bool) -> u16 {
        let options = ListenOptions {
            tls,
            ..ListenOptions::default()
        };
        self.rt.listen(kind, "127.0.0.1", 0, options).unwrap()
    }

    /// Wait on the eventfd (no sleeping) and take one batch into the backlog.
    fn take(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if !_engine::sys::wait_readable(&self.rt.shared.eventfd, left.as_millis() as i32) {
            return false;
        }
        let (events, acks) = self.rt.shared.take_events();
        self.backlog.extend(events);
        for (id, count) in acks {
            *self.fanout_acks.entry(id).or_insert(0) += count;
        }
        true
    }

    /// The first event (from the backlog on) that `matches`; earlier ones stay.
    pub fn expect(&mut self, what: &str, mut matches: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.backlog.iter().position(&mut matches) {
                return self.backlog.remove(at);
            }
            if !self.take(deadline) && Instant::now() >= deadline {
                panic!("no {what} event within 10 s; got {:?}", self.backlog);
            }
        }
    }

    /// Wait until the fan-out ACK count of `id` reaches `count`.
    pub fn expect_fanout_acks(&mut self, id: &[u8], count: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.fanout_acks.get(id).copied().unwrap_or(0) < count {
            if !self.take(deadline) && Instant::now() >= deadline {
                panic!("fan-out acks {:?} of {count}", self.fanout_acks.get(id));
            }
        }
    }

    pub fn hello_of(&mut self, device_id: &str) -> u64 {
        let device_id = device_id.to_string();
        match self.expect(
            "HELLO",
            |e| matches!(e, Event::Hello { hello, .. } if hello.device_id == device_id),
        ) {
            Event::Hello { conn, .. } => conn.0,
            _ => unreachable!(),
        }
    }

    pub fn submit(&self, commands: Vec<_engine::boundary::Command>) {
        self.rt.shared.submit(commands);
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.rt
            .shared
            .stats
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no stat {name}"))
            .1
    }

    pub fn accept(&self, conn: u64, heartbeat_s: u64) {
        self.submit(vec![_engine::boundary::Command::Accept {
            conn: _engine::ids::ConnId(conn),
            session_id: b"session1".to_vec(),
            resume_ticket: b"ticket".to_vec(),
            heartbeat_s,
            server_time_ms: 1_700_000_000_000,
            resumed: false,
        }]);
    }
}

pub struct ClientOptions {
    pub alpn: bool,
    pub client_cert: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            alpn: true,
            client_cert: false,
        }
    }
}

pub fn client_config(options: ClientOptions) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read_cert("ca.pem")) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(_engine::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if options.client_cert {
        let chain = CertificateDer::pem_slice_iter(&read_cert("client.pem"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&read_cert("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    if options.alpn {
        config.alpn_protocols = vec![b"mmtp/1".to_vec()];
    }
    Arc::new(config)
}

/// A device: TLS (rustls, blocking) and an MMTP client connection.
pub struct Device {
    pub sock: TcpStream,
    pub tls: ClientConnection,
    pub wire: mmtp::Connection,
}

impl Device {
    pub fn connect(port: u16, config: Arc<ClientConfig>) -> io::Result<Device> {
        Device::connect_with(port, config, 0)
    }

    /// `receive_buffer_bytes` > 0: a small kernel receive buffer, set before the
    /// connect (the window is agreed then), so unread bytes back up quickly.
    pub fn connect_with(
        port: u16,
        config: Arc<ClientConfig>,
        receive_buffer_bytes: usize,
    ) -> io::Result<Device> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if receive_buffer_bytes > 0 {
            socket.set_recv_buffer_size(receive_buffer_bytes)?;
        }
        socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
        let sock: TcpStream = socket.into();
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        sock.set_nodelay(true)?;
        let tls = ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
            .map_err(io::Error::other)?;
        let wire = mmtp::Connection::new(
            mmtp::Role::Client,
            mmtp::Limits::default(),
            Arc::new(mmtp::BodyCodec::default()),
            Arc::new(mmtp::Presets::builtin()),
        );
        let mut device = Device { sock, tls, wire };
        while device.tls.is_handshaking() {
            device.tls.complete_io(&mut device.sock)?;
        }
        Ok(device)
    }

    /// Connect as a load balancer would: `header` (a PROXY header), then the device's
    /// TLS. `split`: the header goes a byte per write; else it and the ClientHello go
    /// in one write (the engine must find the TLS bytes after the header).
    pub fn connect_proxied(
        port: u16,
        config: Arc<ClientConfig>,
        header: &[u8],
        split: bool,
    ) -> io::Result<Device> {
        let mut sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        sock.set_nodelay(true)?;
        let mut tls = ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
            .map_err(io::Error::other)?;
        let mut first = Vec::new();
        if split {
            for byte in header {
                sock.write_all(std::slice::from_ref(byte))?;
            }
        } else {
            first.extend_from_slice(header);
        }
        tls.write_tls(&mut first)?;
        sock.write_all(&first)?;
        let wire = mmtp::Connection::new(
            mmtp::Role::Client,
            mmtp::Limits::default(),
            Arc::new(mmtp::BodyCodec::default()),
            Arc::new(mmtp::Presets::builtin()),
        );
        let mut device = Device { sock, tls, wire };
        while device.tls.is_handshaking() {
            device.tls.complete_io(&mut device.sock)?;
        }
        Ok(device)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        self.wire.take_output(&mut out);
        self.write_plain(&out)
    }

    pub fn write_plain(&mut self, data: &[u8]) -> io::Result<()> {
        let mut stream = rustls::Stream::new(&mut self.tls, &mut self.sock);
        stream.write_all(data)?;
        stream.flush()
    }

    pub fn hello(&mut self, device_id: &str) {
        let hello = mmtp::Hello {
            device_id: device_id.into(),
            ..mmtp::Hello::default()
        };
        self.wire.send_hello(&hello, 0).unwrap();
        self.flush().unwrap();
    }

    /// The next events the server's bytes carry (automatic answers flushed);
    /// Err once the connection is closed.
    pub fn events(&mut self) -> io::Result<Vec<mmtp::Event>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = {
                let mut stream = rustls::Stream::new(&mut self.tls, &mut self.sock);
                stream.read(&mut buf)?
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut events = Vec::new();
            self.wire
                .receive(&buf[..n], &mut events)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            self.flush()?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// Read until the server closes; the events seen on the way.
    pub fn until_closed(&mut self) -> Vec<mmtp::Event> {
        let mut seen = Vec::new();
        while let Ok(events) = self.events() {
            seen.extend(events);
        }
        seen
    }
}

/// Connect, say HELLO as `device_id`, get ACCEPTed; returns (device, conn id).
pub fn accepted_device(h: &mut Harness, device_id: &str) -> (Device, u64) {
    accepted_device_with(h, device_id, 0)
}

pub fn accepted_device_with(
    h: &mut Harness,
    device_id: &str,
    receive_buffer_bytes: usize,
) -> (Device, u64) {
    let config = client_config(ClientOptions::default());
    let mut device = Device::connect_with(h.port, config, receive_buffer_bytes).unwrap();
    device.hello(device_id);
    let conn = h.hello_of(device_id);
    h.accept(conn, 60);
    let events = device.events().unwrap();
    assert!(
        matches!(events[0], mmtp::Event::HelloAccepted(_)),
        "{events:?}"
    );
    (device, conn)
}
