//! The network configuration `rorqual-ipam` reads: host-local's `ipam` keys plus its own.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::CniError;
use crate::mac::Mac;
use crate::model::{Dns, IpRange, PoolSpec, Route};

/// Default directory of the file store (host-local's default `dataDir`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The whole network configuration (top-level keys of the main plugin are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The `ipam` section, kept raw so unknown keys can be reported by name.
    pub ipam: Value,
    /// `args` (`args.cni.ips`, `args.cni.mac`).
    #[serde(default)]
    pub args: Option<Value>,
    /// `runtimeConfig` (`ips`, `mac`).
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// CHECK's previous result.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC's valid attachments (libcni's key).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC's valid attachments (the tagged spec's key).
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

/// One still-valid attachment in a GC request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// host-local's range entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RangeConf {
    subnet: IpNet,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

/// Where pools are stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreConf {
    /// The file store in a directory.
    File {
        /// Directory (default `<dataDir>/<network name>`).
        #[serde(default)]
        dir: Option<PathBuf>,
        /// Whether writes are fsynced (default true); see [`crate::store::file::FileStore::with_fsync`].
        #[serde(default)]
        fsync: Option<bool>,
    },
    /// The etcd store.
    Etcd {
        /// Endpoints (`http://127.0.0.1:2379`).
        endpoints: Vec<String>,
        /// Key prefix (default `/rorqual/ipam/`).
        #[serde(default)]
        prefix: Option<String>,
    },
}

/// The parsed `ipam` section.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct IpamConf {
    /// One pool per host-local range set.
    pub pools: Vec<PoolSpec>,
    /// Where they live.
    pub store: StoreConf,
    /// GC releases only allocations older than this.
    pub gc_grace_secs: u64,
    /// `reportMac`: ADD's result also carries the interface's MAC (an `interfaces` entry and
    /// `ips[].interface`); off by default, see [`crate::cni`].
    pub report_mac: bool,
}

const KNOWN_KEYS: &[&str] = &[
    // host-local
    "type",
    "ranges",
    "routes",
    "dataDir",
    "resolvConf",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    // rorqual
    "pool",
    "ips",
    "exclude",
    "dns",
    "vlan",
    "macs",
    "claimKeepSeconds",
    "gcGraceSeconds",
    "store",
    "reportMac",
];

/// Reads `ipam.<key>`; an error names `pool` and the value.
fn field<T: serde::de::DeserializeOwned>(
    ipam: &serde_json::Map<String, Value>,
    key: &str,
    pool: &str,
) -> Result<Option<T>, CniError> {
    match ipam.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            CniError::new(
                super::code::INVALID_CONFIG,
                format!("pool `{pool}`: invalid ipam.{key} = {}: {e}", excerpt(v)),
                v.to_string(),
            )
        }),
    }
}

/// `v` as JSON, cut at 120 characters.
fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// Reads `/etc/resolv.conf`-style DNS (host-local's `resolvConf`).
fn parse_resolv_conf(path: &str, pool: &str) -> Result<Dns, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            super::code::IO,
            format!("pool `{pool}`: cannot read ipam.resolvConf {path}: {e}"),
            String::new(),
        )
    })?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    dns.nameservers.push(ip);
                }
            }
            Some("domain") => dns.domain = words.next().map(str::to_owned),
            Some("search") => dns.search = words.map(str::to_owned).collect(),
            Some("options") => dns.options = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    Ok(dns)
}

impl IpamConf {
    /// Parses the `ipam` section of network `network`; unknown keys are an error (code 2)
    /// unless `ignore_unknown`. Errors name the pool (`ipam.pool`, default the network name)
    /// and the offending key and value.
    pub fn parse(network: &str, ipam: &Value, ignore_unknown: bool) -> Result<IpamConf, CniError> {
        let Some(map) = ipam.as_object() else {
            return Err(CniError::new(
                super::code::INVALID_CONFIG,
                format!(
                    "pool `{network}`: `ipam` must be an object, not {}",
                    excerpt(ipam)
                ),
                ipam.to_string(),
            ));
        };
        let pool_name =
            field::<String>(map, "pool", network)?.unwrap_or_else(|| network.to_owned());
        let pn = pool_name.as_str();
        if !ignore_unknown
            && let Some((k, v)) = map.iter().find(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
        {
            return Err(CniError::new(
                super::code::UNSUPPORTED_FIELD,
                format!(
                    "pool `{pool_name}` (network `{network}`): unsupported field ipam.{k} = {}",
                    excerpt(v)
                ),
                "set IgnoreUnknown=1 in CNI_ARGS to ignore unknown keys",
            ));
        }
        let mut sets: Vec<Vec<RangeConf>> = field(map, "ranges", pn)?.unwrap_or_default();
        if let Some(subnet) = field::<IpNet>(map, "subnet", pn)? {
            sets.push(vec![RangeConf {
                subnet,
                range_start: field(map, "rangeStart", pn)?,
                range_end: field(map, "rangeEnd", pn)?,
                gateway: field(map, "gateway", pn)?,
            }]);
        }
        let ips: Vec<IpNet> = field(map, "ips", pn)?.unwrap_or_default();
        let exclude: Vec<String> = field(map, "exclude", pn)?.unwrap_or_default();
        let exclude = exclude
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        CniError::new(
                            super::code::INVALID_CONFIG,
                            format!("pool `{pool_name}`: ipam.exclude entry `{s}` is not an address or CIDR"),
                            String::new(),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes: Vec<Route> = field(map, "routes", pn)?.unwrap_or_default();
        let mut dns: Dns = field(map, "dns", pn)?.unwrap_or_default();
        if let Some(path) = field::<String>(map, "resolvConf", pn)? {
            dns = parse_resolv_conf(&path, pn)?;
        }
        let vlan: Option<u16> = field(map, "vlan", pn)?;
        let macs: BTreeMap<IpAddr, Mac> = field(map, "macs", pn)?.unwrap_or_default();
        let keep: u64 = field(map, "claimKeepSeconds", pn)?.unwrap_or(0);
        let gc_grace_secs: u64 = field(map, "gcGraceSeconds", pn)?.unwrap_or(0);
        let report_mac: bool = field(map, "reportMac", pn)?.unwrap_or(false);
        let data_dir: PathBuf =
            field(map, "dataDir", pn)?.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store = field::<StoreConf>(map, "store", pn)?.unwrap_or(StoreConf::File {
            dir: None,
            fsync: None,
        });
        let store = match store {
            StoreConf::File { dir: None, fsync } => StoreConf::File {
                dir: Some(data_dir.join(network)),
                fsync,
            },
            other => other,
        };
        if sets.is_empty() && ips.is_empty() {
            return Err(CniError::new(
                super::code::INVALID_CONFIG,
                format!("pool `{pool_name}`: ipam needs `ranges` (or `subnet`) or `ips`"),
                ipam.to_string(),
            ));
        }
        let mut pools = Vec::new();
        let count = sets.len().max(1);
        for i in 0..count {
            let name = if i == 0 {
                pool_name.clone()
            } else {
                format!("{pool_name}-{i}")
            };
            let mut spec = PoolSpec::new(name);
            for r in sets.get(i).into_iter().flatten() {
                let mut range = IpRange::new(r.subnet);
                range.range_start = r.range_start;
                range.range_end = r.range_end;
                // host-local's default gateway: the subnet's first address.
                range.gateway = r.gateway.or_else(|| default_gateway(r.subnet));
                spec = spec.with_range(range);
            }
            if i == 0 {
                spec.ips = ips.clone();
            }
            spec.exclude = exclude.clone();
            spec.routes = routes.clone();
            spec.dns = dns.clone();
            spec.vlan = vlan;
            spec.macs = macs
                .iter()
                .filter(|(ip, _)| {
                    sets.get(i)
                        .into_iter()
                        .flatten()
                        .any(|r| r.subnet.contains(*ip))
                        || (i == 0 && ips.iter().any(|n| n.addr() == **ip))
                })
                .map(|(ip, m)| (*ip, *m))
                .collect();
            spec.claim_keep_secs = keep;
            crate::pool_state::PoolState::new(spec.clone()).map_err(|e| {
                CniError::new(super::code::INVALID_CONFIG, e.to_string(), ipam.to_string())
            })?;
            pools.push(spec);
        }
        Ok(IpamConf {
            pools,
            store,
            gc_grace_secs,
            report_mac,
        })
    }
}

fn default_gateway(subnet: IpNet) -> Option<IpAddr> {
    let small = match subnet {
        IpNet::V4(n) => n.prefix_len() >= 31,
        IpNet::V6(n) => n.prefix_len() >= 127,
    };
    if small {
        return None;
    }
    subnet
        .trunc()
        .hosts()
        .next()
        .filter(|h| *h != subnet.network())
        .or_else(|| match subnet.trunc() {
            IpNet::V6(n) => Some(IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(n.network()) + 1,
            ))),
            IpNet::V4(_) => None,
        })
}
