//! Core's `Network` seam on a Linux bridge: each instance gets its own network namespace,
//! attached to the bridge by the real CNI `bridge` plugin, with an address (and MAC) from an
//! IP pool. Root only.
//!
//! The allocator runs in process (any [`crate::store::PoolStore`]); the bridge plugin receives
//! the chosen address through the `static` IPAM plugin and the pool's MAC through
//! `CNI_ARGS MAC=`. A stateful instance (`request.ordinal` set) allocates under a claim, so a
//! restarted identity gets its address back. An address the placement reserved
//! (`AttachRequest::reserved`, from a scheduler fed by [`crate::AllocatorCapacity`]) is the
//! one attached: both use the owner [`crate::instance_owner`]`(instance)`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use rorqual_core::error::{Error, Result};
use rorqual_core::network::{AttachRequest, Attachment, Network};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use rorqual_core::engine::planner::identity_id;

use crate::allocator::Allocator;
use crate::capacity::instance_owner;
use crate::model::{AllocRequest, Allocation, Owner};

/// Where the runtime keeps named network namespaces (`ip netns`).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Instances on a bridge, each in its own network namespace, addressed from a pool.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    allocator: Allocator,
    pool: String,
    bridge: String,
    prefix: String,
    cni_dir: PathBuf,
    ifname: String,
}

impl BridgeNetwork {
    /// Instances on bridge `bridge` with addresses from `pool` (which must exist in the
    /// allocator's store); namespaces are named `<prefix><instance>`.
    pub fn new(allocator: Allocator, pool: impl Into<String>, bridge: impl Into<String>) -> Self {
        BridgeNetwork {
            allocator,
            pool: pool.into(),
            bridge: bridge.into(),
            prefix: "rorqual-".into(),
            cni_dir: PathBuf::from("/usr/lib/cni"),
            ifname: "eth0".into(),
        }
    }

    /// Prefix of namespace names (default `rorqual-`).
    #[must_use]
    pub fn with_netns_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Directory of the CNI plugins `bridge` and `static` (default `/usr/lib/cni`).
    #[must_use]
    pub fn with_cni_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cni_dir = dir.into();
        self
    }

    /// The allocator.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    fn netns_name(&self, instance: &str) -> String {
        let clean: String = instance
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{}{clean}", self.prefix)
    }

    /// The namespace path of `instance`.
    pub fn netns_path(&self, instance: &str) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(self.netns_name(instance))
    }

    /// The pool owner of `instance`: the same key [`crate::AllocatorCapacity`] reserves
    /// under, so the address a scheduler reserved is the one attached.
    fn owner(&self, instance: &str) -> Owner {
        instance_owner(instance)
    }

    fn conf(&self, a: &Allocation) -> Value {
        let mut addr = json!({"address": a.address.to_string()});
        if let Some(g) = a.gateway {
            addr["gateway"] = json!(g);
        }
        json!({
            "cniVersion": "1.0.0",
            "name": format!("rorqual-{}", self.pool),
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": a.gateway.is_some(),
            "ipMasq": false,
            "ipam": {"type": "static", "addresses": [addr], "routes": a.routes},
        })
    }

    fn err(&self, operation: &'static str, instance: &str, reason: impl Into<String>) -> Error {
        Error::Network {
            operation,
            instance: instance.to_owned(),
            reason: reason.into(),
        }
    }

    async fn run(&self, argv: &[&str]) -> std::result::Result<String, String> {
        let out = tokio::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", argv.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`{}` failed: {}{}",
                argv.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    async fn plugin(
        &self,
        command: &str,
        instance: &str,
        conf: &Value,
        mac: Option<&str>,
    ) -> std::result::Result<Value, String> {
        let mut args = "IgnoreUnknown=1".to_owned();
        if let Some(m) = mac {
            args.push_str(&format!(";MAC={m}"));
        }
        let bridge = self.cni_dir.join("bridge");
        let mut child = tokio::process::Command::new(&bridge)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.owner(instance).container)
            .env("CNI_NETNS", self.netns_path(instance))
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &self.cni_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bridge.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .await
                .map_err(|e| format!("cannot write to {}: {e}", bridge.display()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("{} failed: {e}", bridge.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "bridge plugin {command} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The owner earlier builds allocated under (`x<netns name>`); released on detach too, so
    /// allocations made before an upgrade do not leak.
    fn legacy_owner(&self, instance: &str) -> Owner {
        Owner::new(
            format!("x{}", self.netns_name(instance)),
            self.ifname.clone(),
        )
    }

    async fn release(&self, instance: &str) -> Result<()> {
        for owner in [self.owner(instance), self.legacy_owner(instance)] {
            self.allocator
                .release(&self.pool, &owner)
                .await
                .map_err(|e| self.err("detach", instance, e.to_string()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Network for BridgeNetwork {
    async fn attach(&self, request: &AttachRequest) -> Result<Attachment> {
        let instance = request.instance.as_str();
        if !nix::unistd::geteuid().is_root() {
            return Err(self.err(
                "attach",
                instance,
                "a bridge network needs root (network namespaces)",
            ));
        }
        let mut req = AllocRequest::new(self.owner(instance)).with_node(request.node.clone());
        // The identity whose claim keeps the address: the one the application asked for
        // (`fixedIp`, the same key the scheduler reserves under); without a placement's
        // reservation, any stateful identity (this network then decides alone).
        let identity = match (&request.claim, &request.reserved, request.ordinal) {
            (Some(claim), _, _) => Some(claim.clone()),
            (None, None, Some(ordinal)) => Some(format!(
                "{}/{}",
                request.app.namespace,
                identity_id(&request.app.name, ordinal)
            )),
            _ => None,
        };
        if let Some(identity) = identity {
            req = req.with_identity(identity);
        }
        if let Some(reserved) = &request.reserved {
            // The placement reserved this address for the instance (under the same owner, see
            // `instance_owner`): attach exactly it.
            if reserved.pool != self.pool {
                return Err(self.err(
                    "attach",
                    instance,
                    format!(
                        "the placement reserved {} in underlay pool `{}`, but this network attaches from pool `{}`",
                        reserved.address, reserved.pool, self.pool
                    ),
                ));
            }
            req = req.with_ip(reserved.address);
        }
        tracing::debug!(instance, pool = %self.pool, reserved = ?request.reserved, "bridge network: attach");
        let mut allocation = self.allocator.allocate(&self.pool, &req).await;
        // Without a reservation, a moved identity may get its previous address back; with one,
        // exactly the reserved address or an error.
        if allocation.is_err()
            && request.reserved.is_none()
            && let Some(prev) = &request.previous
        {
            allocation = self
                .allocator
                .allocate(&self.pool, &req.clone().with_ip(prev.address))
                .await;
        }
        let allocation = allocation.map_err(|e| match &request.reserved {
            Some(r) => self.err(
                "attach",
                instance,
                format!(
                    "cannot attach the reserved address {} of pool `{}`: {e}",
                    r.address, r.pool
                ),
            ),
            None => self.err("attach", instance, e.to_string()),
        })?;
        let path = self.netns_path(instance);
        let name = self.netns_name(instance);
        let setup = async {
            if !path.exists() {
                self.run(&["ip", "netns", "add", &name]).await?;
            }
            let attached = self
                .run(&[
                    "ip",
                    "netns",
                    "exec",
                    &name,
                    "ip",
                    "link",
                    "show",
                    &self.ifname,
                ])
                .await
                .is_ok();
            if !attached {
                let conf = self.conf(&allocation);
                let mac = allocation.mac.to_string();
                self.plugin("ADD", instance, &conf, Some(&mac)).await?;
            }
            // Loopback up, so the instance can also reach itself on 127.0.0.1.
            self.run(&[
                "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
            ])
            .await?;
            Ok::<(), String>(())
        };
        if let Err(reason) = setup.await {
            let _ = self.detach(instance).await;
            return Err(self.err("attach", instance, reason));
        }
        let ports: BTreeMap<String, u16> = request
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.number))
            .collect();
        let mut attachment = Attachment::new(allocation.address.addr(), ports);
        attachment.netns = Some(path);
        Ok(attachment)
    }

    async fn detach(&self, instance: &str) -> Result<()> {
        tracing::debug!(instance, pool = %self.pool, "bridge network: detach");
        let path = self.netns_path(instance);
        if let Some(allocation) = self
            .allocator
            .lookup(&self.pool, &self.owner(instance))
            .await
            .map_err(|e| self.err("detach", instance, e.to_string()))?
        {
            // DEL is best effort: it succeeds when the namespace is gone.
            self.plugin("DEL", instance, &self.conf(&allocation), None)
                .await
                .map_err(|reason| self.err("detach", instance, reason))?;
        }
        if path.exists() {
            self.run(&["ip", "netns", "del", &self.netns_name(instance)])
                .await
                .map_err(|reason| self.err("detach", instance, reason))?;
        }
        self.release(instance).await
    }

    async fn adopt(&self, instance: &str, attachment: &Attachment) -> Result<()> {
        let req = AllocRequest::new(self.owner(instance)).with_ip(attachment.address);
        self.allocator
            .allocate(&self.pool, &req)
            .await
            .map_err(|e| {
                self.err(
                    "attach",
                    instance,
                    format!("cannot adopt {}: {e}", attachment.address),
                )
            })?;
        Ok(())
    }
}
