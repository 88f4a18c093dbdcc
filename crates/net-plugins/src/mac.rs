//! MAC addresses: parsing, printing, and deterministic locally administered addresses.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit MAC address, printed as `02:42:0a:fa:00:aa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The locally administered unicast address a pool gives `ip` when no MAC was assigned:
    /// derived from the pool name and the address, so every store and process computes the
    /// same one.
    pub fn generated(pool: &str, ip: IpAddr) -> Mac {
        // FNV-1a (64 bit): fixed, documented and cheap; the MAC must never change between
        // versions or processes, so no randomly keyed hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |b: u8| {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        pool.bytes().for_each(&mut feed);
        feed(0);
        match ip {
            IpAddr::V4(v4) => v4.octets().into_iter().for_each(&mut feed),
            IpAddr::V6(v6) => v6.octets().into_iter().for_each(&mut feed),
        }
        // Mix the high bits down so nearby addresses differ in every byte.
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 32;
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&h.to_be_bytes()[2..]);
        // Locally administered (bit 1 set), unicast (bit 0 clear).
        bytes[0] = (bytes[0] | 0x02) & !0x01;
        Mac(bytes)
    }

    /// Whether the address is locally administered and unicast.
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x02 != 0 && self.0[0] & 0x01 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A MAC address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a MAC address (expected six hex pairs like 02:42:0a:fa:00:aa)")]
pub struct MacParseError {
    /// The input.
    pub input: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_owned(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(err());
            }
            bytes[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(Mac(bytes))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PINNED: &str = "56:fa:73:aa:08:7e";

    #[test]
    fn generated_is_deterministic_local_unicast_and_distinct() {
        let a = Mac::generated("games", "10.0.0.5".parse().unwrap());
        assert_eq!(a, Mac::generated("games", "10.0.0.5".parse().unwrap()));
        assert!(a.is_local_unicast());
        assert_ne!(a, Mac::generated("games", "10.0.0.6".parse().unwrap()));
        assert_ne!(a, Mac::generated("other", "10.0.0.5".parse().unwrap()));
        assert!(Mac::generated("v6", "fd00::1".parse().unwrap()).is_local_unicast());
        // Pinned: a changed function would give running instances new MACs after an upgrade.
        assert_eq!(a.to_string(), PINNED);
    }

    #[test]
    fn parse_and_print_round_trip() {
        let m: Mac = "02:42:0A:fa:00:aa".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:fa:00:aa");
        assert_eq!("02-42-0a-fa-00-aa".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "02:42",
            "02:42:0a:fa:00:aa:01",
            "zz:42:0a:fa:00:aa",
            "2:42:0a:fa:00:aa",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
