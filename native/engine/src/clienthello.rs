//! Read a TLS ClientHello before rustls answers it: the ALPN protocols it offers,
//! whether it asks for early data, and the first pre-shared key identity.
//!
//! rustls fails the handshake with `no_application_protocol` only when the client
//! offers ALPN protocols and none is ours; a client that offers none goes through.
//! MMTP requires the handshake to fail either way (spec section 3.2, RFC 7301
//! section 3.2), so the engine reads the ClientHello first and refuses such a client
//! itself, as the Python engine does (`channel/security/clienthello.py`, whose rules
//! this follows). The PSK identity and the early data request tell the engine which
//! session ticket the client presents before rustls looks it up (TLS early data).
//!
//! Sans-I/O and bounded: `read_client_hello(data)` takes the bytes received so far
//! (TLS records from the start of the connection) and returns `Ok(None)` while the
//! ClientHello is incomplete, `Ok(Some(_))` once it is whole, or `Err` with what is
//! wrong. A ClientHello body above [`MAX_CLIENT_HELLO_BYTES`] is refused: real ones
//! are 200 bytes to ~2 KB, and this bounds what a connection makes us buffer. The
//! grammar is RFC 8446 section 4.1.2.

/// Largest ClientHello handshake message accepted (its body, after the 4-byte header).
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;
/// Most bytes kept while the ClientHello is incomplete: its largest size and room for
/// the headers of the records it may be split into.
pub const MAX_HELLO_BUFFER_BYTES: usize = 2 * MAX_CLIENT_HELLO_BYTES;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_RECORD: u8 = 22;
const MAX_RECORD_FRAGMENT: usize = 1 << 14;
const CLIENT_HELLO: u8 = 1;
const EXTENSION_ALPN: u16 = 16;
const EXTENSION_PRE_SHARED_KEY: u16 = 41;
const EXTENSION_EARLY_DATA: u16 = 42;

/// Alert descriptions (RFC 8446 section 6): what a refused client is told.
pub const ALERT_DECODE_ERROR: u8 = 50;
pub const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// A plaintext fatal alert record (before ServerHello nothing is encrypted).
pub fn fatal_alert(description: u8) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description]
}

/// What the engine needs of a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The ALPN protocols, in the client's order; None: no ALPN extension.
    pub alpn: Option<Vec<Vec<u8>>>,
    /// The client sent the early_data extension (it will send 0-RTT data).
    pub early_data: bool,
    /// The first identity of the pre_shared_key extension (the ticket rustls will
    /// look up first), if any.
    pub psk_identity: Option<Vec<u8>>,
}

impl ClientHello {
    pub fn offers(&self, protocol: &[u8]) -> bool {
        self.alpn
            .as_ref()
            .is_some_and(|names| names.iter().any(|n| n == protocol))
    }
}

/// Why the bytes are not a ClientHello this reader accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// The ClientHello at the start of `data`; None while more bytes are needed.
pub fn read_client_hello(data: &[u8]) -> Result<Option<ClientHello>, Malformed> {
    match handshake_message(data)? {
        None => Ok(None),
        Some(message) => parse(&message).map(Some),
    }
}

/// The ClientHello body, joined from as many handshake records as it spans.
fn handshake_message(data: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
    // Record headers are walked first; nothing is copied until the message is whole.
    let mut fragments: Vec<(usize, usize)> = Vec::new();
    let mut header = [0u8; 4];
    let mut header_len = 0;
    let mut total = 0;
    let mut offset = 0;
    loop {
        if header_len == 4 {
            if header[0] != CLIENT_HELLO {
                return Err(Malformed(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let length = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            if length > MAX_CLIENT_HELLO_BYTES {
                return Err(Malformed("ClientHello too large"));
            }
            if total >= 4 + length {
                let mut joined = Vec::with_capacity(total);
                for (start, size) in &fragments {
                    joined.extend_from_slice(&data[*start..start + size]);
                }
                joined.truncate(4 + length);
                joined.drain(..4);
                return Ok(Some(joined));
            }
        }
        if data.len() - offset < RECORD_HEADER {
            return Ok(None);
        }
        if data[offset] != HANDSHAKE_RECORD || data[offset + 1] != 3 {
            return Err(Malformed("not a TLS handshake record"));
        }
        let size = u16::from_be_bytes([data[offset + 3], data[offset + 4]]) as usize;
        if size == 0 || size > MAX_RECORD_FRAGMENT {
            return Err(Malformed("record of a bad size"));
        }
        let start = offset + RECORD_HEADER;
        if data.len() - start < size {
            return Ok(None);
        }
        fragments.push((start, size));
        while header_len < 4 && header_len < total + size {
            header[header_len] = data[start + header_len - total];
            header_len += 1;
        }
        total += size;
        offset = start + size;
    }
}

/// A cursor over bytes; every read checks the bounds.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, size: usize) -> Result<&'a [u8], Malformed> {
        if size > self.data.len() {
            return Err(Malformed("ClientHello field runs past its end"));
        }
        let (chunk, rest) = self.data.split_at(size);
        self.data = rest;
        Ok(chunk)
    }

    fn number(&mut self, size: usize) -> Result<usize, Malformed> {
        Ok(self
            .take(size)?
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize))
    }

    fn vector(&mut self, length_size: usize) -> Result<&'a [u8], Malformed> {
        let length = self.number(length_size)?;
        self.take(length)
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn parse(message: &[u8]) -> Result<ClientHello, Malformed> {
    let mut hello = Reader { data: message };
    hello.take(2 + 32)?; // legacy_version, random
    if hello.vector(1)?.len() > 32 {
        return Err(Malformed("legacy_session_id longer than 32 bytes"));
    }
    let suites = hello.vector(2)?;
    if suites.is_empty() || suites.len() % 2 == 1 {
        return Err(Malformed("cipher_suites empty or of odd length"));
    }
    if hello.vector(1)?.is_empty() {
        return Err(Malformed("no legacy_compression_methods"));
    }
    let mut result = ClientHello::default();
    if hello.is_empty() {
        return Ok(result); // no extensions at all (no TLS 1.3 client does this)
    }
    let mut extensions = Reader {
        data: hello.vector(2)?,
    };
    if !hello.is_empty() {
        return Err(Malformed("bytes after the extensions"));
    }
    let mut seen_psk = false;
    while !extensions.is_empty() {
        let kind = extensions.number(2)? as u16;
        let body = extensions.vector(2)?;
        if seen_psk {
            return Err(Malformed("pre_shared_key is not the last extension"));
        }
        match kind {
            EXTENSION_ALPN => {
                if result.alpn.is_some() {
                    return Err(Malformed("two ALPN extensions"));
                }
                result.alpn = Some(protocol_names(body)?);
            }
            EXTENSION_EARLY_DATA => {
                if result.early_data {
                    return Err(Malformed("two early_data extensions"));
                }
                result.early_data = true;
            }
            EXTENSION_PRE_SHARED_KEY => {
                seen_psk = true;
                result.psk_identity = Some(first_identity(body)?);
            }
            _ => {}
        }
    }
    Ok(result)
}

fn protocol_names(body: &[u8]) -> Result<Vec<Vec<u8>>, Malformed> {
    let mut reader = Reader { data: body };
    let mut names_reader = Reader {
        data: reader.vector(2)?,
    };
    if !reader.is_empty() {
        return Err(Malformed("bytes after the ALPN protocol list"));
    }
    let mut names = Vec::new();
    while !names_reader.is_empty() {
        let name = names_reader.vector(1)?;
        if name.is_empty() {
            return Err(Malformed("empty ALPN protocol name"));
        }
        names.push(name.to_vec());
    }
    if names.is_empty() {
        return Err(Malformed("empty ALPN protocol list"));
    }
    Ok(names)
}

fn first_identity(body: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut reader = Reader { data: body };
    let mut identities = Reader {
        data: reader.vector(2)?,
    };
    let binders = reader.vector(2)?;
    if !reader.is_empty() || binders.is_empty() {
        return Err(Malformed("bad pre_shared_key binders"));
    }
    let identity = identities.vector(2)?;
    identities.take(4)?; // obfuscated_ticket_age
    if identity.is_empty() {
        return Err(Malformed("empty pre_shared_key identity"));
    }
    Ok(identity.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with these extensions ((type, body) pairs).
    fn body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.push(32);
        b.extend_from_slice(&[1; 32]);
        b.extend_from_slice(&[0, 2, 0x13, 0x01]);
        b.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        b.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        b.extend_from_slice(&ext);
        b
    }

    /// `body` as a handshake message in records of at most `fragment` bytes.
    fn records(body: &[u8], fragment: usize) -> Vec<u8> {
        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(body);
        let mut out = Vec::new();
        for chunk in message.chunks(fragment) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn alpn(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in names {
            list.push(name.len() as u8);
            list.extend_from_slice(name);
        }
        let mut b = (list.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&list);
        b
    }

    fn psk(identity: &[u8]) -> Vec<u8> {
        let mut identities = (identity.len() as u16).to_be_bytes().to_vec();
        identities.extend_from_slice(identity);
        identities.extend_from_slice(&[0, 0, 0, 9]);
        let mut b = (identities.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&identities);
        b.extend_from_slice(&[0, 33, 32]);
        b.extend_from_slice(&[5; 32]);
        b
    }

    #[test]
    fn alpn_early_data_and_psk_identity() {
        let hello = body(&[
            (0, vec![]),
            (EXTENSION_ALPN, alpn(&[b"h2", b"mmtp/1"])),
            (EXTENSION_EARLY_DATA, vec![]),
            (EXTENSION_PRE_SHARED_KEY, psk(b"ticket-id")),
        ]);
        let parsed = read_client_hello(&records(&hello, 1 << 14))
            .unwrap()
            .unwrap();
        assert!(parsed.offers(b"mmtp/1"));
        assert!(!parsed.offers(b"mmtp/2"));
        assert!(parsed.early_data);
        assert_eq!(parsed.psk_identity.as_deref(), Some(&b"ticket-id"[..]));
        let bare = read_client_hello(&records(&body(&[]), 100))
            .unwrap()
            .unwrap();
        assert_eq!(bare, ClientHello::default());
        assert!(!bare.offers(b"mmtp/1"));
    }

    #[test]
    fn incomplete_until_the_last_byte_in_any_split() {
        let hello = body(&[(EXTENSION_ALPN, alpn(&[b"mmtp/1"]))]);
        for fragment in [1, 2, 3, 4, 5, 17, 1 << 14] {
            let bytes = records(&hello, fragment);
            for cut in 0..bytes.len() {
                assert_eq!(
                    read_client_hello(&bytes[..cut]),
                    Ok(None),
                    "{fragment}/{cut}"
                );
            }
            let whole = read_client_hello(&bytes).unwrap().unwrap();
            assert!(whole.offers(b"mmtp/1"), "fragment {fragment}");
            // What follows the ClientHello (early data records) is not its business.
            let mut more = bytes.clone();
            more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
            assert_eq!(read_client_hello(&more).unwrap().unwrap(), whole);
        }
    }

    #[test]
    fn malformed_inputs_name_what_is_wrong() {
        let good = body(&[(EXTENSION_ALPN, alpn(&[b"mmtp/1"]))]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                "not a TLS handshake record",
            ),
            (vec![22, 3, 1, 0, 0], "bad size"),
            (vec![22, 3, 1, 0x40, 1], "bad size"),
            (
                {
                    let mut r = records(&good, 1 << 14);
                    r[5] = 2; // a ServerHello
                    r
                },
                "not a ClientHello",
            ),
            (
                {
                    let mut r = records(&good, 1 << 14);
                    r[6..9].copy_from_slice(&[0, 0x40, 1]);
                    r
                },
                "too large",
            ),
            (
                records(
                    &body(&[
                        (EXTENSION_ALPN, alpn(&[b"a"])),
                        (EXTENSION_ALPN, alpn(&[b"b"])),
                    ]),
                    1 << 14,
                ),
                "two ALPN",
            ),
            (
                records(&body(&[(EXTENSION_ALPN, vec![0, 0])]), 1 << 14),
                "empty ALPN protocol list",
            ),
            (
                records(&body(&[(EXTENSION_ALPN, vec![0, 1, 0])]), 1 << 14),
                "empty ALPN protocol name",
            ),
            (
                records(
                    &body(&[
                        (EXTENSION_PRE_SHARED_KEY, psk(b"t")),
                        (EXTENSION_ALPN, alpn(&[b"mmtp/1"])),
                    ]),
                    1 << 14,
                ),
                "not the last",
            ),
            (
                records(
                    &body(&[(EXTENSION_PRE_SHARED_KEY, vec![0, 0, 0, 0])]),
                    1 << 14,
                ),
                "binders",
            ),
            (
                records(
                    &body(&[(EXTENSION_PRE_SHARED_KEY, vec![0, 0, 0, 2, 1, 0])]),
                    1 << 14,
                ),
                "past its end",
            ),
            (
                {
                    let mut b = good.clone();
                    b.push(0);
                    records(&b, 1 << 14)
                },
                "after the extensions",
            ),
        ];
        for (bytes, expected) in cases {
            let error = read_client_hello(&bytes).unwrap_err();
            assert!(
                error.0.contains(expected),
                "{error:?} should say {expected}"
            );
        }
    }

    #[test]
    fn alerts_are_plaintext_fatal_records() {
        assert_eq!(
            fatal_alert(ALERT_NO_APPLICATION_PROTOCOL),
            [21, 3, 3, 0, 2, 2, 120]
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Random bytes: never a panic; a whole answer only from a whole record set.
            #[test]
            fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = read_client_hello(&data);
            }

            /// Valid ClientHellos with bytes flipped, cut or inserted: never a panic,
            /// and an unchanged one still parses whatever its record split.
            #[test]
            fn mutated_hellos_never_panic(
                names in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..12), 1..4),
                identity in proptest::collection::vec(any::<u8>(), 1..80),
                fragment in 1usize..300,
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                cut in any::<usize>(),
            ) {
                let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
                let hello = body(&[
                    (EXTENSION_ALPN, alpn(&refs)),
                    (EXTENSION_EARLY_DATA, vec![]),
                    (EXTENSION_PRE_SHARED_KEY, psk(&identity)),
                ]);
                let bytes = records(&hello, fragment);
                let parsed = read_client_hello(&bytes).unwrap().unwrap();
                prop_assert_eq!(parsed.alpn, Some(names.clone()));
                prop_assert_eq!(parsed.psk_identity, Some(identity.clone()));
                let mut mutated = bytes.clone();
                for (at, byte) in flips {
                    let at = at % mutated.len();
                    mutated[at] ^= byte | 1;
                }
                let _ = read_client_hello(&mutated);
                let _ = read_client_hello(&mutated[..cut % (mutated.len() + 1)]);
            }
        }
    }
}
