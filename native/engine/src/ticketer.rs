//! TLS 1.3 session tickets sealed with the node's ticket keys, so a device resumes
//! its TLS session on any worker and any node that holds the same keys.
//!
//! rustls's own `Ticketer` rotates random keys per process; ours takes its keys
//! from Python (derived from the fleet's ticket secret) and can rotate them live:
//! the current key seals, the current and the accepted previous keys open.
//!
//! Ticket layout: `key id (1) | nonce (12) | ChaCha20-Poly1305(state) | tag (16)`,
//! with `"channel-tls-ticket/1" | key id` as associated data. Stateless tickets
//! mean TLS early data stays off (rustls accepts it only with a single-use store).

use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

pub const TICKET_KEY_BYTES: usize = 32;

/// (key id, 32-byte key) pairs.
pub type TicketKeys = Vec<(u8, Vec<u8>)>;
const TAG_BYTES: usize = 16;
const AD_LABEL: &[u8] = b"channel-tls-ticket/1";

struct Keys {
    current: u8,
    /// (id, key); the current one included.
    accepted: Vec<(u8, LessSafeKey)>,
}

/// Seals and opens TLS session tickets with a key ring shared by every engine.
pub struct KeyRingTicketer {
    keys: RwLock<Keys>,
    lifetime_s: u32,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyRingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<u8> = keys.accepted.iter().map(|(id, _)| *id).collect();
        f.debug_struct("KeyRingTicketer")
            .field("current", &keys.current)
            .field("accepted", &ids)
            .finish()
    }
}

fn build(current: u8, keys: &[(u8, Vec<u8>)]) -> Result<Keys, String> {
    let mut accepted: Vec<(u8, LessSafeKey)> = Vec::with_capacity(keys.len());
    for (id, key) in keys {
        if key.len() != TICKET_KEY_BYTES {
            return Err(format!(
                "ticket key {id} is {} bytes, expected {TICKET_KEY_BYTES}",
                key.len()
            ));
        }
        if accepted.iter().any(|(other, _)| other == id) {
            return Err(format!("ticket key id {id} is given twice"));
        }
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| format!("ticket key {id} is not a ChaCha20-Poly1305 key"))?;
        accepted.push((*id, LessSafeKey::new(unbound)));
    }
    if !accepted.iter().any(|(id, _)| *id == current) {
        return Err(format!(
            "the current ticket key id {current} is not among the keys"
        ));
    }
    Ok(Keys { current, accepted })
}

impl KeyRingTicketer {
    /// A ticketer sealing with `current` and opening with any of `keys` (id, 32 bytes).
    pub fn new(current: u8, keys: &[(u8, Vec<u8>)], lifetime_s: u32) -> Result<Arc<Self>, String> {
        Ok(Arc::new(KeyRingTicketer {
            keys: RwLock::new(build(current, keys)?),
            lifetime_s,
            rng: SystemRandom::new(),
        }))
    }

    /// A single random key: tickets resume only on this engine.
    pub fn random(lifetime_s: u32) -> Arc<Self> {
        let rng = SystemRandom::new();
        let mut key = vec![0u8; TICKET_KEY_BYTES];
        rng.fill(&mut key).expect("the system random source works");
        KeyRingTicketer::new(0, &[(0, key)], lifetime_s).expect("one valid key")
    }

    /// Rotate: seal with `current` from now on, open with any of `keys`.
    /// On error the ring is unchanged.
    pub fn set_keys(&self, current: u8, keys: &[(u8, Vec<u8>)]) -> Result<(), String> {
        let built = build(current, keys)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = built;
        Ok(())
    }

    pub fn current_key_id(&self) -> u8 {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).current
    }
}

fn associated_data(key_id: u8) -> [u8; AD_LABEL.len() + 1] {
    let mut ad = [0u8; AD_LABEL.len() + 1];
    ad[..AD_LABEL.len()].copy_from_slice(AD_LABEL);
    ad[AD_LABEL.len()] = key_id;
    ad
}

impl ProducesTickets for KeyRingTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key_id = keys.current;
        let (_, key) = keys.accepted.iter().find(|(id, _)| *id == key_id)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(1 + NONCE_LEN + plain.len() + TAG_BYTES);
        ticket.push(key_id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(key_id)),
                &mut ticket[1 + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < 1 + NONCE_LEN + TAG_BYTES {
            return None;
        }
        let key_id = ticket[0];
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let (_, key) = keys.accepted.iter().find(|(id, _)| *id == key_id)?;
        let nonce = Nonce::try_assume_unique_for_key(&ticket[1..1 + NONCE_LEN]).ok()?;
        let mut sealed = ticket[1 + NONCE_LEN..].to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(associated_data(key_id)), &mut sealed)
            .ok()?
            .len();
        sealed.truncate(plain_len);
        Some(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Vec<u8> {
        vec![byte; TICKET_KEY_BYTES]
    }

    #[test]
    fn another_ticketer_with_the_same_keys_opens_the_ticket() {
        let a = KeyRingTicketer::new(1, &[(1, key(7))], 3600).unwrap();
        let b = KeyRingTicketer::new(1, &[(1, key(7))], 3600).unwrap();
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(ticket[0], 1);
        assert_eq!(ticket.len(), 1 + 12 + 13 + 16);
        assert_eq!(b.decrypt(&ticket).unwrap(), b"session state");
    }

    #[test]
    fn rotation_keeps_accepted_keys_opening() {
        let ring = KeyRingTicketer::new(1, &[(1, key(1))], 3600).unwrap();
        let old = ring.encrypt(b"old").unwrap();
        ring.set_keys(2, &[(1, key(1)), (2, key(2))]).unwrap();
        let new = ring.encrypt(b"new").unwrap();
        assert_eq!(new[0], 2, "the new current key seals");
        assert_eq!(
            ring.decrypt(&old).unwrap(),
            b"old",
            "the previous key still opens"
        );
        ring.set_keys(2, &[(2, key(2))]).unwrap();
        assert_eq!(ring.decrypt(&old), None, "a retired key no longer opens");
        assert_eq!(ring.decrypt(&new).unwrap(), b"new");
    }

    #[test]
    fn tampered_foreign_and_short_tickets_are_refused() {
        let ring = KeyRingTicketer::new(1, &[(1, key(1))], 3600).unwrap();
        let other = KeyRingTicketer::new(1, &[(1, key(9))], 3600).unwrap();
        let mut ticket = ring.encrypt(b"state").unwrap();
        assert_eq!(other.decrypt(&ticket), None);
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(ring.decrypt(&ticket), None);
        assert_eq!(ring.decrypt(&[1; 20]), None);
        assert_eq!(ring.decrypt(&[]), None);
        // The key id is authenticated: relabelling a ticket breaks it.
        let two = KeyRingTicketer::new(2, &[(1, key(1)), (2, key(1))], 3600).unwrap();
        let mut relabelled = two.encrypt(b"state").unwrap();
        relabelled[0] = 1;
        assert_eq!(two.decrypt(&relabelled), None);
    }

    #[test]
    fn bad_key_sets_are_refused_and_leave_the_ring_alone() {
        assert!(KeyRingTicketer::new(1, &[(1, vec![0; 16])], 60)
            .unwrap_err()
            .contains("16 bytes"));
        assert!(KeyRingTicketer::new(3, &[(1, key(1))], 60)
            .unwrap_err()
            .contains("current"));
        let ring = KeyRingTicketer::new(1, &[(1, key(1))], 60).unwrap();
        assert!(ring
            .set_keys(1, &[(1, key(1)), (1, key(2))])
            .unwrap_err()
            .contains("twice"));
        assert_eq!(ring.current_key_id(), 1);
        let ticket = ring.encrypt(b"x").unwrap();
        assert_eq!(ring.decrypt(&ticket).unwrap(), b"x");
    }

    #[test]
    fn random_ticketers_do_not_share_keys() {
        let a = KeyRingTicketer::random(60);
        let b = KeyRingTicketer::random(60);
        assert_eq!(b.decrypt(&a.encrypt(b"x").unwrap()), None);
        assert_eq!(a.lifetime(), 60);
        assert!(a.enabled());
    }
}
