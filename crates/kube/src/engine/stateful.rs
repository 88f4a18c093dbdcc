//! Stateful applications as a StatefulSet (`OrderedReady`, `OnDelete`) and a headless
//! Service. Identities keep their revision until moved: a new template reaches identity `k`
//! when [`move_identity`] deletes pod `<app>-k` and the controller recreates it (or when the
//! pod is deleted for another reason, an eviction or a drain: `OnDelete` recreates any deleted
//! pod from the current template).
//!
//! Scaling a stateful app sets its number of identities, as on the other engines; identities
//! added start at the template's revision, so scaling for another revision may only remove
//! identities (adding is refused, naming the template's revision), and scaling for a revision
//! the app does not run is `NotFound`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use rorqual_core::engine::GroupStatus;
use rorqual_core::error::{Error, Result};
use rorqual_core::model::{AppKey, AppSpec, Instance, InstancePhase, Revision, WorkloadKind};
use serde_json::json;

use super::errors::not_found;
use super::names::{FIELD_MANAGER, LABEL_REVISION, SCALE_MANAGER};
use super::{KubeEngine, encode, observe, render};

/// The set's replica count and template revision.
fn set_shape(set: &StatefulSet) -> (u32, Option<Revision>) {
    let spec = &set.spec;
    let replicas = spec
        .replicas
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1);
    let revision = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(LABEL_REVISION))
        .map(|r| Revision(r.clone()));
    (replicas, revision)
}

/// The revision of each identity `0..replicas`: its (not terminating) pod's, or `template`
/// for one whose pod does not exist yet.
fn identity_revisions(
    pods: &[Instance],
    replicas: u32,
    template: Option<&Revision>,
) -> Vec<Revision> {
    (0..replicas)
        .filter_map(|k| {
            pods.iter()
                .find(|i| i.ordinal == Some(k) && i.phase != InstancePhase::Terminating)
                .map(|i| i.revision.clone())
                .or_else(|| template.cloned())
        })
        .collect()
}

/// The set of `app`, from the cache or (when the cache has not seen it yet) the server.
pub(super) async fn current_set(
    engine: &KubeEngine,
    app: &AppKey,
) -> Result<Option<Arc<StatefulSet>>> {
    if let Some(s) = engine.inner.caches.stateful_set(&app.namespace, &app.name) {
        return Ok(Some(s));
    }
    let api: Api<StatefulSet> = engine.api(&app.namespace);
    let found = api.get_opt(&app.name).await.map_err(|e| {
        super::errors::kube_error(&engine.inner.server, &format!("read StatefulSet {app}"), e)
    })?;
    Ok(found.map(Arc::new))
}

pub(super) async fn apply(
    engine: &KubeEngine,
    spec: &AppSpec,
    replicas: u32,
) -> Result<GroupStatus> {
    let key = spec.key();
    let sets: Api<StatefulSet> = engine.api(&key.namespace);
    let services: Api<Service> = engine.api(&key.namespace);
    let cached = engine.inner.caches.stateful_set(&key.namespace, &key.name);
    engine.ensure_ours(&sets, cached, &key.name).await?;
    engine.ensure_ours(&services, None, &key.name).await?;
    let svc = render::headless_service(spec);
    let body = encode(format!("Service {key}"), &svc)?;
    engine
        .apply::<Service>(&services, &key.name, FIELD_MANAGER, &body)
        .await?;
    let set = render::stateful_set(spec, replicas, &engine.inner.options);
    let body = encode(format!("StatefulSet {key}"), &set)?;
    let applied = engine
        .apply::<StatefulSet>(&sets, &key.name, FIELD_MANAGER, &body)
        .await?;
    let status = groups(engine, &key, &applied)
        .into_iter()
        .find(|g| g.revision == spec.revision())
        .unwrap_or_else(|| GroupStatus::new(key, spec.revision(), replicas));
    Ok(status)
}

/// Whether the set may be scaled to `replicas` identities for `revision`, as the other engines
/// scale a stateful app: `replicas` is the number of identities, and identities added start
/// at `revision`. A StatefulSet creates new pods from its template only, so adding identities
/// for another revision than the template's is refused rather than started at the template's;
/// a revision neither the template nor any identity runs is not a group.
fn check_scale(
    app: &AppKey,
    revision: &Revision,
    replicas: u32,
    count: u32,
    template: Option<&Revision>,
    groups: &[GroupStatus],
) -> Result<()> {
    if !groups.iter().any(|g| &g.revision == revision) {
        return Err(not_found("group", format!("{app} at {revision}")));
    }
    match template {
        Some(t) if replicas > count && t != revision => Err(Error::BadRequest(format!(
            "cannot scale stateful {app} to {replicas} identities at revision {revision}: its \
             StatefulSet starts new identities from its template, at revision {t}; apply \
             {revision} first or scale revision {t}"
        ))),
        _ => Ok(()),
    }
}

pub(super) async fn scale(
    engine: &KubeEngine,
    app: &AppKey,
    revision: &Revision,
    replicas: u32,
) -> Result<GroupStatus> {
    let api: Api<StatefulSet> = engine.api(&app.namespace);
    // The server's set, not the cache's: an apply just before may have changed the template.
    let set = api
        .get_opt(&app.name)
        .await
        .map_err(|e| {
            super::errors::kube_error(&engine.inner.server, &format!("read StatefulSet {app}"), e)
        })?
        .ok_or_else(|| not_found("group", format!("{app} at {revision}")))?;
    let (count, template) = set_shape(&set);
    check_scale(
        app,
        revision,
        replicas,
        count,
        template.as_ref(),
        &groups(engine, app, &set),
    )?;
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": app.name, "namespace": app.namespace},
        "spec": {"replicas": replicas},
    });
    let applied = engine
        .apply::<StatefulSet>(&api, &app.name, SCALE_MANAGER, &body)
        .await?;
    Ok(groups(engine, app, &applied)
        .into_iter()
        .find(|g| &g.revision == revision)
        .unwrap_or_else(|| GroupStatus::new(app.clone(), revision.clone(), 0)))
}

/// Deletes `revision` of stateful `app`: the whole set (and its Service) when every identity
/// runs it, nothing when none does, refused otherwise. The caller's `_cached` set (from the
/// cache) only said the app is a managed StatefulSet; the decision reads the server's.
pub(super) async fn delete(
    engine: &KubeEngine,
    app: &AppKey,
    _cached: &StatefulSet,
    revision: &Revision,
) -> Result<()> {
    // The server's set, not the cache's `set`: a scale just before (to no identities, say)
    // may not have reached the cache yet.
    let sets: Api<StatefulSet> = engine.api(&app.namespace);
    let Some(set) = sets.get_opt(&app.name).await.map_err(|e| {
        super::errors::kube_error(&engine.inner.server, &format!("read StatefulSet {app}"), e)
    })?
    else {
        return Ok(());
    };
    if !super::names::is_managed(set.metadata.labels.as_ref()) {
        return Err(Error::BadRequest(format!(
            "StatefulSet {app} is no longer managed by rorqual; not deleting it"
        )));
    }
    let (replicas, template) = set_shape(&set);
    let pods = engine.inner.caches.instances(app, Some(&app.name));
    // Per identity below the count: its pod's revision, or the template's for one not started
    // yet (as `groups` counts them).
    let revisions = identity_revisions(&pods, replicas, template.as_ref());
    let at_rev = revisions.iter().filter(|r| *r == revision).count();
    let others = revisions.len() - at_rev;
    if at_rev > 0 && others > 0 {
        return Err(Error::BadRequest(format!(
            "cannot delete revision {revision} of stateful {app}: {others} identities run other \
             revisions; move or scale them first"
        )));
    }
    let whole_set = at_rev > 0 || (revisions.is_empty() && template.as_ref() == Some(revision));
    if !whole_set {
        return Ok(());
    }
    let services: Api<Service> = engine.api(&app.namespace);
    engine.delete(&sets, &app.name).await?;
    engine.ensure_ours(&services, None, &app.name).await?;
    engine.delete(&services, &app.name).await
}

/// The groups of stateful `app`: per revision, the identities below the set's count that run
/// it (an identity with no pod yet counts at the template's revision).
pub(super) fn groups(engine: &KubeEngine, app: &AppKey, set: &StatefulSet) -> Vec<GroupStatus> {
    let (replicas, template) = set_shape(set);
    let pods = engine.inner.caches.instances(app, Some(&app.name));
    let mut desired: BTreeMap<Revision, u32> = BTreeMap::new();
    for rev in identity_revisions(&pods, replicas, template.as_ref()) {
        *desired.entry(rev).or_default() += 1;
    }
    if let Some(t) = &template {
        desired.entry(t.clone()).or_default();
    }
    for p in &pods {
        desired.entry(p.revision.clone()).or_default();
    }
    desired
        .into_iter()
        .map(|(rev, want)| {
            let at: Vec<&Instance> = pods.iter().filter(|i| i.revision == rev).collect();
            let (current, ready, available) = observe::counts(&at);
            let mut g = GroupStatus::new(app.clone(), rev, want);
            g.current = current;
            g.ready = ready;
            g.available = available;
            g
        })
        .collect()
}

/// Whether pod `name` of `app` runs a template that differs from `spec`'s only in images.
fn in_place(engine: &KubeEngine, app: &AppKey, name: &str, spec: &AppSpec) -> bool {
    let Some(pod) = engine.inner.caches.pod(&app.namespace, name) else {
        return false;
    };
    let same_containers = pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .map(|c| &c.name)
            .eq(spec.containers.iter().map(|c| &c.name))
    });
    same_containers
        && pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(render::ANNOTATION_TEMPLATE_SANS_IMAGES))
            .is_some_and(|v| *v == render::template_sans_images(spec))
}

pub(super) async fn move_identity(
    engine: &KubeEngine,
    spec: &AppSpec,
    ordinal: u32,
) -> Result<Instance> {
    let key = spec.key();
    if spec.kind != WorkloadKind::Stateful {
        return Err(Error::BadRequest(format!(
            "move_identity: {key} is not stateful"
        )));
    }
    // From the server, not the cache: the count written back with the new template must be
    // the latest one (a scale a moment ago may not have reached the reflector).
    let sets: Api<StatefulSet> = engine.api(&key.namespace);
    let Some(set) = sets.get_opt(&key.name).await.map_err(|e| {
        super::errors::kube_error(&engine.inner.server, &format!("read StatefulSet {key}"), e)
    })?
    else {
        return Err(not_found("application", key.to_string()));
    };
    let set = Arc::new(set);
    let (replicas, _) = set_shape(&set);
    if ordinal >= replicas {
        return Err(Error::BadRequest(format!(
            "move_identity: {key} has {replicas} identities; there is no ordinal {ordinal}"
        )));
    }
    let revision = spec.revision();
    // The template first (keeping the count), so the recreated pod gets the new revision.
    let rendered = render::stateful_set(spec, replicas, &engine.inner.options);
    let body = encode(format!("StatefulSet {key}"), &rendered)?;
    let sets: Api<StatefulSet> = engine.api(&key.namespace);
    engine
        .ensure_ours(&sets, Some(set.clone()), &key.name)
        .await?;
    engine
        .apply::<StatefulSet>(&sets, &key.name, FIELD_MANAGER, &body)
        .await?;
    let pod_name = format!("{}-{ordinal}", key.name);
    let current = engine
        .inner
        .caches
        .instances(&key, Some(&key.name))
        .into_iter()
        .find(|i| i.id == pod_name);
    let pods: Api<Pod> = engine.api(&key.namespace);
    match current {
        Some(i) if i.revision == revision => Ok(i),
        Some(i) if in_place(engine, &key, &pod_name, spec) => {
            // Only images differ: patch them into the pod, which keeps its UID, node and
            // address (the game-server ideal); its node restarts the changed containers.
            let containers: Vec<serde_json::Value> = spec
                .containers
                .iter()
                .map(
                    |c| json!({"name": c.name, "image": render::image_of(c, &engine.inner.options)}),
                )
                .collect();
            let patch = json!({
                "metadata": {"labels": {LABEL_REVISION: revision.as_str()}},
                "spec": {"containers": containers},
            });
            pods.patch(
                &pod_name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(&patch),
            )
            .await
            .map_err(|e| {
                super::errors::kube_error(
                    &engine.inner.server,
                    &format!("patch the images of pod {}/{pod_name}", key.namespace),
                    e,
                )
            })?;
            let mut moved = i;
            moved.revision = revision;
            Ok(moved)
        }
        Some(_) => {
            engine.delete(&pods, &pod_name).await?;
            let mut moved = Instance::new(pod_name, key, revision, super::now());
            moved.ordinal = Some(ordinal);
            Ok(moved)
        }
        None => {
            let mut moved = Instance::new(pod_name, key, revision, super::now());
            moved.ordinal = Some(ordinal);
            Ok(moved)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(app: &AppKey, revisions: &[&str]) -> Vec<GroupStatus> {
        revisions
            .iter()
            .map(|r| GroupStatus::new(app.clone(), Revision((*r).to_owned()), 1))
            .collect()
    }

    #[test]
    fn scaling_checks_the_revision() {
        let app = AppKey::new("g", "game");
        let (v1, v2) = (Revision("v1".to_owned()), Revision("v2".to_owned()));
        let both = groups(&app, &["v1", "v2"]);
        // Identities added start at the template's revision: fine for it, refused for another.
        assert!(check_scale(&app, &v2, 3, 2, Some(&v2), &both).is_ok());
        let err = check_scale(&app, &v1, 3, 2, Some(&v2), &both).unwrap_err();
        assert!(
            matches!(&err, Error::BadRequest(m) if m.contains("revision v2")),
            "{err}"
        );
        // Fewer or as many identities: the count is the set's, whichever revision asks.
        assert!(check_scale(&app, &v1, 1, 2, Some(&v2), &both).is_ok());
        assert!(check_scale(&app, &v1, 2, 2, Some(&v2), &both).is_ok());
        // A revision no identity and no template runs is no group.
        let err =
            check_scale(&app, &Revision("v9".to_owned()), 1, 2, Some(&v2), &both).unwrap_err();
        assert!(
            matches!(err, Error::NotFound { kind: "group", .. }),
            "{err}"
        );
    }
}
