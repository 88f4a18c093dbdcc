//! Node readiness: a node marked not ready is treated as lost (its instances are killed and
//! placed again elsewhere); marked ready again, it takes new instances.

use std::sync::atomic::Ordering;

use crate::engine::LocalEngine;
use crate::proc::kill_group_now;
use crate::records::StopIntent;
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{Event, EventType};

impl LocalEngine {
    /// Marks virtual node `node` ready or not ready, as a node's kubelet heartbeat would.
    ///
    /// Not ready: nothing new is placed there, and every instance on it is lost, as on a node
    /// that went away: its processes are killed at once (no grace period) and it returns to
    /// Pending, to be placed again on a ready node. Stateful identities keep their id,
    /// ordinal and previous attachment (and so their address, when the network can give it
    /// again). A Warning event `NodeNotReady` is emitted for the node and for each lost
    /// instance. Ready again: the node takes new instances (event `NodeReady`). Setting the
    /// current readiness again does nothing. Readiness is not persisted: a new engine starts
    /// with every node ready.
    ///
    /// Fails with [`Error::NotFound`] for an unknown node.
    pub fn set_node_ready(&self, node: &str, ready: bool) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        // State lock first (lock order), so that no placement reads the nodes between the
        // readiness change and the instances leaving the node.
        let mut st = inner.lock();
        {
            let mut nodes = inner.nodes.lock();
            let n = nodes
                .iter_mut()
                .find(|n| n.name == node)
                .ok_or_else(|| Error::NotFound {
                    kind: "node",
                    name: node.to_owned(),
                })?;
            if n.ready == ready {
                return Ok(());
            }
            n.ready = ready;
        }
        if ready {
            drop(st);
            let _ = inner.events.send(Event::new(
                EventType::Normal,
                "NodeReady",
                format!("node {node} is ready"),
            ));
            tracing::info!(node, "node ready");
            inner.kick.notify_one();
            return Ok(());
        }
        let lost: Vec<String> = st
            .instances
            .values()
            .filter(|r| r.node.as_deref() == Some(node) && r.stopping.is_none() && !r.stopped)
            .map(|r| r.id.clone())
            .collect();
        let message = format!(
            "node {node} is not ready: {} instance(s) lost{}{}",
            lost.len(),
            if lost.is_empty() { "" } else { ": " },
            lost.join(", ")
        );
        tracing::warn!(node, "{message}");
        let _ = inner
            .events
            .send(Event::new(EventType::Warning, "NodeNotReady", message));
        for id in &lost {
            let Some(rec) = st.instances.get_mut(id) else {
                continue;
            };
            let mut processes = Vec::new();
            for c in &mut rec.containers {
                processes.extend(c.process);
                c.ready = false;
            }
            let app = rec.app.clone();
            inner.emit(
                EventType::Warning,
                "NodeNotReady",
                &app,
                Some(id),
                format!("node {node} is not ready: instance lost, to be placed again"),
            );
            // The stop request first, so that the supervisor sees a stop rather than a crash
            // to restart from; then the kill, so that no grace period applies.
            inner.begin_stop(&mut st, id, StopIntent::NodeLost(node.to_owned()));
            for process in &processes {
                kill_group_now(process);
            }
        }
        if !inner.closed.load(Ordering::SeqCst) {
            inner.persist(&st);
        }
        drop(st);
        inner.kick.notify_one();
        Ok(())
    }
}
