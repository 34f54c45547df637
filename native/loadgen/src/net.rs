//! What every load generator shares: TLS client configs that verify nothing (the
//! generator must cost far less than the server it measures), sockets bound to a
//! chosen loopback source address, the system-wide monotonic clock, the records of
//! received pushes, and the command thread that reads stdin.

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc};

use mio::net::TcpStream;
use mio::{Token, Waker};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use socket2::{Domain, Socket, Type};

pub const WAKER: Token = Token(usize::MAX);

/// `CLOCK_MONOTONIC` in seconds: the clock Python's `time.monotonic()` reads, so a
/// timestamp a Python generator puts in a push body compares with ours.
pub fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

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

fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![
        rustls::crypto::ring::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
    ];
    // Offered in the order phones offer them (BoringSSL on Android and Apple's stack
    // with AES hardware: AES-128-GCM first); rustls alone lists AES-256-GCM-SHA384
    // first, which makes every server hash its handshake with SHA-384.
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// TLS 1.3 only; `resume`: keep tickets (in this config's own cache) and offer them.
pub fn client_config(alpn: &[u8], resume: bool) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    config.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(4)
    } else {
        rustls::client::Resumption::disabled()
    };
    Arc::new(config)
}

pub fn tls_client(config: &Arc<ClientConfig>) -> ClientConnection {
    let mut tls = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
        .expect("client connection");
    // The publisher writes ahead of the socket; a device's ACKs are tiny anyway.
    tls.set_buffer_limit(None);
    tls
}

/// A non-blocking TCP connection from `source` (port chosen at connect time:
/// `IP_BIND_ADDRESS_NO_PORT`, so tens of thousands of connections need no port search).
pub fn connect_from(source: IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let one: libc::c_int = 1;
    // SAFETY: a plain int option on a socket we own.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// RST instead of FIN on close: no TIME_WAIT piles up on loopback during churn.
pub fn reset_on_close(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(std::time::Duration::ZERO));
}

/// What the devices of one process received: every push counted; unicast pushes
/// (`"seq"` in the body) recorded as (seq, sent at, acked at) on the shared clock.
#[derive(Default)]
pub struct Sink {
    pub pushes: u64,
    pub records: Vec<[f64; 3]>,
}

impl Sink {
    pub fn record(&mut self, body: &[u8], acked_at: f64) {
        self.pushes += 1;
        if let (Some(seq), Some(sent)) = (
            number_after(body, b"\"seq\":"),
            number_after(body, b"\"t\":"),
        ) {
            self.records.push([seq, sent, acked_at]);
        }
    }

    /// Write the records as little-endian f64 triples (Python: `array("d")`).
    pub fn dump(&self, path: &str) -> io::Result<()> {
        let mut data = Vec::with_capacity(self.records.len() * 24);
        for record in &self.records {
            for value in record {
                data.extend_from_slice(&value.to_le_bytes());
            }
        }
        std::fs::write(path, data)
    }
}

/// The JSON number right after `key` in `body` (bodies are ours: compact JSON).
pub fn number_after(body: &[u8], key: &[u8]) -> Option<f64> {
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &body[at..];
    let end = rest
        .iter()
        .position(|&c| !(c.is_ascii_digit() || c == b'.' || c == b'-' || c == b'e' || c == b'+'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Lines from stdin, each waking the poll loop; "quit" when stdin closes.
pub fn command_thread(waker: Arc<Waker>) -> mpsc::Receiver<String> {
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
    inbox
}

pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Lines of a file of whitespace-separated fields.
pub fn read_table(path: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}
