//! The engine checks: apply, scale and delete, revisions, stateful identities, events, bad
//! input.

use std::collections::BTreeMap;

use futures::{FutureExt, StreamExt};

use super::{CheckResult, Failure, Harness};
use crate::engine::GroupStatus;
use crate::model::{AppKey, AppSpec, Instance, InstancePhase, Revision, WorkloadKind};

/// Counts of one group as `(desired, current, ready, available)`.
fn counts(g: &GroupStatus) -> (u32, u32, u32, u32) {
    (g.desired, g.current, g.ready, g.available)
}

/// The group of `revision` among `groups`.
fn group<'a>(groups: &'a [GroupStatus], revision: &Revision) -> Option<&'a GroupStatus> {
    groups.iter().find(|g| &g.revision == revision)
}

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id.clone()).collect()
}

/// Waits until `spec`'s group has exactly `n` instances, all ready, and the counts say so;
/// returns its instances.
async fn settled(
    h: &Harness,
    check: &'static str,
    spec: &AppSpec,
    n: u32,
) -> Result<Vec<Instance>, Failure> {
    let key = spec.key();
    let revision = spec.revision();
    let engine = h.engine();
    h.wait_for(
        check,
        &format!("{key} at {revision}: {n} ready"),
        || async {
            let groups = engine
                .groups(&key)
                .await
                .map_err(|e| format!("groups: {e}"))?;
            let instances: Vec<Instance> = engine
                .instances(&key)
                .await
                .map_err(|e| format!("instances: {e}"))?
                .into_iter()
                .filter(|i| i.revision == revision)
                .collect();
            let g = group(&groups, &revision).map(counts);
            let all_ready = instances.len() == n as usize && instances.iter().all(|i| i.ready);
            if g == Some((n, n, n, n)) && all_ready {
                Ok(Some(instances))
            } else {
                Err(format!(
                    "counts (desired, current, ready, available) {g:?}; instances {:?}",
                    instances
                        .iter()
                        .map(|i| (i.id.as_str(), i.phase, i.ready))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// Waits until `key` has no groups and no instances.
async fn gone(h: &Harness, check: &'static str, key: &AppKey) -> CheckResult {
    let engine = h.engine();
    h.wait_for(check, &format!("{key} gone"), || async {
        let groups = engine
            .groups(key)
            .await
            .map_err(|e| format!("groups: {e}"))?;
        let instances = engine
            .instances(key)
            .await
            .map_err(|e| format!("instances: {e}"))?;
        if groups.is_empty() && instances.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!(
                "groups {:?}; instances {:?}",
                groups.iter().map(counts).collect::<Vec<_>>(),
                ids(&instances)
            ))
        }
    })
    .await
}

/// An invalid spec is refused with an error and starts nothing.
pub async fn invalid_spec_starts_nothing(h: &Harness) -> CheckResult {
    const CHECK: &str = "invalid_spec_starts_nothing";
    let mut spec = h.spec("invalid", "v1");
    spec.containers.clear();
    let engine = h.engine();
    if engine.apply_group(&spec, 1).await.is_ok() {
        return Err(Failure::new(
            CHECK,
            "a spec without containers was accepted",
        ));
    }
    let groups = engine
        .groups(&spec.key())
        .await
        .map_err(|e| Failure::new(CHECK, format!("groups: {e}")))?;
    if !groups.is_empty() {
        return Err(Failure::new(
            CHECK,
            format!("the refused spec left groups: {:?}", groups),
        ));
    }
    Ok(())
}

/// Applying, scaling and deleting are idempotent and the counts follow: applying a group twice
/// restarts nothing, scaling to the current count changes nothing, scaling down removes
/// instances, deleting twice succeeds and leaves nothing.
pub async fn apply_scale_delete_are_idempotent(h: &Harness) -> CheckResult {
    const CHECK: &str = "apply_scale_delete_are_idempotent";
    let fail = |what: &str, e: crate::Error| Failure::new(CHECK, format!("{what}: {e}"));
    let engine = h.engine();
    let spec = h.spec("idem", "v1");
    let (key, revision) = (spec.key(), spec.revision());
    let first = engine
        .apply_group(&spec, 3)
        .await
        .map_err(|e| fail("apply", e))?;
    if first.desired != 3 || first.revision != revision {
        return Err(Failure::new(
            CHECK,
            format!("apply answered {first:?}, not 3 desired at {revision}"),
        ));
    }
    let before = ids(&settled(h, CHECK, &spec, 3).await?);
    let again = engine
        .apply_group(&spec, 3)
        .await
        .map_err(|e| fail("apply again", e))?;
    if again.desired != 3 {
        return Err(Failure::new(
            CHECK,
            format!("apply again answered {again:?}"),
        ));
    }
    engine
        .scale_group(&key, &revision, 3)
        .await
        .map_err(|e| fail("scale to the same count", e))?;
    let after = ids(&settled(h, CHECK, &spec, 3).await?);
    if before != after {
        return Err(Failure::new(
            CHECK,
            format!("applying again replaced instances: {before:?} became {after:?}"),
        ));
    }
    if !engine
        .apps()
        .await
        .map_err(|e| fail("apps", e))?
        .contains(&key)
    {
        return Err(Failure::new(CHECK, format!("apps() does not list {key}")));
    }
    let scaled = engine
        .scale_group(&key, &revision, 1)
        .await
        .map_err(|e| fail("scale down", e))?;
    if scaled.desired != 1 {
        return Err(Failure::new(
            CHECK,
            format!("scale to 1 answered {scaled:?}"),
        ));
    }
    let left = ids(&settled(h, CHECK, &spec, 1).await?);
    if !before.contains(&left[0]) {
        return Err(Failure::new(
            CHECK,
            format!("scaling down started a new instance {left:?} (had {before:?})"),
        ));
    }
    engine
        .delete_group(&key, &revision)
        .await
        .map_err(|e| fail("delete", e))?;
    engine
        .delete_group(&key, &revision)
        .await
        .map_err(|e| fail("delete again", e))?;
    gone(h, CHECK, &key).await?;
    if engine
        .apps()
        .await
        .map_err(|e| fail("apps", e))?
        .contains(&key)
    {
        return Err(Failure::new(CHECK, format!("apps() still lists {key}")));
    }
    Ok(())
}

/// Two revisions of one application are two groups counted apart; deleting one leaves the
/// other running.
pub async fn revisions_are_counted_apart(h: &Harness) -> CheckResult {
    const CHECK: &str = "revisions_are_counted_apart";
    let fail = |what: &str, e: crate::Error| Failure::new(CHECK, format!("{what}: {e}"));
    let engine = h.engine();
    let v1 = h.spec("revs", "v1");
    let v2 = h.spec("revs", "v2");
    if v1.revision() == v2.revision() {
        return Err(Failure::new(
            CHECK,
            "the harness's spec gives the same revision for versions v1 and v2",
        ));
    }
    let key = v1.key();
    engine
        .apply_group(&v1, 1)
        .await
        .map_err(|e| fail("apply v1", e))?;
    engine
        .apply_group(&v2, 2)
        .await
        .map_err(|e| fail("apply v2", e))?;
    settled(h, CHECK, &v1, 1).await?;
    settled(h, CHECK, &v2, 2).await?;
    let groups = engine.groups(&key).await.map_err(|e| fail("groups", e))?;
    let desired: BTreeMap<String, u32> = groups
        .iter()
        .map(|g| (g.revision.to_string(), g.desired))
        .collect();
    let want = BTreeMap::from([
        (v1.revision().to_string(), 1),
        (v2.revision().to_string(), 2),
    ]);
    if desired != want {
        return Err(Failure::new(
            CHECK,
            format!("groups {desired:?}, expected {want:?}"),
        ));
    }
    engine
        .delete_group(&key, &v1.revision())
        .await
        .map_err(|e| fail("delete v1", e))?;
    let v2_ids = ids(&settled(h, CHECK, &v2, 2).await?);
    h.wait_for(CHECK, "only v2's instances left", || async {
        let all = engine
            .instances(&key)
            .await
            .map_err(|e| format!("instances: {e}"))?;
        if ids(&all) == v2_ids {
            Ok(Some(()))
        } else {
            Err(format!("instances {:?}, v2's are {v2_ids:?}", ids(&all)))
        }
    })
    .await?;
    engine
        .delete_group(&key, &v2.revision())
        .await
        .map_err(|e| fail("delete v2", e))?;
    gone(h, CHECK, &key).await
}

/// A stateful application's identities `name-0 … name-(n-1)` start in order (an identity
/// may wait, Pending, but leaves Pending only when every lower one is ready), scaling down removes the highest, and
/// [`Engine::move_identity`](crate::engine::Engine::move_identity) moves one identity to
/// another revision in place while the others stay (moving it again changes nothing).
pub async fn stateful_identities_start_in_order_and_move(h: &Harness) -> CheckResult {
    const CHECK: &str = "stateful_identities_start_in_order_and_move";
    let fail = |what: &str, e: crate::Error| Failure::new(CHECK, format!("{what}: {e}"));
    let engine = h.engine();
    let v1 = h.spec("set", "v1").kind(WorkloadKind::Stateful);
    let v2 = h.spec("set", "v2").kind(WorkloadKind::Stateful);
    let key = v1.key();
    engine
        .apply_group(&v1, 3)
        .await
        .map_err(|e| fail("apply", e))?;
    // Every observation while they start: the identities form a prefix 0..k, and none has
    // started before every lower one was ready.
    let started = h
        .wait_for(CHECK, "3 identities ready, started in order", || async {
            let list = engine
                .instances(&key)
                .await
                .map_err(|e| format!("instances: {e}"))?;
            let mut ordinals: Vec<Option<u32>> = list.iter().map(|i| i.ordinal).collect();
            ordinals.sort();
            let prefix: Vec<Option<u32>> = (0..list.len() as u32).map(Some).collect();
            if ordinals != prefix {
                return Ok(Some(Err(format!(
                    "identities are not a prefix 0..{}: {ordinals:?}",
                    list.len()
                ))));
            }
            let mut by_ordinal = list.clone();
            by_ordinal.sort_by_key(|i| i.ordinal);
            // An identity may exist while it waits (Pending), but it starts only once every
            // lower one is ready.
            let started = by_ordinal
                .iter()
                .rposition(|i| i.phase != InstancePhase::Pending);
            if let Some(s) = started
                && let Some(unready) = by_ordinal[..s].iter().find(|i| !i.ready)
            {
                return Ok(Some(Err(format!(
                    "{} started ({:?}) while {} is not ready",
                    by_ordinal[s].id, by_ordinal[s].phase, unready.id
                ))));
            }
            if list.len() == 3 && list.iter().all(|i| i.ready) {
                Ok(Some(Ok(by_ordinal)))
            } else {
                Err(format!(
                    "instances {:?}",
                    list.iter()
                        .map(|i| (i.id.as_str(), i.ready))
                        .collect::<Vec<_>>()
                ))
            }
        })
        .await?
        .map_err(|d| Failure::new(CHECK, d))?;
    let names: Vec<String> = ids(&started);
    let want: Vec<String> = (0..3).map(|k| format!("{}-{k}", key.name)).collect();
    if names != want {
        return Err(Failure::new(
            CHECK,
            format!("identities {names:?}, expected {want:?}"),
        ));
    }
    engine
        .apply_group(&v1, 2)
        .await
        .map_err(|e| fail("apply 2", e))?;
    let two = settled(h, CHECK, &v1, 2).await?;
    if ids(&two) != want[..2] {
        return Err(Failure::new(
            CHECK,
            format!("scaling to 2 left {:?}, not the two lowest", ids(&two)),
        ));
    }
    let moved = engine
        .move_identity(&v2, 1)
        .await
        .map_err(|e| fail("move identity 1", e))?;
    if moved.revision != v2.revision() || moved.ordinal != Some(1) {
        return Err(Failure::new(
            CHECK,
            format!(
                "move_identity answered {} at {} (ordinal {:?})",
                moved.id, moved.revision, moved.ordinal
            ),
        ));
    }
    let (rev1, rev2) = (v1.revision(), v2.revision());
    h.wait_for(CHECK, "identity 1 ready at v2, 0 still at v1", || async {
        let list = engine
            .instances(&key)
            .await
            .map_err(|e| format!("instances: {e}"))?;
        let seen: Vec<(Option<u32>, String, bool)> = list
            .iter()
            .map(|i| (i.ordinal, i.revision.to_string(), i.ready))
            .collect();
        let want = vec![
            (Some(0), rev1.to_string(), true),
            (Some(1), rev2.to_string(), true),
        ];
        if seen == want {
            Ok(Some(()))
        } else {
            Err(format!("(ordinal, revision, ready) {seen:?}"))
        }
    })
    .await?;
    let again = engine
        .move_identity(&v2, 1)
        .await
        .map_err(|e| fail("move identity 1 again", e))?;
    if again.revision != v2.revision() {
        return Err(Failure::new(
            CHECK,
            format!("moving again answered revision {}", again.revision),
        ));
    }
    // A stateful set's groups share its identities: scale them to none, then delete.
    engine
        .scale_group(&key, &rev2, 0)
        .await
        .map_err(|e| fail("scale to 0", e))?;
    for rev in [&rev1, &rev2] {
        engine
            .delete_group(&key, rev)
            .await
            .map_err(|e| fail("delete", e))?;
    }
    gone(h, CHECK, &key).await
}

/// The event stream reports something about an application it started, naming the app.
pub async fn events_name_the_app(h: &Harness) -> CheckResult {
    const CHECK: &str = "events_name_the_app";
    let fail = |what: &str, e: crate::Error| Failure::new(CHECK, format!("{what}: {e}"));
    let engine = h.engine();
    let mut events = engine.events();
    let spec = h.spec("events", "v1");
    let key = spec.key();
    engine
        .apply_group(&spec, 1)
        .await
        .map_err(|e| fail("apply", e))?;
    settled(h, CHECK, &spec, 1).await?;
    let mut seen = Vec::new();
    let found = h
        .wait_for(CHECK, &format!("an event about {key}"), || {
            // Take what has arrived without waiting.
            while let Some(Some(e)) = events.next().now_or_never() {
                if e.app.as_ref() == Some(&key) {
                    return std::future::ready(Ok(Some(e)));
                }
                seen.push(format!("{:?} {}", e.app, e.reason));
            }
            std::future::ready(Err(format!("other events: {seen:?}")))
        })
        .await;
    engine
        .delete_group(&key, &spec.revision())
        .await
        .map_err(|e| fail("delete", e))?;
    gone(h, CHECK, &key).await?;
    found.map(drop)
}
