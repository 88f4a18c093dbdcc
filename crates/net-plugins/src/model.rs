//! The pool model: what a pool is made of, who owns an address, and what an allocation returns.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::mac::Mac;

/// A contiguous range of a subnet that a pool hands out (host-local's `range`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IpRange {
    /// The subnet; results carry its prefix length.
    pub subnet: IpNet,
    /// First address handed out (default: the subnet's first host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last address handed out (default: the subnet's last host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// The gateway; never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

impl IpRange {
    /// The whole of `subnet`.
    pub fn new(subnet: IpNet) -> Self {
        IpRange {
            subnet,
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    /// Limits the range to `start..=end`.
    #[must_use]
    pub fn with_bounds(mut self, start: IpAddr, end: IpAddr) -> Self {
        self.range_start = Some(start);
        self.range_end = Some(end);
        self
    }

    /// Sets the gateway.
    #[must_use]
    pub fn with_gateway(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }
}

/// A route handed to the container (CNI's `routes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop (default: the interface's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

impl Route {
    /// A route to `dst`, through `gw` if given.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route { dst, gw }
    }
}

/// DNS settings handed to the container (CNI's `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Everything that defines a pool. Build with [`PoolSpec::new`] and the `with_*` setters;
/// [`PoolSpec::validate`] checks it (the allocator calls it on create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PoolSpec {
    /// The pool's name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// CIDR ranges, used in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<IpRange>,
    /// Discrete addresses with their prefix (for example `10.1.0.7/24`), used after the ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpNet>,
    /// Addresses or subnets never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<IpNet>,
    /// Gateway for discrete addresses and ranges without their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Routes handed to every container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS handed to every container.
    #[serde(default)]
    pub dns: Dns,
    /// VLAN id of the underlay, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Assigned MACs; other addresses get [`Mac::generated`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub macs: BTreeMap<IpAddr, Mac>,
    /// How long a released claimed address stays reserved for its identity, in seconds
    /// (0: claims are off; identities get no fixed address).
    #[serde(default)]
    pub claim_keep_secs: u64,
    /// The nodes that can use the pool's addresses (the hosts of its subnet), for schedulers
    /// ([`crate::capacity::AllocatorCapacity`]); empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl PoolSpec {
    /// An empty pool named `name`; add ranges or addresses.
    pub fn new(name: impl Into<String>) -> Self {
        PoolSpec {
            name: name.into(),
            ranges: Vec::new(),
            ips: Vec::new(),
            exclude: Vec::new(),
            gateway: None,
            routes: Vec::new(),
            dns: Dns::default(),
            vlan: None,
            macs: BTreeMap::new(),
            claim_keep_secs: 0,
            nodes: Vec::new(),
        }
    }

    /// Adds a range.
    #[must_use]
    pub fn with_range(mut self, range: IpRange) -> Self {
        self.ranges.push(range);
        self
    }

    /// Adds a discrete address (with its prefix).
    #[must_use]
    pub fn with_ip(mut self, ip: IpNet) -> Self {
        self.ips.push(ip);
        self
    }

    /// Excludes an address or subnet.
    #[must_use]
    pub fn with_exclude(mut self, net: IpNet) -> Self {
        self.exclude.push(net);
        self
    }

    /// Sets the default gateway.
    #[must_use]
    pub fn with_gateway(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Adds a route.
    #[must_use]
    pub fn with_route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Sets DNS.
    #[must_use]
    pub fn with_dns(mut self, dns: Dns) -> Self {
        self.dns = dns;
        self
    }

    /// Sets the VLAN id.
    #[must_use]
    pub fn with_vlan(mut self, vlan: u16) -> Self {
        self.vlan = Some(vlan);
        self
    }

    /// Assigns a MAC to an address.
    #[must_use]
    pub fn with_mac(mut self, ip: IpAddr, mac: Mac) -> Self {
        self.macs.insert(ip, mac);
        self
    }

    /// The nodes that can use the pool (see [`PoolSpec::nodes`]).
    #[must_use]
    pub fn with_nodes<S: Into<String>>(mut self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps a released identity's address reserved for `secs` seconds.
    #[must_use]
    pub fn with_claim_keep_secs(mut self, secs: u64) -> Self {
        self.claim_keep_secs = secs;
        self
    }
}

/// Who holds an address: a container's interface (CNI's container ID + ifname).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Owner {
    /// Container (or instance) id.
    pub container: String,
    /// Interface name.
    pub ifname: String,
}

impl Owner {
    /// The owner `container`/`ifname`.
    pub fn new(container: impl Into<String>, ifname: impl Into<String>) -> Self {
        Owner {
            container: container.into(),
            ifname: ifname.into(),
        }
    }

    /// The key stored in indexes (`container/ifname`; container ids contain no `/`).
    pub fn key(&self) -> String {
        format!("{}/{}", self.container, self.ifname)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container, self.ifname)
    }
}

/// The state of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpState {
    /// Free to hand out.
    Available,
    /// In use by an owner.
    Active,
    /// Held back: for a claim's identity, or set aside by an operator; handed out only on a
    /// specific request (or to the claim's identity).
    Reserved,
    /// Never handed out.
    Disabled,
}

impl fmt::Display for IpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpState::Available => "available",
            IpState::Active => "active",
            IpState::Reserved => "reserved",
            IpState::Disabled => "disabled",
        })
    }
}

/// A request for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocRequest {
    /// Who asks.
    pub owner: Owner,
    /// A stateful identity (`namespace/name-0`) that keeps its address through a claim.
    pub identity: Option<String>,
    /// A specific address.
    pub ip: Option<IpAddr>,
    /// The node the owner runs on (for usage per node).
    pub node: Option<String>,
    /// A MAC the runtime set on the interface (recorded with the allocation).
    pub mac: Option<Mac>,
}

impl AllocRequest {
    /// Any address for `owner`.
    pub fn new(owner: Owner) -> Self {
        AllocRequest {
            owner,
            identity: None,
            ip: None,
            node: None,
            mac: None,
        }
    }

    /// For a stateful identity.
    #[must_use]
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// For a specific address.
    #[must_use]
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// On a node.
    #[must_use]
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// With the interface's MAC.
    #[must_use]
    pub fn with_mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// An address handed to an owner, with what the container needs to configure it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Allocation {
    /// The pool.
    pub pool: String,
    /// Address with the subnet's prefix length.
    pub address: IpNet,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// The MAC for the interface (assigned in the pool, else generated).
    pub mac: Mac,
    /// VLAN id.
    pub vlan: Option<u16>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Dns,
    /// The owner.
    pub owner: Owner,
    /// The identity whose claim holds the address, if any.
    pub identity: Option<String>,
}

/// Counts of addresses by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Addresses the pool can hand out in total (saturating for huge IPv6 ranges).
    pub total: u128,
    /// Available.
    pub available: u128,
    /// Active.
    pub active: u64,
    /// Reserved.
    pub reserved: u64,
    /// Disabled.
    pub disabled: u64,
}

/// What changed for one address; the watch stream carries these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AllocationEvent {
    /// The pool.
    pub pool: String,
    /// The address.
    pub ip: IpAddr,
    /// State before.
    pub from: IpState,
    /// State after.
    pub to: IpState,
    /// The owner involved (the new one when activated, the old one when released).
    pub owner: Option<Owner>,
    /// The identity involved.
    pub identity: Option<String>,
    /// The owner's node, when an owner is involved and its allocation named one.
    #[serde(default)]
    pub node: Option<String>,
    /// The owner's interface MAC, when an owner is involved: the one the runtime reported,
    /// else the pool's for the address (assigned or generated), as `rorqual-ipam` reports it.
    #[serde(default)]
    pub mac: Option<Mac>,
}

impl AllocationEvent {
    /// `ip` of `pool` moved `from` one state `to` another, with no owner, identity, node or
    /// MAC (add them with the `with_*` setters).
    pub fn new(pool: impl Into<String>, ip: IpAddr, from: IpState, to: IpState) -> Self {
        AllocationEvent {
            pool: pool.into(),
            ip,
            from,
            to,
            owner: None,
            identity: None,
            node: None,
            mac: None,
        }
    }

    /// Sets the owner involved.
    #[must_use]
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Sets the identity involved.
    #[must_use]
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Sets the owner's node.
    #[must_use]
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Sets the owner's interface MAC.
    #[must_use]
    pub fn with_mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }
}

/// Target of a bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferTarget {
    /// Available → Reserved.
    Reserved,
    /// Reserved → Available.
    Available,
}
