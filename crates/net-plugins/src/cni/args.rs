//! What the runtime passes besides the configuration: the `CNI_*` environment, `CNI_ARGS`
//! (`IP=`, `MAC=`, the pod identity) and the address and MAC requests in `args` and
//! `runtimeConfig`.

use std::net::IpAddr;

use serde_json::Value;

use super::error::{CniError, code};
use crate::mac::Mac;

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

pub(super) fn bad_env(msg: impl Into<String>) -> CniError {
    CniError::new(code::BAD_ENV, msg, "")
}

pub(super) fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parsed `CNI_ARGS`.
#[derive(Debug, Default)]
pub(super) struct CniArgs {
    pub(super) ignore_unknown: bool,
    pub(super) ips: Vec<IpAddr>,
    pub(super) mac: Option<Mac>,
    pub(super) identity: Option<String>,
}

pub(super) fn parse_ip_text(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse()
        .ok()
        .or_else(|| s.parse::<ipnet::IpNet>().ok().map(|n| n.addr()))
}

/// Parses `CNI_ARGS`; errors name `pool` (the pool the command is for) and the entry.
pub(super) fn parse_cni_args(raw: Option<&str>, pool: &str) -> Result<CniArgs, CniError> {
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

pub(super) fn ips_from(v: Option<&Value>, what: &str, pool: &str) -> Result<Vec<IpAddr>, CniError> {
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

pub(super) fn mac_from(v: Option<&Value>, what: &str, pool: &str) -> Result<Option<Mac>, CniError> {
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
