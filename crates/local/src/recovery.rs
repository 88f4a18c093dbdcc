//! Adoption and recovery: taking over the instances a previous engine left in the state
//! directory.

use std::sync::Arc;

use crate::proc::is_alive;
use crate::reconcile::Inner;
use crate::records::State;
use rorqual_core::error::Result;
use rorqual_core::model::{AppKey, EventType};

impl Inner {
    /// Takes over the state a previous engine left.
    pub(crate) async fn recover(self: &Arc<Self>, mut state: State) -> Result<()> {
        let mut restarted = Vec::new();
        for rec in state.instances.values_mut() {
            rec.stopped = false;
            for c in &mut rec.containers {
                c.ready = false;
                c.ready_since_start = false;
                c.backing_off = false;
                c.started = false;
                if let Some(p) = c.process
                    && !is_alive(&p)
                {
                    c.process = None;
                    if rec.stopping.is_none() {
                        c.restarts = c.restarts.saturating_add(1);
                        rec.restarts = rec.restarts.saturating_add(1);
                        c.last_exit =
                            Some("process ended while no engine supervised it".to_owned());
                        restarted.push((rec.app.clone(), rec.id.clone(), c.name.clone(), p.pid));
                    }
                }
            }
        }
        let placed: Vec<(String, Option<rorqual_core::network::Attachment>, bool)> = state
            .instances
            .values()
            .filter(|r| r.node.is_some())
            .map(|r| (r.id.clone(), r.attachment.clone(), r.stopping.is_some()))
            .collect();
        for (id, attachment, _) in &placed {
            if let Some(a) = attachment {
                self.network.adopt(id, a).await?;
            }
        }
        let mut st = self.lock();
        *st = state;
        for (id, _, stopping) in &placed {
            self.start_supervisor(&mut st, id, true, *stopping);
        }
        // Pending instances that were stopping have no process: finish them now.
        let pending_stops: Vec<String> = st
            .instances
            .values()
            .filter(|r| r.node.is_none() && r.stopping.is_some())
            .map(|r| r.id.clone())
            .collect();
        for id in pending_stops {
            self.apply_stop(&mut st, &id);
        }
        let apps: Vec<AppKey> = st.apps.values().map(|a| a.key.clone()).collect();
        for app in &apps {
            self.reconcile(&mut st, app);
        }
        self.persist(&st);
        drop(st);
        for (app, id, container, pid) in restarted {
            self.emit(
                EventType::Warning,
                "Restarting",
                &app,
                Some(&id),
                format!("process {pid} of container {container} ended while no engine supervised it; restarting"),
            );
        }
        Ok(())
    }
}
