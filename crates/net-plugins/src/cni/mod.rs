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

mod add;
mod args;
pub mod config;
mod error;

pub use args::Env;
pub use error::{CniError, code};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::allocator::Allocator;
use crate::error::PoolError;
use crate::model::Owner;
use crate::pool_state::PoolState;
use crate::store::PoolStore;
use crate::store::file::FileStore;
use add::{add, check};
use args::{bad_env, parse_cni_args, valid_container_id};
use config::{IpamConf, NetConf, StoreConf};

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", NEWEST_VERSION];

/// The newest CNI version this plugin speaks (used when a request names none).
pub const NEWEST_VERSION: &str = "1.1.0";

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
