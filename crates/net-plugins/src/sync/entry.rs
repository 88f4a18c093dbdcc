//! What a registry holds: one entry per address in use, keyed `<pool>/<ip>`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SyncError;
use crate::mac::Mac;
use crate::model::IpState;

/// Where an address lives in a registry: `<pool>/<ip>` (pool names contain no `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct RegistryKey {
    /// The pool.
    pub pool: String,
    /// The address.
    pub ip: IpAddr,
}

impl RegistryKey {
    /// The key of `ip` in `pool`.
    pub fn new(pool: impl Into<String>, ip: IpAddr) -> Self {
        RegistryKey {
            pool: pool.into(),
            ip,
        }
    }
}

impl fmt::Display for RegistryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.ip)
    }
}

impl FromStr for RegistryKey {
    type Err = SyncError;

    /// Parses `<pool>/<ip>`; the error names the key.
    fn from_str(key: &str) -> Result<Self, SyncError> {
        let corrupt = |reason: String| SyncError::CorruptEntry {
            key: key.to_owned(),
            reason,
        };
        let Some((pool, ip)) = key.split_once('/') else {
            return Err(corrupt("expected `<pool>/<ip>`".to_owned()));
        };
        if pool.is_empty() {
            return Err(corrupt("the pool name is empty".to_owned()));
        }
        let ip = ip
            .parse()
            .map_err(|e| corrupt(format!("`{ip}` is not an IP address ({e})")))?;
        Ok(RegistryKey::new(pool, ip))
    }
}

/// The value of an address's registry entry: who uses it and where. Only Active addresses
/// have an entry (see the [module docs](super)); the JSON is
/// `{"instance":"ctr1","ifname":"eth0","identity":null,"node":"n1","mac":"02:…","state":"active"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistryEntry {
    /// The owner's container (instance) id.
    pub instance: String,
    /// The owner's interface.
    pub ifname: String,
    /// The stateful identity whose claim holds the address, if any.
    pub identity: Option<String>,
    /// The node the owner runs on, when its allocation named one.
    pub node: Option<String>,
    /// The interface's MAC (the runtime's, else the pool's for the address).
    pub mac: Option<Mac>,
    /// The address's state (always [`IpState::Active`] today).
    pub state: IpState,
}

impl RegistryEntry {
    /// An Active address used by `instance`'s interface `ifname`.
    pub fn active(instance: impl Into<String>, ifname: impl Into<String>) -> Self {
        RegistryEntry {
            instance: instance.into(),
            ifname: ifname.into(),
            identity: None,
            node: None,
            mac: None,
            state: IpState::Active,
        }
    }

    /// Sets the identity.
    #[must_use]
    pub fn with_identity(mut self, identity: Option<String>) -> Self {
        self.identity = identity;
        self
    }

    /// Sets the node.
    #[must_use]
    pub fn with_node(mut self, node: Option<String>) -> Self {
        self.node = node;
        self
    }

    /// Sets the MAC.
    #[must_use]
    pub fn with_mac(mut self, mac: Option<Mac>) -> Self {
        self.mac = mac;
        self
    }

    /// The JSON value a registry stores.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, an address and a state: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored value; the error names `key`.
    pub fn from_json(key: &str, value: &[u8]) -> Result<Self, SyncError> {
        serde_json::from_slice(value).map_err(|e| SyncError::CorruptEntry {
            key: key.to_owned(),
            reason: format!("its value does not parse as an entry: {e}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_has_a_fixed_json_form() {
        let entry = RegistryEntry::active("ctr1", "eth0")
            .with_node(Some("n1".into()))
            .with_mac(Some(Mac([0x02, 0x42, 0x0a, 0xfa, 0, 0xaa])));
        let json = String::from_utf8(entry.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"instance":"ctr1","ifname":"eth0","identity":null,"node":"n1","mac":"02:42:0a:fa:00:aa","state":"active"}"#
        );
        assert_eq!(
            RegistryEntry::from_json("games/10.0.0.1", json.as_bytes()).unwrap(),
            entry
        );
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let key: RegistryKey = "games/10.0.0.1".parse().unwrap();
        assert_eq!(key, RegistryKey::new("games", "10.0.0.1".parse().unwrap()));
        assert_eq!(key.to_string(), "games/10.0.0.1");
        let v6: RegistryKey = "games/fd00::1".parse().unwrap();
        assert_eq!(v6.to_string(), "games/fd00::1");
        for bad in ["games", "games/10.0.0", "/10.0.0.1", "games/10.0.0.1/x"] {
            let err = bad.parse::<RegistryKey>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        let err = RegistryEntry::from_json("games/10.0.0.1", b"{\"instance\":1}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("games/10.0.0.1") && err.contains("does not parse"),
            "{err}"
        );
    }
}
