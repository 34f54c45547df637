//! Who may open a connection, decided at TCP accept before any TLS work: the
//! node-wide and per-address caps. A refused socket is closed at once.
//!
//! Behind a load balancer (PROXY protocol) the device's address is known only once
//! the balancer's header is read: such a socket is counted in the total at accept
//! (`admit_pending`) and under the device's address when the header names it
//! (`admit_address`), so per-address caps count devices, not the balancer.

use std::collections::HashMap;
use std::net::IpAddr;

/// Why a socket was closed at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

/// Sockets held, in total and by peer address.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_ip: u32,
    total: usize,
    per_ip: HashMap<IpAddr, u32>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: u32) -> Self {
        Admission {
            max_connections,
            max_per_ip,
            total: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Count a new socket from `ip`, or say why it is refused (nothing counted then).
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_connections {
            return Err(Refusal::MaxConnections);
        }
        let count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::MaxConnectionsPerIp);
        }
        *count += 1;
        self.total += 1;
        Ok(())
    }

    /// Count a new socket whose peer's address is not known yet (in the total only).
    pub fn admit_pending(&mut self) -> Result<(), Refusal> {
        if self.total >= self.max_connections {
            return Err(Refusal::MaxConnections);
        }
        self.total += 1;
        Ok(())
    }

    /// A socket counted by `admit_pending` now has its address: count it under `ip`,
    /// or say why it is refused (it stays counted in the total: release it pending).
    pub fn admit_address(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let count = self.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::MaxConnectionsPerIp);
        }
        *count += 1;
        Ok(())
    }

    /// A socket counted by `admit_pending` (and not by `admit_address`) is gone.
    pub fn release_pending(&mut self) {
        self.total = self.total.saturating_sub(1);
    }

    /// A socket admitted from `ip` is gone.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
            self.total -= 1;
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn from_ip(&self, ip: IpAddr) -> u32 {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Distinct peer addresses held.
    pub fn addresses(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn per_ip_cap_refuses_the_next_from_that_address_only() {
        let mut admission = Admission::new(100, 2);
        admission.admit(ip(1)).unwrap();
        admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(1)), Err(Refusal::MaxConnectionsPerIp));
        admission.admit(ip(2)).unwrap();
        assert_eq!(admission.total(), 3);
        admission.release(ip(1));
        admission.admit(ip(1)).unwrap();
        assert_eq!(admission.from_ip(ip(1)), 2);
    }

    #[test]
    fn node_cap_refuses_everyone() {
        let mut admission = Admission::new(2, 10);
        admission.admit(ip(1)).unwrap();
        admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(3)), Err(Refusal::MaxConnections));
        assert_eq!(admission.from_ip(ip(3)), 0, "a refusal counts nothing");
        admission.release(ip(2));
        admission.admit(ip(3)).unwrap();
    }

    #[test]
    fn pending_sockets_count_in_the_total_then_under_their_address() {
        let mut admission = Admission::new(3, 1);
        admission.admit_pending().unwrap();
        admission.admit_pending().unwrap();
        assert_eq!(
            admission.addresses(),
            0,
            "the balancer's address is not counted"
        );
        admission.admit_address(ip(7)).unwrap();
        assert_eq!(
            admission.admit_address(ip(7)),
            Err(Refusal::MaxConnectionsPerIp)
        );
        admission.release_pending(); // the refused one
        assert_eq!(admission.total(), 1);
        admission.admit_pending().unwrap();
        admission.admit_pending().unwrap();
        assert_eq!(admission.admit_pending(), Err(Refusal::MaxConnections));
        admission.release(ip(7));
        admission.release_pending();
        admission.release_pending();
        assert_eq!((admission.total(), admission.addresses()), (0, 0));
    }

    #[test]
    fn released_addresses_are_forgotten() {
        let mut admission = Admission::new(10, 10);
        admission.admit(ip(1)).unwrap();
        admission.release(ip(1));
        assert_eq!(admission.addresses(), 0);
        assert_eq!(admission.total(), 0);
        admission.release(ip(1)); // unknown: nothing happens
        assert_eq!(admission.total(), 0);
    }
}
