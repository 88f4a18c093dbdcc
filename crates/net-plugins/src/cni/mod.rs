//! The CNI IPAM protocol (spec 1.0.0 and 1.1.0) as used by the `rorqual-ipam` executable.
//!
//! [`run`] takes the environment and stdin and returns the JSON to print on stdout, or a
//! [`CniError`] whose JSON also goes to stdout (that is where libcni reads it) with a non-zero
//! exit. A network config written for host-local works by changing `"type"` alone:
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"games","type":"bridge","bridge":"cni0","isGateway":true,
//!  "ipam":{"type":"rorqual-ipam","ranges":[[{"subnet":"10.250.0.0/24"}]],
//!          "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"/var/lib/cni/networks",
//!          "claimKeepSeconds":3600,"exclude":["10.250.0.100/30"],"vlan":12,
//!          "macs":{"10.250.0.7":"02:42:0a:fa:00:07"},
//!          "store":{"type":"etcd","endpoints":["http://127.0.0.1:2379"]}}}
//! ```
//!
//! # MACs in the result
//!
//! By default ADD returns the abbreviated IPAM result the spec asks for (`ips`, `routes`,
//! `dns`; no `interfaces`, no `ips[].interface`: an IPAM plugin should be unaware of the
//! interfaces its parent creates). The MAC that reaches an interface comes from the runtime
//! (`runtimeConfig.mac`, `args.cni.mac`, `CNI_ARGS MAC=`), and the bridge plugin ignores
//! `interfaces` in an IPAM result anyway. With `"reportMac": true` in `ipam`, ADD also returns
//! the MAC for the interface it was called for: `interfaces: [{"name": CNI_IFNAME, "mac",
//! "sandbox": CNI_NETNS}]` with `ips[].interface = 0`, for runtimes and plugins that take the
//! MAC from IPAM. The MAC is the one the runtime requested, else the pool's for the first
//! address (assigned in `macs`, else generated from the pool name and address).

pub mod config;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::allocator::Allocator;
use crate::error::PoolError;
use crate::mac::Mac;
use crate::model::{AllocRequest, Allocation, Owner, PoolSpec};
use crate::pool_state::PoolState;
use crate::store::PoolStore;
use crate::store::file::FileStore;
use config::{IpamConf, NetConf, StoreConf};

/// CNI error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const BAD_ENV: u32 = 4;
    /// I/O failure (here: the pool store is unreadable, unwritable or corrupt).
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (every pool is full, or the store is unusable).
    pub const NOT_AVAILABLE: u32 = 50;
    /// rorqual: no free address in a pool.
    pub const EXHAUSTED: u32 = 110;
    /// rorqual: a requested address is outside every range or not available.
    pub const ADDRESS_UNAVAILABLE: u32 = 111;
    /// rorqual: CHECK found a different address than the previous result.
    pub const CHECK_MISMATCH: u32 = 112;
}

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", NEWEST_VERSION];

/// The newest CNI version this plugin speaks (used when a request names none).
pub const NEWEST_VERSION: &str = "1.1.0";

/// A CNI error: printed as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
#[non_exhaustive]
pub struct CniError {
    /// The code.
    pub code: u32,
    /// The message.
    pub msg: String,
    /// Details.
    pub details: String,
}

impl CniError {
    /// An error with `code`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl From<PoolError> for CniError {
    fn from(e: PoolError) -> Self {
        let code = match &e {
            PoolError::Exhausted { .. } => code::EXHAUSTED,
            PoolError::OutOfRange { .. }
            | PoolError::Unavailable { .. }
            | PoolError::AlreadyHolds { .. } => code::ADDRESS_UNAVAILABLE,
            PoolError::InvalidSpec { .. } | PoolError::PoolExists { .. } => code::INVALID_CONFIG,
            _ if e.is_retryable() => code::TRY_AGAIN,
            PoolError::Store { .. } => code::IO,
            _ => code::INVALID_CONFIG,
        };
        let details = std::error::Error::source(&e)
            .and_then(std::error::Error::source)
            .map(ToString::to_string)
            .unwrap_or_default();
        CniError::new(code, e.to_string(), details)
    }
}

/// The CNI environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }
}

fn bad_env(msg: impl Into<String>) -> CniError {
    CniError::new(code::BAD_ENV, msg, "")
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parsed `CNI_ARGS`.
#[derive(Debug, Default)]
struct CniArgs {
    ignore_unknown: bool,
    ips: Vec<IpAddr>,
    mac: Option<Mac>,
    identity: Option<String>,
}

fn parse_ip_text(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse()
        .ok()
        .or_else(|| s.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
}

/// Parses `CNI_ARGS`; errors name `pool` (the pool the command is for) and the entry.
fn parse_cni_args(raw: Option<&str>, pool: &str) -> Result<CniArgs, CniError> {
    let mut out = CniArgs::default();
    let Some(raw) = raw else { return Ok(out) };
    let pairs: Vec<(&str, &str)> = raw
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=').ok_or_else(|| {
                bad_env(format!(
                    "pool `{pool}`: CNI_ARGS entry `{p}` is not KEY=VALUE (in `{raw}`)"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    out.ignore_unknown = pairs.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("IgnoreUnknown")
            && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    let (mut ns, mut pod) = (None, None);
    for (k, v) in pairs {
        match k {
            "IgnoreUnknown" => {}
            "IP" => {
                for part in v.split(',').filter(|p| !p.is_empty()) {
                    out.ips.push(parse_ip_text(part).ok_or_else(|| {
                        bad_env(format!(
                            "pool `{pool}`: CNI_ARGS IP=`{part}` is not an IP address"
                        ))
                    })?);
                }
            }
            "MAC" => {
                out.mac = Some(v.parse().map_err(|e: crate::mac::MacParseError| {
                    bad_env(format!("pool `{pool}`: CNI_ARGS MAC={v}: {e}"))
                })?)
            }
            "RORQUAL_IDENTITY" => out.identity = Some(v.to_owned()),
            "K8S_POD_NAMESPACE" => ns = Some(v.to_owned()),
            "K8S_POD_NAME" => pod = Some(v.to_owned()),
            other if out.ignore_unknown => {
                let _ = other;
            }
            other => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "pool `{pool}`: unsupported CNI_ARGS key {other}={v} (set IgnoreUnknown=1 to ignore it)"
                    ),
                    "",
                ));
            }
        }
    }
    if out.identity.is_none()
        && let (Some(ns), Some(pod)) = (ns, pod)
    {
        out.identity = Some(format!("{ns}/{pod}"));
    }
    Ok(out)
}

fn ips_from(v: Option<&Value>, what: &str, pool: &str) -> Result<Vec<IpAddr>, CniError> {
    let Some(Value::Array(items)) = v else {
        return Ok(vec![]);
    };
    items
        .iter()
        .map(|i| {
            i.as_str().and_then(parse_ip_text).ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("pool `{pool}`: {what}: `{i}` is not an IP address"),
                    "",
                )
            })
        })
        .collect()
}

fn mac_from(v: Option<&Value>, what: &str, pool: &str) -> Result<Option<Mac>, CniError> {
    match v.and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("pool `{pool}`: {what}: {e}"),
                "",
            )
        }),
    }
}

/// The pool a configuration is for, as far as it can be read (`ipam.pool`, else the network
/// name), for naming it in errors before the configuration is known to be valid.
fn pool_label(raw: &Value) -> Option<String> {
    raw.get("ipam")
        .and_then(|i| i.get("pool"))
        .and_then(Value::as_str)
        .or_else(|| raw.get("name").and_then(Value::as_str))
        .map(str::to_owned)
}

/// At most 120 characters of `input`, for quoting it in an error.
fn excerpt(input: &[u8]) -> String {
    let text = String::from_utf8_lossy(input);
    let text = text.trim();
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[derive(Serialize)]
struct IpResult {
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<u32>,
}

async fn open_store(conf: &IpamConf) -> Result<Arc<dyn PoolStore>, CniError> {
    match &conf.store {
        StoreConf::File { dir, fsync } => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(config::DEFAULT_DATA_DIR));
            let store = FileStore::open(&dir)
                .map(|s| s.with_fsync(fsync.unwrap_or(true)))
                .map_err(|e| {
                    CniError::new(
                        code::IO,
                        format!("pool `{}`: {e}", conf.pools[0].name),
                        std::error::Error::source(&e)
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    )
                })?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "etcd")]
        StoreConf::Etcd { endpoints, prefix } => {
            let prefix = prefix.clone().unwrap_or_else(|| "/rorqual/ipam/".into());
            let store = crate::store::etcd::EtcdStore::connect(endpoints, prefix)
                .await
                .map_err(|e| {
                    CniError::new(code::IO, format!("pool `{}`: {e}", conf.pools[0].name), "")
                })?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "etcd"))]
        StoreConf::Etcd { .. } => Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "pool `{}`: ipam.store type etcd needs rorqual-ipam built with the `etcd` feature",
                conf.pools[0].name
            ),
            "",
        )),
    }
}

/// Allocates in `spec`'s pool, creating it or updating its spec in the same step.
async fn allocate_in(
    alloc: &Allocator,
    spec: &PoolSpec,
    req: &AllocRequest,
) -> Result<Allocation, PoolError> {
    let now = crate::allocator::system_clock_ms();
    for _ in 0..3 {
        let mut out = None;
        let mut txn = |s: &mut PoolState| {
            // A config change applies with the allocation (a valid spec on its own: if the
            // allocation then fails, the file and etcd stores write nothing).
            let spec_changed = s.set_spec(spec.clone())?;
            let (a, ev) = s.allocate(req, now)?;
            out = Some(a);
            Ok(spec_changed || !ev.is_empty())
        };
        match alloc.update(&spec.name, &mut txn).await {
            Ok(()) => {
                return out.ok_or_else(|| PoolError::NoSuchPool {
                    pool: spec.name.clone(),
                });
            }
            Err(PoolError::NoSuchPool { .. }) => match alloc.create_pool(spec.clone()).await {
                Ok(()) | Err(PoolError::PoolExists { .. }) => continue,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    Err(PoolError::NoSuchPool {
        pool: spec.name.clone(),
    })
}

/// Whether running the command in `stdin` needs a tokio runtime: only when the network
/// configuration selects the etcd store (`ipam.store.type` = `etcd`). The file store never
/// awaits I/O, so [`run`] can be polled by a plain executor (`futures::executor::block_on`).
/// Unparsable input needs no runtime either: [`run`] reports it without touching a store.
pub fn needs_async_runtime(stdin: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        ipam: Option<Ipam>,
    }
    #[derive(serde::Deserialize)]
    struct Ipam {
        #[serde(default)]
        store: Option<Store>,
    }
    #[derive(serde::Deserialize)]
    struct Store {
        #[serde(default, rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<Probe>(stdin).is_ok_and(|p| {
        p.ipam
            .and_then(|i| i.store)
            .and_then(|s| s.kind)
            .is_some_and(|k| k == "etcd")
    })
}

/// VERSION's reply: `cniVersion` echoes the request's (`{"cniVersion":"1.0.0"}` on stdin, as
/// the spec asks) when it is one this plugin speaks, else it is the newest supported; with
/// `supportedVersions`. VERSION never fails: the runtime uses it to find a common version.
fn version_info(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .and_then(|asked| SUPPORTED_VERSIONS.iter().find(|s| **s == asked).copied())
    });
    json!({"cniVersion": asked.unwrap_or(NEWEST_VERSION), "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one CNI command: returns what to print on stdout on success.
pub async fn run(env: &Env, stdin: &[u8]) -> Result<Value, (String, CniError)> {
    let command = env.command.clone().unwrap_or_default();
    if command == "VERSION" {
        return Ok(version_info(stdin));
    }
    // Version for error replies: the config's when it parses, else the newest.
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        (
            NEWEST_VERSION.to_owned(),
            CniError::new(
                code::DECODE,
                format!(
                    "cannot decode the network configuration on stdin as JSON ({e}): `{}`",
                    excerpt(stdin)
                ),
                "",
            ),
        )
    })?;
    let version = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or(NEWEST_VERSION)
        .to_owned();
    let fail = |e: CniError| (version.clone(), e);
    let conf: NetConf = serde_json::from_value(raw.clone()).map_err(|e| {
        let pool = pool_label(&raw).map_or_else(String::new, |p| format!("pool `{p}`: "));
        fail(CniError::new(
            code::DECODE,
            format!(
                "{pool}cannot decode the network configuration ({e}): `{}`",
                excerpt(stdin)
            ),
            "",
        ))
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(fail(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "pool `{}` (network `{}`): cniVersion {} is not supported (supported: {})",
                pool_label(&raw).unwrap_or_default(),
                conf.name,
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
            "",
        )));
    }
    execute(&command, env, &conf).await.map_err(fail)
}

async fn execute(command: &str, env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let pool = conf
        .ipam
        .get("pool")
        .and_then(Value::as_str)
        .unwrap_or(&conf.name);
    let args = parse_cni_args(env.args.as_deref(), pool)?;
    let ipam = IpamConf::parse(&conf.name, &conf.ipam, args.ignore_unknown)?;
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .ok_or_else(|| bad_env(format!("pool `{pool}`: {name} is required for {command}")))
    };
    let owner = || -> Result<Owner, CniError> {
        let id = need(&env.container_id, "CNI_CONTAINERID")?;
        if !valid_container_id(&id) {
            return Err(bad_env(format!(
                "pool `{pool}`: CNI_CONTAINERID `{id}` is invalid (alphanumeric first, then alphanumerics, `_`, `.`, `-`)"
            )));
        }
        Ok(Owner::new(id, need(&env.ifname, "CNI_IFNAME")?))
    };
    match command {
        "ADD" => {
            let owner = owner()?;
            need(&env.netns, "CNI_NETNS")?;
            let store = open_store(&ipam).await?;
            add(
                &Allocator::new(store),
                conf,
                &ipam,
                &args,
                owner,
                env.netns.as_deref(),
            )
            .await
        }
        "DEL" => {
            let owner = owner()?;
            let alloc = Allocator::new(open_store(&ipam).await?);
            for spec in &ipam.pools {
                alloc.release(&spec.name, &owner).await?;
            }
            Ok(Value::Null)
        }
        "CHECK" => {
            let owner = owner()?;
            need(&env.netns, "CNI_NETNS")?;
            let alloc = Allocator::new(open_store(&ipam).await?);
            check(&alloc, conf, &ipam, &owner).await?;
            Ok(Value::Null)
        }
        "GC" | "STATUS" if conf.cni_version == "1.0.0" => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "pool `{pool}` (network `{}`): {command} needs cniVersion 1.1.0, got 1.0.0",
                conf.name
            ),
            "",
        )),
        "GC" => {
            need(&env.path, "CNI_PATH")?;
            let live: HashSet<Owner> = conf
                .attachments
                .iter()
                .chain(conf.valid_attachments.iter())
                .flatten()
                .map(|a| Owner::new(a.container_id.clone(), a.ifname.clone()))
                .collect();
            let alloc = Allocator::new(open_store(&ipam).await?);
            for spec in &ipam.pools {
                match alloc
                    .gc(&spec.name, &live, Duration::from_secs(ipam.gc_grace_secs))
                    .await
                {
                    Ok(_) | Err(PoolError::NoSuchPool { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Value::Null)
        }
        "STATUS" => {
            let alloc = Allocator::new(
                open_store(&ipam)
                    .await
                    .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg, e.details))?,
            );
            let now = crate::allocator::system_clock_ms();
            let mut full = Vec::new();
            for spec in &ipam.pools {
                let usage = match alloc.pool(&spec.name).await {
                    Ok(state) => state.usage_at(now),
                    Err(PoolError::NoSuchPool { .. }) => PoolState::new(spec.clone())?.usage(),
                    Err(e) => return Err(CniError::new(code::NOT_AVAILABLE, e.to_string(), "")),
                };
                if usage.available == 0 {
                    full.push(format!("pool `{}` has no free address", spec.name));
                }
            }
            if !full.is_empty() && full.len() == ipam.pools.len() {
                return Err(CniError::new(code::NOT_AVAILABLE, full.join("; "), ""));
            }
            Ok(Value::Null)
        }
        "" => Err(bad_env(format!("pool `{pool}`: CNI_COMMAND is not set"))),
        other => Err(bad_env(format!(
            "pool `{pool}`: CNI_COMMAND `{other}` is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
        ))),
    }
}

async fn add(
    alloc: &Allocator,
    conf: &NetConf,
    ipam: &IpamConf,
    args: &CniArgs,
    owner: Owner,
    sandbox: Option<&str>,
) -> Result<Value, CniError> {
    let rc = conf.runtime_config.as_ref();
    let cni_args = conf.args.as_ref().and_then(|a| a.get("cni"));
    let mut requested = args.ips.clone();
    let pool = &ipam.pools[0].name;
    requested.extend(ips_from(
        cni_args.and_then(|c| c.get("ips")),
        "args.cni.ips",
        pool,
    )?);
    requested.extend(ips_from(
        rc.and_then(|r| r.get("ips")),
        "runtimeConfig.ips",
        pool,
    )?);
    requested.dedup();
    let mac = match args.mac {
        Some(m) => Some(m),
        None => match mac_from(cni_args.and_then(|c| c.get("mac")), "args.cni.mac", pool)? {
            Some(m) => Some(m),
            None => mac_from(rc.and_then(|r| r.get("mac")), "runtimeConfig.mac", pool)?,
        },
    };
    // Each requested address goes to the pool whose ranges contain it.
    let mut per_pool: BTreeMap<usize, IpAddr> = BTreeMap::new();
    for ip in &requested {
        let Some(i) = ipam
            .pools
            .iter()
            .position(|p| PoolState::new(p.clone()).is_ok_and(|s| s.state_of(*ip).is_some()))
        else {
            let names: Vec<&str> = ipam.pools.iter().map(|p| p.name.as_str()).collect();
            return Err(CniError::new(
                code::ADDRESS_UNAVAILABLE,
                format!(
                    "requested address {ip} is outside every range of pool(s) {}",
                    names.join(", ")
                ),
                "",
            ));
        };
        if per_pool.insert(i, *ip).is_some_and(|prev| prev != *ip) {
            return Err(CniError::new(
                code::ADDRESS_UNAVAILABLE,
                format!(
                    "more than one address requested from pool `{}`",
                    ipam.pools[i].name
                ),
                "",
            ));
        }
    }
    let mut ips = Vec::new();
    let mut macs = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    let interface = ipam.report_mac.then_some(0);
    for (i, spec) in ipam.pools.iter().enumerate() {
        let mut req = AllocRequest::new(owner.clone());
        req.ip = per_pool.get(&i).copied();
        req.mac = mac;
        req.identity = args.identity.clone();
        match allocate_in(alloc, spec, &req).await {
            Ok(a) => {
                ips.push(IpResult {
                    address: a.address.to_string(),
                    gateway: a.gateway,
                    interface,
                });
                macs.push(a.mac);
                done.push(&spec.name);
            }
            Err(e) => {
                // Give back what this ADD took in earlier pools.
                for pool in done {
                    let _ = alloc.release(pool, &owner).await;
                }
                return Err(e.into());
            }
        }
    }
    let first = &ipam.pools[0];
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "ips": ips,
        "routes": first.routes,
        "dns": first.dns,
    });
    if ipam.report_mac
        && let Some(pool_mac) = macs.first()
    {
        let mut iface = json!({"name": owner.ifname, "mac": mac.unwrap_or(*pool_mac).to_string()});
        if let Some(sandbox) = sandbox {
            iface["sandbox"] = Value::String(sandbox.to_owned());
        }
        result["interfaces"] = json!([iface]);
    }
    Ok(result)
}

async fn check(
    alloc: &Allocator,
    conf: &NetConf,
    ipam: &IpamConf,
    owner: &Owner,
) -> Result<(), CniError> {
    let prev: Vec<IpAddr> = conf
        .prev_result
        .as_ref()
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|i| {
                    i.get("address")
                        .and_then(Value::as_str)
                        .and_then(parse_ip_text)
                })
                .collect()
        })
        .unwrap_or_default();
    for spec in &ipam.pools {
        let held = match alloc.lookup(&spec.name, owner).await {
            Ok(h) => h,
            Err(PoolError::NoSuchPool { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(held) = held else {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("pool `{}` holds no address for {owner}", spec.name),
                "",
            ));
        };
        let state = PoolState::new(spec.clone())?;
        let expected: Vec<&IpAddr> = prev
            .iter()
            .filter(|ip| state.state_of(**ip).is_some() || **ip == held.address.addr())
            .collect();
        if !expected.is_empty() && !expected.contains(&&held.address.addr()) {
            return Err(CniError::new(
                code::CHECK_MISMATCH,
                format!(
                    "pool `{}`: {owner} holds {} but prevResult lists {}",
                    spec.name,
                    held.address,
                    expected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "",
            ));
        }
    }
    Ok(())
}
