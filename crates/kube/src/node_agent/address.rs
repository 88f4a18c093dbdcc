//! Pod addresses without network namespaces: a distinct IPv4 address per pod from a range
//! (by default `127.1.0.0/16`: all of `127.0.0.0/8` routes to the loopback interface on
//! Linux, so every address there can be bound without configuration).
//!
//! A pod keeps its declared ports: its processes are expected to listen on
//! `$POD_IP:<containerPort>`, and two pods using the same port do not collide because their
//! addresses differ. Freed addresses are handed out again only after the rest of the range
//! (round robin), so a new pod does not inherit an old pod's connections in `TIME_WAIT`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Hands out addresses from `first` to `first + size - 1`, skipping those whose last octet is
/// 0 or 255 (they look like network and broadcast addresses to people and some tools).
#[derive(Debug, Clone)]
pub struct AddressPool {
    first: u32,
    size: u32,
    next: u32,
    used: BTreeSet<u32>,
}

impl AddressPool {
    /// The default pool of the local runtime: `127.1.0.1` … `127.1.255.254`.
    pub fn loopback() -> Self {
        AddressPool::new(Ipv4Addr::new(127, 1, 0, 0), 1 << 16)
    }

    /// A pool of `size` addresses starting at `first`.
    pub fn new(first: Ipv4Addr, size: u32) -> Self {
        AddressPool {
            first: u32::from(first),
            size,
            next: 0,
            used: BTreeSet::new(),
        }
    }

    /// The range, for messages (`127.1.0.0+65536`).
    pub fn describe(&self) -> String {
        format!("{}+{}", Ipv4Addr::from(self.first), self.size)
    }

    /// How many addresses are in use.
    pub fn used(&self) -> usize {
        self.used.len()
    }

    fn usable(&self, offset: u32) -> bool {
        let last = self.first.wrapping_add(offset) & 0xff;
        last != 0 && last != 255
    }

    /// Takes a free address; `None` when every address is in use.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        for step in 0..self.size {
            let offset = (self.next + step) % self.size;
            if self.usable(offset) && !self.used.contains(&offset) {
                self.used.insert(offset);
                self.next = (offset + 1) % self.size;
                return Some(Ipv4Addr::from(self.first.wrapping_add(offset)));
            }
        }
        None
    }

    /// Gives `address` back (an address outside the pool, or free already, is ignored).
    pub fn release(&mut self, address: Ipv4Addr) {
        let offset = u32::from(address).wrapping_sub(self.first);
        if offset < self.size {
            self.used.remove(&offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_addresses_skipping_zero_and_broadcast_octets() {
        let mut pool = AddressPool::new(Ipv4Addr::new(127, 1, 0, 0), 512);
        let all: Vec<Ipv4Addr> = std::iter::from_fn(|| pool.allocate()).collect();
        assert_eq!(all.len(), 512 - 4, "x.0 and x.255 of two /24s are skipped");
        assert_eq!(all[0], Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(all[254], Ipv4Addr::new(127, 1, 1, 1));
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert!(pool.allocate().is_none());
    }

    #[test]
    fn released_addresses_come_back_last() {
        let mut pool = AddressPool::new(Ipv4Addr::new(10, 0, 0, 0), 8);
        let a = pool.allocate().expect("free");
        let b = pool.allocate().expect("free");
        pool.release(a);
        assert_ne!(pool.allocate(), Some(a), "round robin: the next one first");
        pool.release(Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(pool.used(), 2);
        while pool.allocate().is_some() {}
        pool.release(b);
        assert_eq!(pool.allocate(), Some(b));
    }
}
