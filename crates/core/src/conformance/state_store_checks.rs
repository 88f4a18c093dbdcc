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

/// `writers` concurrent writers each add 1 to a counter `rounds` times with
/// read-compare-and-swap-retry: the counter ends at exactly `writers × rounds` (no lost and no
/// doubled update). A call that fails in a retryable way (a busy remote store) is retried a
/// bounded number of times.
pub async fn state_store_concurrent_writers(
    store: &dyn StateStore,
    prefix: &str,
    writers: u32,
    rounds: u32,
) -> CheckResult {
    const CHECK: &str = "state_store_concurrent_writers";
    let fail = |what: &str, e: Error| Failure::new(CHECK, format!("{what}: {e}"));
    let key = format!("{prefix}counter");
    // Values are `count:writer:round`: unique per write, so a writer whose write failed in
    // an unknown way (a busy server) can tell by reading whether it landed.
    let parse = |bytes: &[u8]| -> Result<u64, Failure> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.split(':').next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure::new(CHECK, format!("`{key}` holds garbage {bytes:?}")))
    };
    const TRANSIENT_RETRIES: u32 = 20;
    let writer = |id: u32| {
        let (key, fail, parse) = (&key, &fail, &parse);
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
            for round in 0..rounds {
                loop {
                    let current = match store.get(key).await {
                        Ok(c) => c,
                        Err(e) => {
                            retry(e, "get")?;
                            continue;
                        }
                    };
                    let (n, version) = match &current {
                        Some(v) => (parse(&v.value)?, Some(v.version)),
                        None => (0, None),
                    };
                    let next = format!("{}:{id}:{round}", n + 1).into_bytes();
                    match store
                        .compare_and_swap(key, version, Some(next.clone()))
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => {}
                        Err(e) => {
                            retry(e, "write")?;
                            // Landed anyway? Then this round is done.
                            if let Ok(Some(v)) = store.get(key).await
                                && v.value == next
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
    let total = match &end {
        Some(v) => parse(&v.value)?,
        None => 0,
    };
    let want = u64::from(writers) * u64::from(rounds);
    if total != want {
        return Err(Failure::new(
            CHECK,
            format!("{writers} writers × {rounds} increments ended at {total}, not {want}"),
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
