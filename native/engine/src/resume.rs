//! MMTP resume tickets (the `resume_ticket` of HELLO / HELLO_ACK), sealed and opened
//! natively: the twin of `channel/security/tickets.py` (`TicketSealer`), which keeps the
//! key ring, the nonces and every policy check (expiry, key ids, field rules) and calls
//! these for the byte work. A resumed handshake opens one ticket and seals the next;
//! done here, that costs ~2 µs instead of ~15 µs of Python per handshake.
//!
//! Layout (the same bytes as the Python twin; tickets cross nodes and engines):
//!
//! ```text
//! key id (1) | nonce (12) | ChaCha20-Poly1305(plaintext) | tag (16)
//! plaintext = session_id (8) | expires_at (u32 BE) | auth_expires_at - expires_at (LEB128)
//!           | len(user_id) (1) | user_id | scopes joined by one space (ASCII)
//! associated data = "mmtp-ticket/1" 0x00 | key id | len(device_id) (1) | device_id
//!                 | len(app_id) (1) | app_id
//! ```

use mmtp::varint::{decode_varint, encode_varint, MAX_VARINT};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 12;
pub const SESSION_ID_BYTES: usize = 8;
const TAG_BYTES: usize = 16;
const AD_LABEL: &[u8] = b"mmtp-ticket/1\x00";

/// What a ticket carries (device and app id travel in the HELLO, bound as associated data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketFields {
    pub session_id: [u8; SESSION_ID_BYTES],
    pub expires_at: u32,
    pub auth_expires_at: u64,
    pub user_id: String,
    /// Scope tokens joined by one space (no scope holds a space).
    pub scopes: String,
}

/// Why a ticket could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Wrong key, tampered, or sealed for another device or app.
    Authentication,
    /// Authentic, yet its plaintext does not parse.
    Malformed,
}

fn associated_data(key_id: u8, device_id: &str, app_id: &str) -> Result<Vec<u8>, &'static str> {
    let (device, app) = (device_id.as_bytes(), app_id.as_bytes());
    if device.len() > 255 || app.len() > 255 {
        return Err("device_id and app_id must be at most 255 UTF-8 bytes");
    }
    let mut ad = Vec::with_capacity(AD_LABEL.len() + 3 + device.len() + app.len());
    ad.extend_from_slice(AD_LABEL);
    ad.extend_from_slice(&[key_id, device.len() as u8]);
    ad.extend_from_slice(device);
    ad.push(app.len() as u8);
    ad.extend_from_slice(app);
    Ok(ad)
}

fn cipher(key: &[u8]) -> Result<LessSafeKey, &'static str> {
    if key.len() != KEY_BYTES {
        return Err("ticket key must be 32 bytes");
    }
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| "bad ticket key")?;
    Ok(LessSafeKey::new(unbound))
}

/// Seal `fields` for this device and app under `key` (id `key_id`) with `nonce`, which
/// must never repeat under one key (the caller draws it at random).
pub fn seal(
    key: &[u8],
    key_id: u8,
    nonce: &[u8],
    fields: &TicketFields,
    device_id: &str,
    app_id: &str,
) -> Result<Vec<u8>, &'static str> {
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| "nonce must be 12 bytes")?;
    let delta = fields
        .auth_expires_at
        .checked_sub(u64::from(fields.expires_at))
        .ok_or("expires_at is after auth_expires_at")?;
    if delta > MAX_VARINT {
        return Err("auth_expires_at is too far after expires_at");
    }
    let user = fields.user_id.as_bytes();
    if user.len() > 255 {
        return Err("user_id must be at most 255 UTF-8 bytes");
    }
    if !fields.scopes.is_ascii() {
        return Err("scopes must be ASCII");
    }
    let ad = associated_data(key_id, device_id, app_id)?;
    let sealer = cipher(key)?;
    let mut out = Vec::with_capacity(
        1 + NONCE_BYTES
            + SESSION_ID_BYTES
            + 4
            + 8
            + 1
            + user.len()
            + fields.scopes.len()
            + TAG_BYTES,
    );
    out.push(key_id);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(&fields.session_id);
    out.extend_from_slice(&fields.expires_at.to_be_bytes());
    encode_varint(&mut out, delta);
    out.push(user.len() as u8);
    out.extend_from_slice(user);
    out.extend_from_slice(fields.scopes.as_bytes());
    let tag = sealer
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&ad),
            &mut out[start..],
        )
        .map_err(|_| "ticket too large to seal")?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Open `data` (the whole ticket, key id first) with `key`, the key its first byte names
/// (the caller picks it from its ring and checks the ticket's size and expiry).
pub fn open(
    key: &[u8],
    data: &[u8],
    device_id: &str,
    app_id: &str,
) -> Result<TicketFields, OpenError> {
    if data.len() < 1 + NONCE_BYTES + TAG_BYTES {
        return Err(OpenError::Malformed);
    }
    let ad = associated_data(data[0], device_id, app_id).map_err(|_| OpenError::Authentication)?;
    let opener = cipher(key).map_err(|_| OpenError::Authentication)?;
    let nonce: [u8; NONCE_BYTES] = data[1..1 + NONCE_BYTES].try_into().expect("12 bytes");
    let mut sealed = data[1 + NONCE_BYTES..].to_vec();
    let plaintext = opener
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&ad),
            &mut sealed,
        )
        .map_err(|_| OpenError::Authentication)?;
    decode_plaintext(plaintext).ok_or(OpenError::Malformed)
}

fn decode_plaintext(plaintext: &[u8]) -> Option<TicketFields> {
    let session_id: [u8; SESSION_ID_BYTES] = plaintext.get(..SESSION_ID_BYTES)?.try_into().ok()?;
    let expires_at = u32::from_be_bytes(plaintext.get(8..12)?.try_into().ok()?);
    let (delta, offset) = decode_varint(plaintext, 12).ok()?;
    let user_len = *plaintext.get(offset)? as usize;
    let user_end = offset + 1 + user_len;
    let user_id = std::str::from_utf8(plaintext.get(offset + 1..user_end)?).ok()?;
    let scopes = plaintext.get(user_end..)?;
    if !scopes.is_ascii() {
        return None;
    }
    Some(TicketFields {
        session_id,
        expires_at,
        auth_expires_at: u64::from(expires_at) + delta,
        user_id: user_id.to_owned(),
        scopes: String::from_utf8(scopes.to_vec()).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> TicketFields {
        TicketFields {
            session_id: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
            expires_at: 1_800_000_000,
            auth_expires_at: 1_800_003_600,
            user_id: "user-42".into(),
            scopes: "push rpc".into(),
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let key = [7u8; 32];
        let sealed = seal(&key, 3, &[9u8; 12], &fields(), "dev-1", "app").unwrap();
        assert_eq!(sealed[0], 3);
        assert_eq!(&sealed[1..13], &[9u8; 12]);
        // session id 8 + expiry 4 + delta 2 + user 1+7 + scopes 8, tag 16
        assert_eq!(sealed.len(), 13 + 8 + 4 + 2 + 8 + 8 + 16);
        assert_eq!(open(&key, &sealed, "dev-1", "app").unwrap(), fields());
        assert_eq!(
            open(&key, &sealed, "dev-2", "app"),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            open(&key, &sealed, "dev-1", "app2"),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            open(&[8u8; 32], &sealed, "dev-1", "app"),
            Err(OpenError::Authentication)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(open(&key, &bad, "dev-1", "app").is_err(), "byte {i}");
        }
    }

    #[test]
    fn refuses_what_python_refuses() {
        let key = [7u8; 32];
        let mut f = fields();
        f.auth_expires_at = u64::from(f.expires_at) - 1;
        assert!(seal(&key, 1, &[0; 12], &f, "d", "a").is_err());
        let mut f = fields();
        f.user_id = "u".repeat(256);
        assert!(seal(&key, 1, &[0; 12], &f, "d", "a").is_err());
        assert!(seal(&key, 1, &[0; 12], &fields(), &"d".repeat(256), "a").is_err());
        assert!(seal(&key, 1, &[0; 11], &fields(), "d", "a").is_err());
        assert!(seal(&key[..31], 1, &[0; 12], &fields(), "d", "a").is_err());
        assert_eq!(open(&key, &[1; 20], "d", "a"), Err(OpenError::Malformed));
    }

    #[test]
    fn authentic_garbage_is_malformed() {
        // Sealed by hand: a plaintext that stops inside the user id.
        let key = [5u8; 32];
        let ad = associated_data(1, "d", "a").unwrap();
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&[0, 9, b'x']);
        let tag = cipher(&key)
            .unwrap()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&ad),
                &mut body,
            )
            .unwrap();
        let mut data = vec![1u8];
        data.extend_from_slice(&[0; 12]);
        data.extend_from_slice(&body);
        data.extend_from_slice(tag.as_ref());
        assert_eq!(open(&key, &data, "d", "a"), Err(OpenError::Malformed));
    }
}
