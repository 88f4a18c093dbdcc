//! Checks every [`Provider`] must pass (feature `testing`): the seam's contract run against a
//! real service, so each provider's integration tests call [`check`] once instead of
//! re-testing idempotency by hand.
//!
//! [`check`] drives one resource through its life: missing at first, created (twice when
//! names are deterministic: the second create is not an "already exists" failure), observed
//! up to date (twice, with the same answer: observing changes nothing), reported not up to
//! date against other parameters, updated to them and observed up to date again, deleted
//! (twice: deleting a missing resource succeeds) and missing at the end.

use std::time::Duration;

use serde_json::Value;

use crate::provider::{ExternalClient, ExternalRef, Observation, Provider};

/// How long [`check`] waits for a service to show a created or updated resource.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Which step of [`check`] failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("provider conformance step `{step}` failed: {message}")]
#[non_exhaustive]
pub struct ConformanceError {
    /// The step (`second create`).
    pub step: &'static str,
    /// What went wrong.
    pub message: String,
}

fn fail(step: &'static str, message: impl Into<String>) -> ConformanceError {
    ConformanceError {
        step,
        message: message.into(),
    }
}

/// Runs the contract against `provider` with a resource named `name` (it must not exist),
/// created with `parameters` and updated to `changed` (which must differ observably).
///
/// # Errors
///
/// The first step that broke the contract. The resource may be left behind then.
pub async fn check(
    provider: &dyn Provider,
    name: &str,
    parameters: &Value,
    changed: &Value,
) -> Result<(), ConformanceError> {
    for (step, p) in [("validate", parameters), ("validate changed", changed)] {
        if let Err(problems) = provider.validate(p) {
            return Err(fail(step, format!("{problems:?}")));
        }
    }
    let requested = ExternalRef::new(name, name, parameters);
    let client = provider
        .connect(&requested)
        .await
        .map_err(|e| fail("connect", e.to_string()))?;
    let client = &*client;

    if observe(client, "observe before create", &requested)
        .await?
        .exists
    {
        return Err(fail(
            "observe before create",
            format!("`{name}` exists already"),
        ));
    }
    let creation = client
        .create(&requested)
        .await
        .map_err(|e| fail("create", e.to_string()))?;
    let external_name = match (
        creation.external_name,
        provider.deterministic_external_names(),
    ) {
        (Some(_), true) => {
            return Err(fail(
                "create",
                "returned an external name although names are deterministic",
            ));
        }
        (None, false) => {
            return Err(fail(
                "create",
                "returned no external name although the service chooses names",
            ));
        }
        (Some(generated), false) => generated,
        (None, true) => {
            client
                .create(&requested)
                .await
                .map_err(|e| fail("second create", e.to_string()))?;
            name.to_owned()
        }
    };
    let first = ExternalRef::new(name, &external_name, parameters);
    let second = ExternalRef::new(name, &external_name, changed);

    let observed = settle(client, "observe after create", &first).await?;
    let again = observe(client, "observe again", &first).await?;
    if !same(&observed, &again) {
        return Err(fail(
            "observe again",
            format!("two observations differ: {observed:?} then {again:?}"),
        ));
    }
    if observe(client, "observe changed parameters", &second)
        .await?
        .up_to_date
    {
        return Err(fail(
            "observe changed parameters",
            "the changed parameters are reported up to date",
        ));
    }
    client
        .update(&second)
        .await
        .map_err(|e| fail("update", e.to_string()))?;
    settle(client, "observe after update", &second).await?;
    for step in ["delete", "second delete"] {
        client
            .delete(&second)
            .await
            .map_err(|e| fail(step, e.to_string()))?;
    }
    if observe(client, "observe after delete", &second)
        .await?
        .exists
    {
        return Err(fail(
            "observe after delete",
            format!("`{external_name}` still exists"),
        ));
    }
    client
        .disconnect()
        .await
        .map_err(|e| fail("disconnect", e.to_string()))
}

async fn observe(
    client: &dyn ExternalClient,
    step: &'static str,
    r: &ExternalRef<'_>,
) -> Result<Observation, ConformanceError> {
    client
        .observe(r)
        .await
        .map_err(|e| fail(step, e.to_string()))
}

/// Observations compared on what the reconciler acts on (connection details may rotate).
fn same(a: &Observation, b: &Observation) -> bool {
    (a.exists, a.up_to_date, &a.late_initialized, &a.at_provider)
        == (b.exists, b.up_to_date, &b.late_initialized, &b.at_provider)
}

/// Observes until the resource exists and is up to date, for at most [`SETTLE`].
async fn settle(
    client: &dyn ExternalClient,
    step: &'static str,
    r: &ExternalRef<'_>,
) -> Result<Observation, ConformanceError> {
    let started = tokio::time::Instant::now();
    loop {
        let o = observe(client, step, r).await?;
        if o.exists && o.up_to_date {
            return Ok(o);
        }
        if started.elapsed() >= SETTLE {
            return Err(fail(
                step,
                format!("not up to date after {SETTLE:?}: {o:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
