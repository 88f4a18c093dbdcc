//! The approvals API in process and over HTTP (axum router driven with tower's `oneshot`),
//! in memory and over a file-backed state store across a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rorqual_core::model::{AppKey, Revision};
use rorqual_local::FileStateStore;
use rorqual_release::approval::{
    ApprovalContext, ApprovalError, ApprovalGate, ApprovalKey, ApprovalRequest, Approvals,
};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app() -> AppKey {
    AppKey::new("games", "lobby")
}

fn rev() -> Revision {
    Revision::from("9f1c2a7b3d")
}

fn key(attempt: u64, step: usize) -> ApprovalKey {
    ApprovalKey::new(app(), rev(), attempt, step)
}

async fn call(
    approvals: &Approvals,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let resp = approvals.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn approve_over_http_records_who_and_when() {
    let approvals = Approvals::new();
    let req = ApprovalRequest::new(key(1, 3), "promote to 100%?").context(
        ApprovalContext::new()
            .cluster("sh-1")
            .step_count(4)
            .updated_percent(50)
            .released_by("dana")
            .commit("e4f5a6b"),
    );
    approvals.request(&req).await.unwrap();
    approvals.request(&req).await.unwrap(); // idempotent

    let (status, list) = call(&approvals, "GET", "/approvals", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "pending");
    assert_eq!(list[0]["message"], "promote to 100%?");
    assert_eq!(list[0]["attempt"], 1);
    assert_eq!(
        list[0]["context"],
        json!({"cluster": "sh-1", "stepCount": 4, "updatedPercent": 50,
               "releasedBy": "dana", "commit": "e4f5a6b"})
    );

    let uri = "/approvals/games/lobby/9f1c2a7b3d/3/approve";
    let (status, record) = call(
        &approvals,
        "POST",
        uri,
        Some(json!({"by": "alice", "comment": "metrics fine"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["state"], "approved");
    assert_eq!(record["decision"]["by"], "alice");
    assert_eq!(record["decision"]["comment"], "metrics fine");
    assert!(record["decision"]["at"].as_str().unwrap().ends_with('Z'));

    let d = approvals.decision(&key(1, 3)).await.unwrap().unwrap();
    assert!(d.approved);
    assert_eq!(d.by, "alice");
    assert!(d.at <= std::time::SystemTime::now());
    assert!(approvals.pending().await.unwrap().is_empty());

    // The same call again (a client retrying) answers the recorded decision.
    let (status, again) = call(&approvals, "POST", uri, Some(json!({"by": "alice"}))).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["decision"]["comment"], "metrics fine");

    // Deciding differently is refused: decisions are final.
    let reject = "/approvals/games/lobby/9f1c2a7b3d/3/reject";
    let (status, body) = call(&approvals, "POST", reject, Some(json!({"by": "bob"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        "games/lobby revision 9f1c2a7b3d attempt 1 step 3 was already approved by alice"
    );

    let (status, record) = call(
        &approvals,
        "GET",
        "/approvals/games/lobby/9f1c2a7b3d/3",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "approved");
}

#[tokio::test]
async fn reject_and_bad_requests() {
    let approvals = Approvals::new();
    approvals
        .request(&ApprovalRequest::new(key(1, 1), "go?"))
        .await
        .unwrap();

    // Unknown step, app and revision: 404 naming it and what was requested instead.
    let (status, body) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/7/approve",
        Some(json!({"by": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        "no approval was requested for games/lobby revision 9f1c2a7b3d step 7 (attempt 1 \
         asked for step 1)"
    );
    let (status, body) = call(
        &approvals,
        "GET",
        "/approvals/games/arena/9f1c2a7b3d/1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .ends_with("(no approval was requested for games/arena)"),
        "{body}"
    );
    let (status, body) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/0000000000/1/reject",
        Some(json!({"by": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("games/lobby has requests for revision 9f1c2a7b3d only"),
        "{body}"
    );

    // No approver, malformed body, malformed step.
    let (status, body) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/1/approve",
        Some(json!({"by": " "})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("`by`"), "{body}");
    let (status, _) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/1/approve",
        Some(json!({"who": "a"})),
    )
    .await;
    assert!(status.is_client_error());
    let (status, _) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/x/approve",
        Some(json!({"by": "a"})),
    )
    .await;
    assert!(status.is_client_error());
    assert_eq!(approvals.decision(&key(1, 1)).await.unwrap(), None);

    let (status, record) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/1/reject",
        Some(json!({"by": "carol"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "rejected");
    let d = approvals.decision(&key(1, 1)).await.unwrap().unwrap();
    assert!(!d.approved && d.by == "carol" && d.comment.is_none());
}

/// The HTTP API addresses the newest attempt of a release: a retried release asks again, and
/// the operator's decision goes to the retry, never to the attempt that ended.
#[tokio::test]
async fn the_newest_attempt_is_addressed() {
    let approvals = Approvals::new();
    approvals
        .request(&ApprovalRequest::new(key(1, 1), "first try?"))
        .await
        .unwrap();
    approvals.reject(&key(1, 1), "bob", None).await.unwrap();
    approvals
        .request(&ApprovalRequest::new(key(2, 1), "second try?"))
        .await
        .unwrap();
    let (_, list) = call(&approvals, "GET", "/approvals", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["attempt"], 2);
    let (status, record) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/1/approve",
        Some(json!({"by": "alice"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["attempt"], 2);
    assert!(
        approvals
            .decision(&key(2, 1))
            .await
            .unwrap()
            .unwrap()
            .approved
    );
    assert!(
        !approvals
            .decision(&key(1, 1))
            .await
            .unwrap()
            .unwrap()
            .approved
    );
}

/// Approvals over a file-backed state store: a request made before a restart is listed by the
/// restarted process, approved over its HTTP API, and the decision is read after another
/// restart.
#[tokio::test]
async fn a_restart_keeps_requests_and_decisions_in_the_state_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.log");
    let req = ApprovalRequest::new(key(4, 2), "promote to 50%?")
        .context(ApprovalContext::new().step_count(5).updated_percent(20));
    {
        let approvals = Approvals::with_store(Arc::new(FileStateStore::open(&path).unwrap()));
        approvals.request(&req).await.unwrap();
        // Dropping the last handle closes the store (and releases its lock).
    }

    let approvals = Approvals::with_store(Arc::new(FileStateStore::open(&path).unwrap()));
    let (status, list) = call(&approvals, "GET", "/approvals", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["message"], "promote to 50%?");
    assert_eq!(list[0]["attempt"], 4);
    assert_eq!(list[0]["context"]["stepCount"], 5);
    let (status, record) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/2/approve",
        Some(json!({"by": "alice", "comment": "after the restart"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    // The gate of the restarted controller reads it.
    let gate: Arc<dyn ApprovalGate> = Arc::new(approvals.clone());
    assert!(gate.decision(&req.key).await.unwrap().unwrap().approved);
    drop((gate, approvals));

    let reopened = Approvals::with_store(Arc::new(FileStateStore::open(&path).unwrap()));
    let d = reopened.decision(&req.key).await.unwrap().unwrap();
    assert_eq!(
        (d.approved, d.by.as_str(), d.comment.as_deref()),
        (true, "alice", Some("after the restart"))
    );
    assert!(reopened.pending().await.unwrap().is_empty());
    assert_eq!(reopened.get(&req.key).await.unwrap().unwrap().request, req);
}

#[tokio::test]
async fn in_process_api() {
    let approvals = Approvals::new();
    let err = approvals
        .approve(&key(1, 0), "alice", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApprovalError::NotFound { .. }), "{err}");
    for step in [2, 0] {
        approvals
            .request(&ApprovalRequest::new(key(1, step), format!("step {step}")))
            .await
            .unwrap();
    }
    let pending = approvals.pending().await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].request.key.step, 2, "oldest request first");
    approvals
        .reject(&key(1, 0), "bob", Some("error budget spent".into()))
        .await
        .unwrap();
    assert_eq!(approvals.pending().await.unwrap().len(), 1);
    // Clones share state (the controller's gate and the operator's handle are one store).
    let handle = approvals.clone();
    handle.approve(&key(1, 2), "alice", None).await.unwrap();
    assert!(
        approvals
            .decision(&key(1, 2))
            .await
            .unwrap()
            .unwrap()
            .approved
    );
    approvals.forget(&app(), &rev()).await.unwrap();
    assert!(approvals.get(&key(1, 2)).await.unwrap().is_none());
}
