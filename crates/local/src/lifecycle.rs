//! Instance lifecycle: what supervisors report (started, exited, ready, stopped) and
//! stopping instances.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::proc::{self, ProcIdentity};
use crate::reconcile::Inner;
use crate::records::{InstanceRecord, Runtime, State, StopIntent, container_records};
use crate::supervise;
use rorqual_core::model::EventType;

impl Inner {
    pub(crate) fn with_record(&self, id: &str, persist: bool, f: impl FnOnce(&mut InstanceRecord)) {
        let mut st = self.lock();
        let Some(rec) = st.instances.get_mut(id) else {
            return;
        };
        f(rec);
        if persist {
            // Handed to the writer thread under the lock (no I/O here), so that `Drop`, which
            // takes the lock before closing the writer, never misses it.
            self.persist(&st);
        }
    }

    pub(crate) fn set_reason(&self, id: &str, reason: Option<String>) {
        self.with_record(id, false, |r| r.reason = reason);
    }

    /// Records the instance's attachment. It reaches the disk with the process that uses it
    /// ([`Inner::container_started`]): an attachment without a process needs no adopting, and
    /// the network hands the same owner the same address again.
    pub(crate) fn set_attachment(&self, id: &str, attachment: rorqual_core::network::Attachment) {
        self.with_record(id, false, |r| {
            r.attachment = Some(attachment);
            r.previous_attachment = None;
        });
    }

    pub(crate) fn container_started(
        &self,
        id: &str,
        index: usize,
        process: ProcIdentity,
        adopted: bool,
        ready_without_probe: bool,
    ) {
        let mut app = None;
        let mut became_ready = false;
        self.with_record(id, true, |r| {
            // Checked under the state lock, which `Drop` takes after setting `closed`: either
            // the process is recorded before `Drop` looks, or it is ended here.
            if self.owned_dir && self.closed.load(Ordering::SeqCst) {
                // Started while the engine was being dropped: nobody could adopt it later.
                proc::kill_group_now(&process);
                return;
            }
            let was_ready = r.is_ready();
            if let Some(c) = r.containers.get_mut(index) {
                c.process = Some(process);
                c.started = true;
                c.backing_off = false;
                c.ready = ready_without_probe;
                c.ready_since_start = ready_without_probe;
            }
            became_ready = !was_ready && r.is_ready();
            app = Some(r.app.clone());
        });
        if let Some(app) = app {
            let (reason, verb) = if adopted {
                ("Adopted", "adopted running")
            } else {
                ("Started", "started")
            };
            self.emit(
                EventType::Normal,
                reason,
                &app,
                Some(id),
                format!("{verb} process {}", process.pid),
            );
            if became_ready {
                self.emit(
                    EventType::Normal,
                    "Ready",
                    &app,
                    Some(id),
                    "instance is ready",
                );
                self.kick.notify_one();
            }
        }
    }

    pub(crate) fn container_exited(&self, id: &str, index: usize, reason: &str, delay: Duration) {
        let mut app = None;
        let mut name = String::new();
        self.with_record(id, true, |r| {
            if let Some(c) = r.containers.get_mut(index) {
                c.process = None;
                c.ready = false;
                c.backing_off = true;
                c.last_exit = Some(reason.to_owned());
                name.clone_from(&c.name);
            }
            app = Some(r.app.clone());
        });
        if let Some(app) = app {
            self.emit(
                EventType::Warning,
                "BackOff",
                &app,
                Some(id),
                format!("back-off {delay:?} restarting failed container {name}: {reason}"),
            );
        }
    }

    pub(crate) fn container_restarting(&self, id: &str, index: usize) {
        self.with_record(id, false, |r| {
            r.restarts = r.restarts.saturating_add(1);
            if let Some(c) = r.containers.get_mut(index) {
                c.restarts = c.restarts.saturating_add(1);
            }
        });
    }

    pub(crate) fn container_stopped(&self, id: &str, index: usize) {
        self.with_record(id, true, |r| {
            if let Some(c) = r.containers.get_mut(index) {
                c.process = None;
                c.ready = false;
                c.started = false;
                c.backing_off = false;
            }
        });
    }

    pub(crate) fn set_ready(&self, id: &str, index: usize, passing: bool, error: Option<String>) {
        let mut change = None;
        self.with_record(id, false, |r| {
            let was = r.is_ready();
            if let Some(c) = r.containers.get_mut(index) {
                c.ready = passing;
                if passing {
                    c.ready_since_start = true;
                }
            }
            if was != r.is_ready() || !passing {
                change = Some((r.app.clone(), r.is_ready()));
            }
        });
        match change {
            Some((app, true)) => {
                self.emit(
                    EventType::Normal,
                    "Ready",
                    &app,
                    Some(id),
                    "instance is ready",
                );
                self.kick.notify_one();
            }
            Some((app, false)) => self.emit(
                EventType::Warning,
                "Unhealthy",
                &app,
                Some(id),
                format!(
                    "readiness probe failed: {}",
                    error.unwrap_or_else(|| "unknown error".to_owned())
                ),
            ),
            None => {}
        }
    }

    /// Marks `id` as stopping for `intent`: signals its supervisor, or finishes at once when it
    /// has none. Returns the supervisor's completion signal.
    pub(crate) fn begin_stop(
        &self,
        st: &mut State,
        id: &str,
        intent: StopIntent,
    ) -> Option<watch::Receiver<bool>> {
        let rec = st.instances.get_mut(id)?;
        if rec.stopping.is_some() {
            return st.runtimes.get(id).map(|r| r.done.clone());
        }
        rec.stopping = Some(intent.clone());
        let app = rec.app.clone();
        if let Some(rt) = st.runtimes.get(id) {
            let done = rt.done.clone();
            // The supervisor may already have ended; then the intent is applied below.
            let _ = rt.stop.send(true);
            self.emit(
                EventType::Normal,
                "Killing",
                &app,
                Some(id),
                match intent {
                    StopIntent::Remove => "stopping instance".to_owned(),
                    StopIntent::Move(rev) => format!("stopping instance to move it to {rev}"),
                    StopIntent::Shutdown => "stopping instance: engine shutdown".to_owned(),
                    StopIntent::NodeLost(node) => {
                        format!("node {node} is not ready: instance killed, to be placed again")
                    }
                },
            );
            Some(done)
        } else {
            self.apply_stop(st, id);
            None
        }
    }

    /// Applies a finished stop to the record (under the state lock).
    pub(crate) fn apply_stop(&self, st: &mut State, id: &str) {
        st.runtimes.remove(id);
        let Some(rec) = st.instances.get_mut(id) else {
            return;
        };
        let Some(intent) = rec.stopping.take() else {
            // The supervisor ended without a stop request (the engine is closing).
            return;
        };
        let app = rec.app.clone();
        let stateful = rec.ordinal.is_some();
        if let Some(node) = rec.node.take() {
            rec.last_node = Some(node);
        }
        // The placement released its reservation when the supervisor ended.
        rec.reserved = None;
        let previous = rec.attachment.take();
        if stateful && previous.is_some() {
            rec.previous_attachment = previous;
        }
        for c in &mut rec.containers {
            c.process = None;
            c.started = false;
            c.ready = false;
            c.ready_since_start = false;
            c.backing_off = false;
        }
        match intent {
            StopIntent::Remove => {
                st.instances.remove(id);
                let dir = self.instance_dir(id);
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, dir = %dir.display(), "cannot remove instance directory");
                }
                self.emit(
                    EventType::Normal,
                    "Removed",
                    &app,
                    Some(id),
                    "instance removed",
                );
            }
            StopIntent::Move(revision) => {
                let containers = st
                    .apps
                    .get(&app.to_string())
                    .and_then(|a| a.specs.get(&revision))
                    .map(container_records);
                if let Some(rec) = st.instances.get_mut(id) {
                    rec.revision = revision;
                    rec.reason = None;
                    if let Some(containers) = containers {
                        rec.containers = containers;
                    }
                }
            }
            StopIntent::Shutdown => rec.stopped = true,
            StopIntent::NodeLost(node) => {
                rec.reason = Some(format!(
                    "node {node} is not ready; waiting to be placed again"
                ));
            }
        }
        self.reconcile(st, &app);
    }

    pub(crate) fn finish_stop(&self, id: &str) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut st = self.lock();
        self.apply_stop(&mut st, id);
        self.persist(&st);
        drop(st);
        self.kick.notify_one();
    }

    pub(crate) fn start_supervisor(
        self: &Arc<Self>,
        st: &mut State,
        id: &str,
        adopt: bool,
        stop_now: bool,
    ) {
        let (stop_tx, stop_rx) = watch::channel(stop_now);
        let (done_tx, done_rx) = watch::channel(false);
        let task = tokio::spawn(supervise::run_instance(
            self.clone(),
            id.to_owned(),
            stop_rx,
            done_tx,
            adopt,
        ));
        st.runtimes.insert(
            id.to_owned(),
            Runtime {
                stop: stop_tx,
                done: done_rx,
                abort: task.abort_handle(),
            },
        );
    }
}
