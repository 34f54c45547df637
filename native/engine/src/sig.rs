//! Ed25519 verification for the gateway's device tokens (`channel/security/tokens.py`).
//!
//! The token check is the largest cost of a full handshake done in Python: ring's
//! verification takes ~50 µs of CPU here where the `cryptography` package's (OpenSSL)
//! takes ~120 µs. Plain RFC 8032 verification (ring rejects non-canonical `S`, as
//! OpenSSL does); keys are the token issuer's own.

use ring::signature::{UnparsedPublicKey, ED25519};

pub const PUBLIC_KEY_BYTES: usize = 32;
pub const SIGNATURE_BYTES: usize = 64;

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`. Keys and
/// signatures of the wrong length never verify.
pub fn ed25519_verify(public_key: &[u8], signature: &[u8], message: &[u8]) -> bool {
    if public_key.len() != PUBLIC_KEY_BYTES || signature.len() != SIGNATURE_BYTES {
        return false;
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn pair() -> Ed25519KeyPair {
        // RFC 8032 test vector 1's seed.
        let seed = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
    }

    #[test]
    fn verifies_its_own_signature_and_nothing_else() {
        let key = pair();
        let public = key.public_key().as_ref();
        let message = b"\x01\x01token claims";
        let signature = key.sign(message);
        assert!(ed25519_verify(public, signature.as_ref(), message));
        assert!(!ed25519_verify(
            public,
            signature.as_ref(),
            b"\x01\x01token claimz"
        ));
        let mut bad = signature.as_ref().to_vec();
        bad[10] ^= 1;
        assert!(!ed25519_verify(public, &bad, message));
        assert!(!ed25519_verify(&public[..31], signature.as_ref(), message));
        assert!(!ed25519_verify(public, &signature.as_ref()[..63], message));
    }

    #[test]
    fn rfc8032_vector_1() {
        let key = pair();
        let signature = key.sign(b"");
        assert_eq!(
            &signature.as_ref()[..8],
            &[0xe5, 0x56, 0x43, 0x00, 0xc3, 0x60, 0xac, 0x72]
        );
        assert!(ed25519_verify(
            key.public_key().as_ref(),
            signature.as_ref(),
            b""
        ));
    }
}
