//! The approvals API in process and over HTTP (axum router driven with tower's `oneshot`).
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rorqual_core::model::{AppKey, Revision};
use rorqual_release::approval::{ApprovalError, ApprovalGate, ApprovalRequest, Approvals};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app() -> AppKey {
    AppKey::new("games", "lobby")
}

fn rev() -> Revision {
    Revision::from("9f1c2a7b3d")
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
    let req = ApprovalRequest::new(app(), rev(), 3, "promote to 100%?");
    approvals.request(&req).await.unwrap();
    approvals.request(&req).await.unwrap(); // idempotent

    let (status, list) = call(&approvals, "GET", "/approvals", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "pending");
    assert_eq!(list[0]["message"], "promote to 100%?");

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

    let d = approvals
        .decision(&app(), &rev(), 3)
        .await
        .unwrap()
        .unwrap();
    assert!(d.approved);
    assert_eq!(d.by, "alice");
    assert!(d.at <= std::time::SystemTime::now());
    assert!(approvals.pending().is_empty());

    // Decisions are final.
    let reject = "/approvals/games/lobby/9f1c2a7b3d/3/reject";
    let (status, body) = call(&approvals, "POST", reject, Some(json!({"by": "bob"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already approved by alice"),
        "{body}"
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
        .request(&ApprovalRequest::new(app(), rev(), 1, "go?"))
        .await
        .unwrap();

    // Unknown step, no approver, malformed body.
    let (status, body) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/7/approve",
        Some(json!({"by": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("step 7"), "{body}");
    let (status, _) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/1/approve",
        Some(json!({"by": " "})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
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
    assert_eq!(approvals.decision(&app(), &rev(), 1).await.unwrap(), None);

    let (status, record) = call(
        &approvals,
        "POST",
        "/approvals/games/lobby/9f1c2a7b3d/1/reject",
        Some(json!({"by": "carol"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["state"], "rejected");
    let d = approvals
        .decision(&app(), &rev(), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!d.approved && d.by == "carol" && d.comment.is_none());
}

#[tokio::test]
async fn in_process_api() {
    let approvals = Approvals::new();
    let err = approvals
        .approve(&app(), &rev(), 0, "alice", None)
        .unwrap_err();
    assert!(matches!(err, ApprovalError::NotFound { .. }), "{err}");
    for step in [2, 0] {
        approvals
            .request(&ApprovalRequest::new(
                app(),
                rev(),
                step,
                format!("step {step}"),
            ))
            .await
            .unwrap();
    }
    let pending = approvals.pending();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].request.step, 2, "oldest request first");
    approvals
        .reject(&app(), &rev(), 0, "bob", Some("error budget spent".into()))
        .unwrap();
    assert_eq!(approvals.pending().len(), 1);
    // Clones share state (the controller's gate and the operator's handle are one store).
    let handle = approvals.clone();
    handle.approve(&app(), &rev(), 2, "alice", None).unwrap();
    assert!(
        approvals
            .decision(&app(), &rev(), 2)
            .await
            .unwrap()
            .unwrap()
            .approved
    );
    approvals.forget(&app(), &rev());
    assert!(approvals.get(&app(), &rev(), 2).is_none());
}
