//! ADD and CHECK: allocation in every configured pool (creating or updating the pool in the
//! same step), the IPAM result, and the comparison with `prevResult`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Value, json};

use super::args::{CniArgs, ips_from, mac_from, parse_ip_text};
use super::config::{IpamConf, NetConf};
use super::error::{CniError, code};
use crate::allocator::Allocator;
use crate::error::PoolError;
use crate::model::{AllocRequest, Allocation, Owner, PoolSpec};
use crate::pool_state::PoolState;
use crate::store::TxnKeys;

#[derive(Serialize)]
struct IpResult {
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<u32>,
}

/// Allocates in `spec`'s pool, creating it or updating its spec in the same step.
pub(super) async fn allocate_in(
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
        let keys = TxnKeys::new()
            .with_owner(req.owner.clone())
            .with_identity(req.identity.clone())
            .with_ip(req.ip);
        match alloc.update_keys(&spec.name, &keys, &mut txn).await {
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

pub(super) async fn add(
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

pub(super) async fn check(
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
