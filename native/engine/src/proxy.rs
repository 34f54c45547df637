//! The PROXY protocol header (v1 text, v2 binary) an L4 load balancer puts before a
//! connection's first byte, read before any TLS work. The Rust twin of
//! `channel/engine/proxyproto.py`: the same acceptance rules and bounds.
//!
//! `parse(buffer, max)` looks at what has arrived so far: `Incomplete` (wait for more),
//! `Done` (the device's address, if the header names one, and how many bytes the header
//! took), or an error naming what is wrong. Bounds are checked as bytes arrive: a v1
//! line is at most 107 bytes, a v2 header at most `max` (refused from its length field).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\x00\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line the protocol allows, CRLF included.
pub const V1_MAX_BYTES: usize = 107;
const V2_FIXED_BYTES: usize = 16;
/// The smallest `max` that still admits a TCP/IPv6 v2 header.
pub const V2_MIN_LIMIT_BYTES: usize = V2_FIXED_BYTES + 36;
/// The longest v2 header there is (its length field is 16 bits).
pub const V2_MAX_HEADER_BYTES: usize = V2_FIXED_BYTES + 65_535;

/// A whole header: the device's address (None for v2 LOCAL, v1 UNKNOWN, v2 UNSPEC:
/// the connection's own peer is used then) and the header's length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub source: Option<SocketAddr>,
    pub len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    Incomplete,
    Done(Header),
}

/// Not a header this node accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, ProxyError> {
    Err(ProxyError(message.into()))
}

/// Parse the start of a connection; see the module doc.
pub fn parse(buffer: &[u8], max_header_bytes: usize) -> Result<Parse, ProxyError> {
    let head = &buffer[..buffer.len().min(12)];
    let v1_head = &buffer[..buffer.len().min(V1_PREFIX.len())];
    if V1_PREFIX.starts_with(v1_head) {
        return parse_v1(buffer);
    }
    if V2_SIGNATURE.starts_with(head) {
        return parse_v2(buffer, max_header_bytes);
    }
    fail("no PROXY protocol header (the balancer must send one)")
}

fn parse_v2(buffer: &[u8], max_header_bytes: usize) -> Result<Parse, ProxyError> {
    if buffer.len() < V2_FIXED_BYTES {
        return Ok(Parse::Incomplete);
    }
    let version_command = buffer[12];
    let family_transport = buffer[13];
    let length = u16::from_be_bytes([buffer[14], buffer[15]]) as usize;
    if version_command >> 4 != 2 {
        return fail(format!(
            "PROXY v2: version {}, expected 2",
            version_command >> 4
        ));
    }
    let total = V2_FIXED_BYTES + length;
    if total > max_header_bytes {
        return fail(format!(
            "PROXY v2 header of {total} bytes is over the limit of {max_header_bytes} \
             (server.proxy_max_header_bytes)"
        ));
    }
    if buffer.len() < total {
        return Ok(Parse::Incomplete);
    }
    let done = |source| {
        Ok(Parse::Done(Header {
            version: 2,
            source,
            len: total,
        }))
    };
    match version_command & 0x0F {
        0x0 => return done(None), // LOCAL: the balancer's own connection
        0x1 => {}
        command => return fail(format!("PROXY v2: unknown command {command}")),
    }
    let (family, transport) = (family_transport >> 4, family_transport & 0x0F);
    if family == 0 {
        return done(None);
    }
    if transport != 1 {
        return fail(format!(
            "PROXY v2: transport {transport} is not a stream (TCP)"
        ));
    }
    let body = &buffer[V2_FIXED_BYTES..total];
    let size = match family {
        1 => 4,
        2 => 16,
        _ => {
            return fail(format!(
                "PROXY v2: address family {family} is not IPv4 or IPv6"
            ))
        }
    };
    if body.len() < 2 * size + 4 {
        return fail(format!(
            "PROXY v2: {} address bytes, need {}",
            body.len(),
            2 * size + 4
        ));
    }
    let ip = if size == 4 {
        IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&body[..16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = u16::from_be_bytes([body[2 * size], body[2 * size + 1]]);
    done(Some(SocketAddr::new(canonical(ip), port)))
}

fn parse_v1(buffer: &[u8]) -> Result<Parse, ProxyError> {
    let window = &buffer[..buffer.len().min(V1_MAX_BYTES)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        if buffer.len() >= V1_MAX_BYTES || window.contains(&b'\n') {
            return fail(format!("PROXY v1: no CRLF within {V1_MAX_BYTES} bytes"));
        }
        return Ok(Parse::Incomplete);
    };
    let Ok(line) = std::str::from_utf8(&buffer[..end]) else {
        return fail("PROXY v1: not ASCII");
    };
    let words: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    if words.len() >= 2 && words[1] == "UNKNOWN" {
        return Ok(Parse::Done(Header {
            version: 1,
            source: None,
            len,
        }));
    }
    if words.len() != 6 || !(words[1] == "TCP4" || words[1] == "TCP6") {
        return fail("PROXY v1: expected 'PROXY TCP4|TCP6 src dst sport dport'");
    }
    let v4 = words[1] == "TCP4";
    let source = v1_address(words[2], v4)?;
    v1_address(words[3], v4)?;
    let port = v1_port(words[4])?;
    v1_port(words[5])?;
    Ok(Parse::Done(Header {
        version: 1,
        source: Some(SocketAddr::new(canonical(source), port)),
        len,
    }))
}

fn v1_address(text: &str, v4: bool) -> Result<IpAddr, ProxyError> {
    let Ok(ip) = text.parse::<IpAddr>() else {
        return fail(format!("PROXY v1: {text:?} is not an IP address"));
    };
    if ip.is_ipv4() != v4 {
        return fail(format!(
            "PROXY v1: {text:?} is not an IPv{} address",
            if v4 { 4 } else { 6 }
        ));
    }
    Ok(ip)
}

fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return fail(format!("PROXY v1: {text:?} is not a port"));
    }
    let port: u32 = text.parse().unwrap_or(u32::MAX);
    if port > 65_535 {
        return fail(format!("PROXY v1: port {port} is over 65535"));
    }
    Ok(port as u16)
}

/// IPv4-mapped IPv6 as IPv4: the node counts a device under one address either way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The balancers a header is believed from (`[server] proxy_trusted`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trusted {
    networks: Vec<(IpAddr, u8)>,
}

impl Trusted {
    /// `"10.0.0.0/24"`, `"2001:db8::/32"`, `"10.0.0.2"` (one address).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut networks = Vec::new();
        for entry in entries {
            let (address, prefix) = entry.split_once('/').unwrap_or((entry.as_str(), ""));
            let ip: IpAddr = address
                .parse()
                .map_err(|_| format!("proxy_trusted: {entry:?} is not an address or network"))?;
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = if prefix.is_empty() {
                bits
            } else {
                prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= bits)
                    .ok_or_else(|| format!("proxy_trusted: {entry:?} has a bad prefix length"))?
            };
            networks.push((canonical(ip), prefix));
        }
        Ok(Trusted { networks })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks
            .iter()
            .any(|(network, prefix)| match (network, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => same_prefix(&n.octets(), &a.octets(), *prefix),
                (IpAddr::V6(n), IpAddr::V6(a)) => same_prefix(&n.octets(), &a.octets(), *prefix),
                _ => false,
            })
    }
}

fn same_prefix(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if network[..whole] != address[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    network[whole] & mask == address[whole] & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(source: [u8; 4], port: u16, command: u8, tlvs: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&source);
        body.extend_from_slice(&[10, 0, 0, 9]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&8443u16.to_be_bytes());
        body.extend_from_slice(tlvs);
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x20 | command, 0x11]);
        header.extend_from_slice(&(body.len() as u16).to_be_bytes());
        header.extend_from_slice(&body);
        header
    }

    fn done(buffer: &[u8]) -> Header {
        match parse(buffer, 1024) {
            Ok(Parse::Done(header)) => header,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_and_v2_name_the_device() {
        let line = b"PROXY TCP4 198.51.100.7 10.0.0.9 51000 8443\r\n\x16\x03";
        let header = done(line);
        assert_eq!(header.source, Some("198.51.100.7:51000".parse().unwrap()));
        assert_eq!(header.len, line.len() - 2);
        let six = done(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n");
        assert_eq!(six.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let binary = v2([198, 51, 100, 7], 51000, 1, b"\x01\x00\x06mmtp/1");
        let header = done(&binary);
        assert_eq!(header.source, Some("198.51.100.7:51000".parse().unwrap()));
        assert_eq!(header.len, binary.len());
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for header in [
            v2([1, 2, 3, 4], 5, 1, b""),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut], 1024), Ok(Parse::Incomplete), "{cut}");
            }
            assert!(matches!(parse(&header, 1024), Ok(Parse::Done(_))));
        }
    }

    #[test]
    fn local_unknown_and_mapped_addresses() {
        assert_eq!(done(&v2([1, 2, 3, 4], 5, 0, b"")).source, None);
        assert_eq!(done(b"PROXY UNKNOWN\r\n").source, None);
        let mapped = done(b"PROXY TCP6 ::ffff:198.51.100.7 ::1 1 2\r\n");
        assert_eq!(mapped.source, Some("198.51.100.7:1".parse().unwrap()));
    }

    #[test]
    fn bad_headers_say_why() {
        for (input, words) in [
            (&b"\x16\x03\x01\x02\x00\x01"[..], "no PROXY protocol header"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected"),
            (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "not an IP address"),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "over 65535"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "no CRLF"),
        ] {
            let error = parse(input, 1024).unwrap_err();
            assert!(error.0.contains(words), "{input:?}: {error:?}");
        }
        let long = [b"PROXY ".to_vec(), vec![b'9'; 120]].concat();
        assert!(parse(&long, 1024).unwrap_err().0.contains("107"));
        let mut oversized = V2_SIGNATURE.to_vec();
        oversized.extend_from_slice(&[0x21, 0x11, 0x04, 0x00]);
        assert!(parse(&oversized, 1024)
            .unwrap_err()
            .0
            .contains("over the limit of 1024"));
        let mut dgram = v2([1, 2, 3, 4], 5, 1, b"");
        dgram[13] = 0x12;
        assert!(parse(&dgram, 1024).unwrap_err().0.contains("not a stream"));
    }

    #[test]
    fn trusted_networks() {
        let trusted = Trusted::parse(&[
            "10.1.0.0/16".to_string(),
            "2001:db8::/32".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        assert!(trusted.contains("10.1.200.3".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(trusted.contains("2001:db8::42".parse().unwrap()));
        assert!(trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("10.2.0.1".parse().unwrap()));
        assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
        assert!(Trusted::parse(&["10.0.0.0/33".to_string()]).is_err());
        assert!(Trusted::parse(&["x".to_string()]).is_err());
    }
}
