//! The supervisor of one placed instance: attach it, run each container's process, probe it,
//! restart it with backoff, and stop it gracefully.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::probe::{ProbeTarget, ProbeTracker, check, liveness};
use super::proc::{Launch, ProcIdentity, SupervisedProcess};
use crate::reconcile::Inner;
use rorqual_core::model::{AppSpec, EventType, Probe};
use rorqual_core::network::{AttachRequest, Attachment};

/// The environment variable name for port `name`: `PORT_` and the name upper-cased, `-` as `_`.
pub(crate) fn port_var(name: &str) -> String {
    format!("PORT_{}", name.to_uppercase().replace('-', "_"))
}

/// The environment of container `index` of an instance.
pub(crate) fn container_env(
    spec: &AppSpec,
    index: usize,
    id: &str,
    node: &str,
    ordinal: Option<u32>,
    attachment: &Attachment,
) -> BTreeMap<String, String> {
    let container = &spec.containers[index];
    let mut env = container.env.clone();
    let first = container
        .ports
        .first()
        .or_else(|| spec.ports().next())
        .and_then(|p| attachment.ports.get(&p.name));
    if let Some(port) = first {
        env.insert("PORT".into(), port.to_string());
    }
    for (name, port) in &attachment.ports {
        env.insert(port_var(name), port.to_string());
    }
    env.insert("INSTANCE_ID".into(), id.to_owned());
    env.insert("INSTANCE_IP".into(), attachment.address.to_string());
    env.insert("REVISION".into(), spec.revision().to_string());
    env.insert("NODE_NAME".into(), node.to_owned());
    env.insert("APP_NAME".into(), spec.name.clone());
    env.insert("NAMESPACE".into(), spec.namespace.clone());
    if let Some(o) = ordinal {
        env.insert("ORDINAL".into(), o.to_string());
    }
    env
}

async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    // An error means the engine dropped the sender: treat as a stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Sleeps `d` unless a stop comes first; returns whether it was stopped.
async fn sleep_or_stop(d: Duration, rx: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = stop_requested(rx) => true,
    }
}

fn prepare_dir(dir: &Path, spec: &AppSpec) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("work"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    for file in &spec.config_files {
        let path = dir.join("work").join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &file.content)?;
    }
    Ok(())
}

/// Runs instance `id` until it is asked to stop, then cleans up after it.
pub(crate) async fn run_instance(
    inner: Arc<Inner>,
    id: String,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    adopt: bool,
) {
    let span = tracing::info_span!("instance", instance = %id);
    async {
        if let Some((spec, rec)) = inner.spec_and_record(&id) {
            let node = rec.node.clone().unwrap_or_default();
            let attachment = match rec.attachment.clone().filter(|_| adopt) {
                Some(a) => Some(a),
                None => attach(&inner, &id, &spec, &rec, &node, &mut stop).await,
            };
            let dir = inner.instance_dir(&id);
            let mut prepared = false;
            let mut retries = inner.backoff.counter();
            // Adopted processes must be supervised (and stopped) even when stopping already.
            while attachment.is_some() && !prepared && (adopt || !*stop.borrow()) {
                match prepare_dir(&dir, &spec) {
                    Ok(()) => prepared = true,
                    Err(e) => {
                        let reason = format!("cannot prepare {}: {e}", dir.display());
                        inner.set_reason(&id, Some(reason.clone()));
                        inner.emit(EventType::Warning, "Failed", &rec.app, Some(&id), reason);
                        if sleep_or_stop(retries.next(), &mut stop).await {
                            break;
                        }
                    }
                }
            }
            if let (Some(attachment), true) = (attachment, prepared || adopt) {
                inner.set_reason(&id, None);
                let spec = Arc::new(spec);
                let containers = (0..spec.containers.len()).map(|index| {
                    let adopted = if adopt {
                        rec.containers.get(index).and_then(|c| c.process)
                    } else {
                        None
                    };
                    run_container(
                        inner.clone(),
                        id.clone(),
                        index,
                        spec.clone(),
                        node.clone(),
                        rec.ordinal,
                        attachment.clone(),
                        stop.clone(),
                        adopted,
                    )
                });
                futures::future::join_all(containers).await;
            }
        }
        if let Err(e) = inner.network.detach(&id).await {
            tracing::warn!(error = %e, "detach failed");
        }
        if let Err(e) = inner.placement.release(&id).await {
            tracing::warn!(error = %e, "placement release failed");
        }
        inner.finish_stop(&id);
        let _ = done.send(true);
    }
    .instrument(span)
    .await;
}

async fn attach(
    inner: &Arc<Inner>,
    id: &str,
    spec: &AppSpec,
    rec: &super::records::InstanceRecord,
    node: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Attachment> {
    let mut request = AttachRequest::new(id, spec.key(), node, spec.ports().cloned().collect());
    request.ordinal = rec.ordinal;
    request.previous = rec
        .ordinal
        .and(rec.previous_attachment.clone().or(rec.attachment.clone()));
    request.reserved = rec.reserved.clone();
    request.claim = spec.fixed_ip_claim(rec.ordinal);
    let mut retries = inner.backoff.counter();
    loop {
        if *stop.borrow() {
            return None;
        }
        match inner.network.attach(&request).await {
            Ok(a) => {
                inner.set_attachment(id, a.clone());
                return Some(a);
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(error = %reason, "attach failed");
                inner.set_reason(id, Some(reason.clone()));
                inner.emit(
                    EventType::Warning,
                    "FailedAttach",
                    &rec.app,
                    Some(id),
                    reason,
                );
                if sleep_or_stop(retries.next(), stop).await {
                    return None;
                }
            }
        }
    }
}

enum Outcome {
    Stop,
    Exited(String),
    Liveness(String),
}

#[allow(clippy::too_many_arguments)]
async fn run_container(
    inner: Arc<Inner>,
    id: String,
    index: usize,
    spec: Arc<AppSpec>,
    node: String,
    ordinal: Option<u32>,
    attachment: Attachment,
    mut stop: watch::Receiver<bool>,
    mut adopted: Option<ProcIdentity>,
) {
    let container = &spec.containers[index];
    let span = tracing::info_span!("container", container = %container.name);
    async {
        let app = spec.key();
        let grace = Duration::from_secs(spec.termination_grace_period_seconds);
        let dir = inner.instance_dir(&id);
        let env = container_env(&spec, index, &id, &node, ordinal, &attachment);
        let launch = Launch {
            command: container
                .command
                .iter()
                .chain(container.args.iter())
                .cloned()
                .collect(),
            env: env.clone(),
            cwd: dir.join("work"),
            log: dir.join("logs").join(format!("{}.log", container.name)),
            netns: attachment.netns.clone(),
        };
        let target = ProbeTarget {
            address: attachment.address,
            declared: spec.ports().cloned().collect(),
            ports: attachment.ports.clone(),
            cwd: dir.join("work"),
            env,
            netns: attachment.netns.clone(),
        };
        let mut restarts = inner.backoff.counter();
        loop {
            if *stop.borrow() && adopted.is_none() {
                inner.container_stopped(&id, index);
                return;
            }
            let was_adopted = adopted.is_some();
            let started = match adopted.take() {
                Some(identity) => Ok(SupervisedProcess::adopt(identity, inner.adopt_poll)),
                None => launch.spawn(),
            };
            let (reason, ran) = match started {
                Ok(mut running) => {
                    inner.container_started(
                        &id,
                        index,
                        running.identity(),
                        was_adopted,
                        container.readiness_probe.is_none(),
                    );
                    let outcome = tokio::select! {
                        biased;
                        () = stop_requested(&mut stop) => Outcome::Stop,
                        exit = running.wait() => Outcome::Exited(exit.to_string()),
                        msg = liveness(container.liveness_probe.as_ref(), &target) => Outcome::Liveness(msg),
                        never = readiness(&inner, &id, index, container.readiness_probe.as_ref(), &target) => match never {},
                    };
                    match outcome {
                        Outcome::Stop => {
                            let exit = running.stop(grace).await;
                            tracing::info!(%exit, "container stopped");
                            inner.container_stopped(&id, index);
                            return;
                        }
                        Outcome::Liveness(msg) => {
                            inner.emit(
                                EventType::Warning,
                                "Unhealthy",
                                &app,
                                Some(&id),
                                format!("liveness probe failed: {msg}"),
                            );
                            inner.emit(
                                EventType::Normal,
                                "Killing",
                                &app,
                                Some(&id),
                                format!(
                                    "container {} failed liveness probe, will be restarted",
                                    container.name
                                ),
                            );
                            running.stop(grace).await;
                            (
                                format!("liveness probe failed: {msg}"),
                                running.started().elapsed(),
                            )
                        }
                        Outcome::Exited(reason) => (reason, running.started().elapsed()),
                    }
                }
                Err(e) => (format!("failed to start: {e}"), Duration::ZERO),
            };
            // As the kubelet: a container that ran for twice the longest delay was healthy, and
            // its earlier failures are forgotten.
            if ran >= inner.backoff.max.saturating_mul(2) {
                restarts.reset();
            }
            let delay = restarts.next();
            tracing::warn!(%reason, ?delay, "container ended; restarting after backoff");
            inner.container_exited(&id, index, &reason, delay);
            if sleep_or_stop(delay, &mut stop).await {
                inner.container_stopped(&id, index);
                return;
            }
            inner.container_restarting(&id, index);
        }
    }
    .instrument(span)
    .await;
}

async fn readiness(
    inner: &Arc<Inner>,
    id: &str,
    index: usize,
    probe: Option<&Probe>,
    target: &ProbeTarget,
) -> Infallible {
    let Some(probe) = probe else {
        return std::future::pending().await;
    };
    tokio::time::sleep(Duration::from_secs_f64(probe.initial_delay_seconds)).await;
    let mut tracker = ProbeTracker::new(probe, false);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(probe.period_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check(probe, target).await;
        if let Some(passing) = tracker.record(result.is_ok()) {
            inner.set_ready(id, index, passing, result.err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rorqual_core::model::ContainerSpec;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn environment_names_the_instance() {
        let spec = AppSpec::new(
            "game",
            vec![
                ContainerSpec::new("server", ["/bin/game"])
                    .port("game-udp", 7000)
                    .port("admin", 8080)
                    .env("PORT", "overridden"),
            ],
        );
        let attachment = Attachment::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            BTreeMap::from([("game-udp".to_owned(), 21000), ("admin".to_owned(), 21001)]),
        );
        let env = container_env(&spec, 0, "game-2", "node-1", Some(2), &attachment);
        assert_eq!(env["PORT"], "21000");
        assert_eq!(env["PORT_GAME_UDP"], "21000");
        assert_eq!(env["PORT_ADMIN"], "21001");
        assert_eq!(env["INSTANCE_ID"], "game-2");
        assert_eq!(env["INSTANCE_IP"], "127.0.0.1");
        assert_eq!(env["NODE_NAME"], "node-1");
        assert_eq!(env["APP_NAME"], "game");
        assert_eq!(env["NAMESPACE"], "default");
        assert_eq!(env["ORDINAL"], "2");
        assert_eq!(env["REVISION"], spec.revision().to_string());
    }
}
