//! The state-store checks: compare-and-swap semantics and concurrent writers.

use super::{CheckResult, Failure};
use crate::Error;
use crate::engine::StateStore;

fn is_conflict(r: &crate::Result<u64>) -> bool {
    matches!(r, Err(Error::Conflict { .. }))
}

/// Compare-and-swap on one key: creating needs the key absent, writing needs the current
/// version, a mismatch is [`Error::Conflict`] and changes nothing, versions grow with every
/// write, deleting needs the current version, and `list` returns the keys under a prefix in
/// key order. Uses keys under `prefix` (which should be unique to the test) and removes them.
pub async fn state_store_compare_and_swap(store: &dyn StateStore, prefix: &str) -> CheckResult {
    const CHECK: &str = "state_store_compare_and_swap";
    let fail = |what: &str, e: Error| Failure::new(CHECK, format!("{what}: {e}"));
    let key = format!("{prefix}cas/a");
    if let Some(found) = store.get(&key).await.map_err(|e| fail("get", e))? {
        return Err(Failure::new(
            CHECK,
            format!(
                "`{key}` exists before the check (version {})",
                found.version
            ),
        ));
    }
    let v1 = store
        .compare_and_swap(&key, None, Some(b"one".to_vec()))
        .await
        .map_err(|e| fail("create", e))?;
    if v1 == 0 {
        return Err(Failure::new(CHECK, "a created key has version 0"));
    }
    let again = store
        .compare_and_swap(&key, None, Some(b"dup".to_vec()))
        .await;
    if !is_conflict(&again) {
        return Err(Failure::new(
            CHECK,
            format!("creating `{key}` twice answered {again:?}, not a conflict"),
        ));
    }
    let stale = store
        .compare_and_swap(&key, Some(v1 + 1000), Some(b"stale".to_vec()))
        .await;
    if !is_conflict(&stale) {
        return Err(Failure::new(
            CHECK,
            format!("a write with a wrong version answered {stale:?}, not a conflict"),
        ));
    }
    let got = store.get(&key).await.map_err(|e| fail("get", e))?;
    if got.as_ref().map(|v| (v.value.as_slice(), v.version)) != Some((b"one".as_slice(), v1)) {
        return Err(Failure::new(
            CHECK,
            format!("after refused writes `{key}` reads {got:?}, not `one` at version {v1}"),
        ));
    }
    let v2 = store
        .compare_and_swap(&key, Some(v1), Some(b"two".to_vec()))
        .await
        .map_err(|e| fail("update", e))?;
    if v2 <= v1 {
        return Err(Failure::new(
            CHECK,
            format!("the version went from {v1} to {v2} on a write"),
        ));
    }
    for k in ["cas/c", "cas/b"] {
        store
            .compare_and_swap(&format!("{prefix}{k}"), None, Some(k.as_bytes().to_vec()))
            .await
            .map_err(|e| fail("create", e))?;
    }
    let other = format!("{prefix}casX");
    store
        .compare_and_swap(&other, None, Some(b"x".to_vec()))
        .await
        .map_err(|e| fail("create", e))?;
    let listed: Vec<String> = store
        .list(&format!("{prefix}cas/"))
        .await
        .map_err(|e| fail("list", e))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let want: Vec<String> = ["cas/a", "cas/b", "cas/c"]
        .iter()
        .map(|k| format!("{prefix}{k}"))
        .collect();
    if listed != want {
        return Err(Failure::new(
            CHECK,
            format!("list answered {listed:?}, expected {want:?}"),
        ));
    }
    let wrong_delete = store.compare_and_swap(&key, Some(v1), None).await;
    if !is_conflict(&wrong_delete) {
        return Err(Failure::new(
            CHECK,
            format!("a delete with a stale version answered {wrong_delete:?}"),
        ));
    }
    store
        .compare_and_swap(&key, Some(v2), None)
        .await
        .map_err(|e| fail("delete", e))?;
    if let Some(v) = store.get(&key).await.map_err(|e| fail("get", e))? {
        return Err(Failure::new(
            CHECK,
            format!("`{key}` still reads {v:?} after its delete"),
        ));
    }
    // Clean up.
    for k in want.iter().skip(1).chain([&other]) {
        if let Some(v) = store.get(k).await.map_err(|e| fail("get", e))? {
            store
                .compare_and_swap(k, Some(v.version), None)
                .await
                .map_err(|e| fail("delete", e))?;
        }
    }
    Ok(())
}

/// `writers` concurrent writers each add 1 to their own count in one shared value `rounds`
/// times with read-compare-and-swap-retry: no writer ever finds its last write lost, and the
/// counts end at exactly `rounds` each. A call that fails in a retryable way (a busy remote
/// store) is retried a bounded number of times.
pub async fn state_store_concurrent_writers(
    store: &dyn StateStore,
    prefix: &str,
    writers: u32,
    rounds: u32,
) -> CheckResult {
    const CHECK: &str = "state_store_concurrent_writers";
    let fail = |what: &str, e: Error| Failure::new(CHECK, format!("{what}: {e}"));
    let key = format!("{prefix}counter");
    // The value is every writer's own count (`w0=3,w1=5`): a writer changes only its own, so
    // after a write that failed in an unknown way (a busy remote store) it can tell by reading
    // whether the write landed, even when another writer wrote on top of it since.
    type Counts = std::collections::BTreeMap<u32, u64>;
    let parse = |bytes: &[u8]| -> Result<Counts, Failure> {
        let garbage = || Failure::new(CHECK, format!("`{key}` holds garbage {bytes:?}"));
        let text = std::str::from_utf8(bytes).map_err(|_| garbage())?;
        text.split(',')
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (w, n) = f.split_once('=').ok_or_else(garbage)?;
                let w = w.strip_prefix('w').and_then(|w| w.parse().ok());
                Ok((w.ok_or_else(garbage)?, n.parse().map_err(|_| garbage())?))
            })
            .collect()
    };
    let render = |counts: &Counts| -> Vec<u8> {
        counts
            .iter()
            .map(|(w, n)| format!("w{w}={n}"))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()
    };
    const TRANSIENT_RETRIES: u32 = 20;
    let writer = |id: u32| {
        let (key, fail, parse, render) = (&key, &fail, &parse, &render);
        async move {
            let mut transient = 0u32;
            let mut retry = |e: Error, what: &str| {
                if e.is_retryable() && transient < TRANSIENT_RETRIES {
                    transient += 1;
                    Ok(())
                } else {
                    Err(fail(what, e))
                }
            };
            for round in 0..u64::from(rounds) {
                loop {
                    let current = match store.get(key).await {
                        Ok(c) => c,
                        Err(e) => {
                            retry(e, "get")?;
                            continue;
                        }
                    };
                    let (mut counts, version) = match &current {
                        Some(v) => (parse(&v.value)?, Some(v.version)),
                        None => (Counts::new(), None),
                    };
                    // What this writer wrote last must still be there: a store that let a
                    // concurrent write through with a stale version loses it.
                    let have = counts.get(&id).copied().unwrap_or(0);
                    if have != round {
                        return Err(Failure::new(
                            CHECK,
                            format!(
                                "writer {id}'s count went from {round} to {have}: an update was lost"
                            ),
                        ));
                    }
                    counts.insert(id, round + 1);
                    match store
                        .compare_and_swap(key, version, Some(render(&counts)))
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => {}
                        Err(e) => {
                            retry(e, "write")?;
                            // Landed anyway? Only this writer sets its own count.
                            if let Ok(Some(v)) = store.get(key).await
                                && parse(&v.value)?.get(&id) == Some(&(round + 1))
                            {
                                break;
                            }
                        }
                    }
                }
            }
            Ok::<(), Failure>(())
        }
    };
    let results = futures::future::join_all((0..writers).map(writer)).await;
    for r in results {
        r?;
    }
    let end = store.get(&key).await.map_err(|e| fail("get", e))?;
    let counts = match &end {
        Some(v) => parse(&v.value)?,
        None => Counts::new(),
    };
    let total: u64 = counts.values().sum();
    let want = u64::from(writers) * u64::from(rounds);
    if total != want || counts.values().any(|n| *n != u64::from(rounds)) {
        return Err(Failure::new(
            CHECK,
            format!(
                "{writers} writers × {rounds} increments ended at {total} ({counts:?}), not {want}"
            ),
        ));
    }
    if let Some(v) = end {
        store
            .compare_and_swap(&key, Some(v.version), None)
            .await
            .map_err(|e| fail("delete", e))?;
    }
    Ok(())
}
