//! rustls server configurations: TLS 1.3 only, X25519 and P-256 key exchange, one
//! session ticket per handshake sealed by the node's key ring, optional client
//! certificates, and the common name of a verified client certificate.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use crate::singleuse::{SingleUseStore, StoredTickets};
use crate::ticketer::KeyRingTicketer;

/// ALPN of MMTP listeners; a device that negotiates anything else is refused.
pub const MMTP_ALPN: &[u8] = b"mmtp/1";
/// The ALPN id an MQTT client may offer (none at all is fine too).
pub const MQTT_ALPN: &[u8] = b"mqtt";

/// Certificate, key and (optional) client CA, as PEM, from Python.
#[derive(Clone, Debug, Default)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    pub require_client_cert: bool,
}

/// One configuration per listener kind (they differ only in ALPN).
#[derive(Clone, Debug)]
pub struct ServerConfigs {
    pub mmtp: Arc<ServerConfig>,
    pub mqtt: Arc<ServerConfig>,
}

/// ring, restricted to TLS 1.3 suites and the X25519 and P-256 groups, with
/// aws-lc-rs's X25519: ring's costs ~100 µs per handshake (key pair and agreement)
/// here, aws-lc's (s2n-bignum) ~75 µs; the rest (signatures, AEAD, hashes) is as fast
/// in ring, which builds in half the time.
pub fn provider() -> Arc<CryptoProvider> {
    // Deprecated in rustls 0.23.48 for lacking post-quantum key exchange; we want
    // classical X25519 / P-256.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
    ];
    provider
        .cipher_suites
        .retain(|suite| suite.version() == &rustls::version::TLS13);
    Arc::new(provider)
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in the PEM"));
    }
    Ok(certs)
}

/// TLS 1.3 early data on the MMTP listeners (`singleuse.rs`).
#[derive(Clone, Debug)]
pub struct EarlyData {
    pub store: Arc<SingleUseStore>,
    /// Largest early data accepted per connection (plaintext bytes).
    pub max_bytes: u32,
}

/// Build the listeners' configurations; errors say which input is wrong.
pub fn server_configs(
    material: &TlsMaterial,
    ticketer: Arc<KeyRingTicketer>,
    early: Option<&EarlyData>,
) -> Result<ServerConfigs, String> {
    let provider = provider();
    let chain = certificates(&material.cert_pem, "tls cert")?;
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
        .map_err(|e| format!("tls key: not a PEM private key ({e})"))?;
    let verifier = match &material.client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(pem, "tls client_ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls client_ca: unusable CA certificate ({e})"))?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = if material.require_client_cert {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder.build().map_err(|e| format!("tls client_ca: {e}"))?
        }
        None if material.require_client_cert => {
            return Err(
                "require_client_cert needs client_ca: the CA that signs device certs".into(),
            )
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("tls: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls cert/key: {e}"))?;
    config.ticketer = ticketer;
    // Stateless tickets only: no per-session memory on the server, any node resumes.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 1;
    config.max_early_data_size = 0;
    let mut mqtt = config.clone();
    // A client offering `mqtt` gets it selected (as on the Python engine); one offering
    // only other protocols is refused before rustls sees it (engine/input.rs).
    mqtt.alpn_protocols = vec![MQTT_ALPN.to_vec()];
    let mqtt = Arc::new(mqtt);
    config.alpn_protocols = vec![MMTP_ALPN.to_vec()];
    if let Some(early) = early {
        // Early data needs stored tickets (singleuse.rs): the fleet's single-use store
        // instead of sealed tickets. MQTT listeners keep sealed tickets, no early data.
        config.ticketer = Arc::new(StoredTickets);
        config.session_storage = early.store.clone();
        config.max_early_data_size = early.max_bytes;
        // Answers to early requests go out with the server's first flight, not a round
        // trip later; rustls sends none before a client certificate is checked.
        config.send_half_rtt_data = true;
    }
    Ok(ServerConfigs {
        mmtp: Arc::new(config),
        mqtt,
    })
}

// ------------------------------------------------------------------ common name

/// One DER element: (tag, contents, rest).
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7F) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (ASCII in practice)
        0x0C | 0x13 | 0x16 | 0x14 => String::from_utf8(value.to_vec()).ok(),
        // BMPString: UTF-16BE
        0x1E if value.len() % 2 == 0 => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// The first common name of a certificate's subject (what Python's
/// `peer_certificate_identity` reads), or None. Only called on certificates
/// rustls has verified against the client CA.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xA0 {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (tag, mut subject, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    while !subject.is_empty() {
        let (tag, mut rdn, next) = element(subject)?;
        subject = next;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attribute, next) = element(rdn)?;
            rdn = next;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = element(attribute)?;
            if tag == OID && oid == OID_COMMON_NAME {
                let (tag, value, _) = element(value)?;
                return decode_string(tag, value);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/certs");

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{CERTS}/{name}")).unwrap()
    }

    fn der(name: &str) -> Vec<u8> {
        CertificateDer::pem_slice_iter(&read(name))
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    fn material() -> TlsMaterial {
        TlsMaterial {
            cert_pem: read("server.pem"),
            key_pem: read("server.key"),
            ..TlsMaterial::default()
        }
    }

    #[test]
    fn common_names_of_the_fixtures() {
        assert_eq!(
            common_name(&der("client.pem")).as_deref(),
            Some("device-cn-1")
        );
        assert_eq!(
            common_name(&der("server.pem")).as_deref(),
            Some("localhost")
        );
        assert_eq!(
            common_name(&der("ca.pem")).as_deref(),
            Some("Channel engine test CA")
        );
    }

    #[test]
    fn common_name_of_garbage_is_none() {
        let good = der("client.pem");
        for cut in [0, 1, 2, 10, good.len() / 2] {
            assert_eq!(common_name(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(b"not der at all"), None);
    }

    #[test]
    fn bmp_strings_decode() {
        assert_eq!(
            decode_string(0x1E, &[0, b'a', 0, b'b']).as_deref(),
            Some("ab")
        );
        assert_eq!(decode_string(0x1E, &[0]), None);
        assert_eq!(decode_string(0x04, b"x"), None);
    }

    #[test]
    fn configs_are_tls13_with_one_ticket_and_alpn_on_mmtp_only() {
        let configs = server_configs(&material(), KeyRingTicketer::random(60), None).unwrap();
        assert_eq!(configs.mmtp.alpn_protocols, vec![b"mmtp/1".to_vec()]);
        assert_eq!(configs.mqtt.alpn_protocols, vec![b"mqtt".to_vec()]);
        assert_eq!(configs.mmtp.send_tls13_tickets, 1);
        assert!(configs.mmtp.ticketer.enabled());
        assert_eq!(configs.mmtp.max_early_data_size, 0);
        let provider = provider();
        assert!(provider
            .cipher_suites
            .iter()
            .all(|s| s.version() == &rustls::version::TLS13));
        assert_eq!(provider.kx_groups.len(), 2);
    }

    #[test]
    fn early_data_configs_store_tickets_on_mmtp_only() {
        let ticketer = KeyRingTicketer::random(60);
        let early = EarlyData {
            store: SingleUseStore::new(ticketer.clone()),
            max_bytes: 16384,
        };
        let configs = server_configs(&material(), ticketer, Some(&early)).unwrap();
        assert!(!configs.mmtp.ticketer.enabled(), "stored tickets");
        assert_eq!(configs.mmtp.max_early_data_size, 16384);
        assert!(configs.mmtp.send_half_rtt_data);
        assert!(configs.mqtt.ticketer.enabled(), "MQTT keeps sealed tickets");
        assert_eq!(configs.mqtt.max_early_data_size, 0);
    }

    #[test]
    fn bad_inputs_name_what_is_wrong() {
        let ticketer = KeyRingTicketer::random(60);
        let cases = [
            (
                TlsMaterial {
                    cert_pem: b"junk".to_vec(),
                    ..material()
                },
                "tls cert",
            ),
            (
                TlsMaterial {
                    key_pem: b"junk".to_vec(),
                    ..material()
                },
                "tls key",
            ),
            (
                TlsMaterial {
                    key_pem: read("client.key"),
                    ..material()
                },
                "tls cert/key",
            ),
            (
                TlsMaterial {
                    client_ca_pem: Some(b"junk".to_vec()),
                    ..material()
                },
                "client_ca",
            ),
            (
                TlsMaterial {
                    require_client_cert: true,
                    ..material()
                },
                "require_client_cert",
            ),
        ];
        for (material, expected) in cases {
            let error = server_configs(&material, ticketer.clone(), None).unwrap_err();
            assert!(
                error.contains(expected),
                "{error:?} should mention {expected}"
            );
        }
    }

    #[test]
    fn client_ca_builds() {
        let material = TlsMaterial {
            client_ca_pem: Some(read("client-ca.pem")),
            require_client_cert: true,
            ..material()
        };
        server_configs(&material, KeyRingTicketer::random(60), None).unwrap();
    }
}
