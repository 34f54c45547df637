//! TLS 1.3 early data on single-use session tickets (RFC 8446 section 8.1).
//!
//! What rustls 0.23 allows (`server/tls13.rs`): early data is accepted only on a
//! resumption from the session *store* (`ServerConfig::ticketer` disabled,
//! `session_storage` set, `max_early_data_size` > 0); with a ticketer (stateless,
//! sealed tickets: what the engine uses otherwise) `max_early_data_size` never goes out
//! with a ticket, so no client ever sends early data. A stored ticket is a 32-byte random
//! id, and rustls asks the store to `take` it: its state must be found wherever the
//! device reconnects, and found once only, or a replayed ClientHello would have its
//! early data processed again.
//!
//! So the store here is the fleet's, held by Python: rustls's `put` (a new ticket)
//! becomes a `TLS_TICKET` event with the state sealed under the ticket key ring, which
//! Python keeps (Redis with a TTL, or this process's memory); a ClientHello presenting
//! a 32-byte identity is held back while Python takes that ticket (Redis `GETDEL`:
//! once, fleet-wide) and answers `TLS_RESUME`; only then does rustls read the
//! ClientHello, with the state preloaded here for its `take`. A replay finds the ticket
//! gone: rustls does a full handshake and skips the early data unread. A ticket sealed
//! by a node without early data (stateless) still resumes, without early data.

use std::sync::{Arc, Mutex};

use rustls::server::{ProducesTickets, StoresServerSessions};

use crate::ticketer::KeyRingTicketer;

/// Length of the ticket ids rustls makes for stored sessions.
pub const TICKET_ID_BYTES: usize = 32;

/// The session store of the MMTP listeners when early data is on.
pub struct SingleUseStore {
    sealer: Arc<KeyRingTicketer>,
    /// Tickets rustls issued since the engine last took them: (id, sealed state).
    issued: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    /// The state rustls may take during the pass being run: (ticket id, state).
    preload: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for SingleUseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleUseStore").finish_non_exhaustive()
    }
}

impl SingleUseStore {
    pub fn new(sealer: Arc<KeyRingTicketer>) -> Arc<Self> {
        Arc::new(SingleUseStore {
            sealer,
            issued: Mutex::new(Vec::new()),
            preload: Mutex::new(None),
        })
    }

    /// Tickets issued since the last call: (id, state sealed under the key ring).
    pub fn take_issued(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if issued.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *issued)
    }

    /// Let rustls take `state` (plain) for `ticket_id` during the next pass.
    pub fn preload(&self, ticket_id: Vec<u8>, state: Vec<u8>) {
        *self.preload.lock().unwrap_or_else(|e| e.into_inner()) = Some((ticket_id, state));
    }

    /// Forget a preloaded state rustls did not take (its pass is over).
    pub fn clear(&self) {
        self.preload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// The plain state of a ticket the fleet stored (sealed): None if no key opens it.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.sealer.decrypt(sealed)
    }
}

impl StoresServerSessions for SingleUseStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let Some(sealed) = self.sealer.encrypt(&value) else {
            return false; // rustls then issues no ticket
        };
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, sealed));
        true
    }

    fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None // TLS 1.2 only; never negotiated
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut preload = self.preload.lock().unwrap_or_else(|e| e.into_inner());
        match preload.as_ref() {
            Some((id, _)) if id.as_slice() == key => preload.take().map(|(_, state)| state),
            _ => None,
        }
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The ticketer of a config whose tickets are stored (rustls: "stateful"): none.
#[derive(Debug)]
pub struct StoredTickets;

impl ProducesTickets for StoredTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tickets_are_sealed_and_a_preload_is_taken_once() {
        let sealer = KeyRingTicketer::random(60);
        let store = SingleUseStore::new(sealer.clone());
        assert!(store.put(vec![1; 32], b"state".to_vec()));
        let issued = store.take_issued();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].0, vec![1; 32]);
        assert_ne!(issued[0].1, b"state", "sealed, not plain");
        assert_eq!(store.open(&issued[0].1).unwrap(), b"state");
        assert!(store.take_issued().is_empty());
        assert_eq!(store.take(&[1; 32]), None, "nothing preloaded");
        store.preload(vec![1; 32], b"state".to_vec());
        assert_eq!(store.take(&[2; 32]), None, "another id");
        assert_eq!(store.take(&[1; 32]).unwrap(), b"state");
        assert_eq!(store.take(&[1; 32]), None, "taken once");
        store.preload(vec![3; 32], b"x".to_vec());
        store.clear();
        assert_eq!(store.take(&[3; 32]), None);
        assert_eq!(store.open(b"not sealed by us"), None);
    }
}
