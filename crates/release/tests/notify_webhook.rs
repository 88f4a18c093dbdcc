//! The webhook notifier against a local HTTP receiver on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use rorqual_core::model::{AppKey, Revision};
use rorqual_release::approval::{ApprovalContext, ApprovalKey, ApprovalRequest};
use rorqual_release::notify::{
    Notification, Notifier, NotifyError, RecordingNotifier, WebhookFormat, WebhookNotifier,
};
use serde_json::Value;

/// One request the receiver got: its `Authorization` header (if any) and its JSON body.
type Delivery = (Option<String>, Value);

#[derive(Clone, Default)]
struct Received {
    bodies: Arc<Mutex<Vec<Delivery>>>,
    /// Status codes to answer with before answering 200.
    failures: Arc<Mutex<Vec<u16>>>,
    /// The body of the 200 answers (a WeCom robot's `{"errcode": …}`); empty when unset.
    answer: Arc<Mutex<Option<Value>>>,
}

async fn receiver(received: Received) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Received>,
                 headers: HeaderMap,
                 body: axum::Json<Value>| async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned());
                    r.bodies.lock().unwrap().push((auth, body.0));
                    let next = r.failures.lock().unwrap().pop();
                    let answer = r.answer.lock().unwrap().clone();
                    match next {
                        Some(code) => (StatusCode::from_u16(code).unwrap(), String::new()),
                        None => (
                            StatusCode::OK,
                            answer.map(|a| a.to_string()).unwrap_or_default(),
                        ),
                    }
                },
            ),
        )
        .with_state(received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

fn notification() -> Notification {
    Notification::new(
        AppKey::new("games", "lobby"),
        Revision::from("9f1c2a7b3d"),
        "rolled-back",
        "analysis error-rate failed: 0.12 > 0.05",
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
    .step(2)
}

#[tokio::test]
async fn posts_json_with_app_revision_step_outcome() {
    let received = Received::default();
    let (addr, server) = receiver(received.clone()).await;
    let notifier = WebhookNotifier::new(format!("http://{addr}/hook"))
        .unwrap()
        .header("Authorization", "Bearer t0ken");
    notifier.notify(&notification()).await.unwrap();
    let bodies = received.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let (auth, body) = &bodies[0];
    assert_eq!(auth.as_deref(), Some("Bearer t0ken"));
    assert_eq!(body["app"], "games/lobby");
    assert_eq!(body["namespace"], "games");
    assert_eq!(body["name"], "lobby");
    assert_eq!(body["revision"], "9f1c2a7b3d");
    assert_eq!(body["step"], 2);
    assert_eq!(body["outcome"], "rolled-back");
    assert_eq!(body["message"], "analysis error-rate failed: 0.12 > 0.05");
    assert_eq!(body["time"], "2023-11-14T22:13:20.000Z");
    server.abort();
}

#[tokio::test]
async fn retries_server_errors_but_not_client_errors() {
    let received = Received::default();
    *received.failures.lock().unwrap() = vec![502, 503];
    let (addr, server) = receiver(received.clone()).await;
    let notifier = WebhookNotifier::new(format!("http://{addr}/hook"))
        .unwrap()
        .backoff(Duration::from_millis(10));
    notifier.notify(&notification()).await.unwrap();
    assert_eq!(
        received.bodies.lock().unwrap().len(),
        3,
        "two failures then success"
    );

    *received.failures.lock().unwrap() = vec![400];
    let err = notifier.notify(&notification()).await.unwrap_err();
    assert!(
        matches!(
            err,
            NotifyError::Status {
                status: 400,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );

    *received.failures.lock().unwrap() = vec![500, 500, 500];
    let err = notifier
        .clone()
        .retries(1)
        .notify(&notification())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NotifyError::Status {
                status: 500,
                attempts: 2,
                ..
            }
        ),
        "{err}"
    );
    server.abort();
}

#[tokio::test]
async fn unreachable_receiver_is_an_error_after_bounded_retries() {
    // A bound socket that does not listen: connections to it are refused, and nothing else
    // can take its port while it is held.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap();
    let notifier = WebhookNotifier::new(format!("http://{port}/hook"))
        .unwrap()
        .retries(2)
        .backoff(Duration::from_millis(5))
        .timeout(Duration::from_secs(1));
    let err = notifier.notify(&notification()).await.unwrap_err();
    assert!(
        matches!(err, NotifyError::Request { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()));

    let recorder = RecordingNotifier::new();
    recorder.notify(&notification()).await.unwrap();
    assert_eq!(recorder.notifications(), vec![notification()]);
}

/// An approval request as the rollout controller sends it to approvers.
fn approval_notification() -> Notification {
    let request = ApprovalRequest::new(
        ApprovalKey::new(AppKey::new("games", "lobby"), "9f1c2a7b3d".into(), 3, 1),
        "promote to 50%?",
    )
    .context(
        ApprovalContext::new()
            .cluster("sh-1")
            .step_count(4)
            .updated_percent(25)
            .released_by("alice")
            .commit("e4f5a6b"),
    );
    Notification::new(
        AppKey::new("games", "lobby"),
        Revision::from("9f1c2a7b3d"),
        "approval-requested",
        "promote to 50%?",
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
    .with_approval(request)
}

/// Sends `n` in `format` to a fresh receiver and returns the body it got.
async fn delivered(format: WebhookFormat, n: &Notification) -> Value {
    let received = Received::default();
    let (addr, server) = receiver(received.clone()).await;
    WebhookNotifier::new(format!("http://{addr}/hook"))
        .unwrap()
        .format(format)
        .notify(n)
        .await
        .unwrap();
    server.abort();
    let bodies = received.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    bodies[0].1.clone()
}

#[tokio::test]
async fn slack_format_posts_a_text_message_for_approvers() {
    let body = delivered(WebhookFormat::Slack, &approval_notification()).await;
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_eq!(
        body["text"],
        "*Approval needed*: games/lobby in cluster sh-1\n\
         Revision 9f1c2a7b3d, step 2 of 4 (attempt 3), 25% of replicas updated\n\
         Released by alice, commit e4f5a6b\n\
         Asked: promote to 50%?"
    );
    let body = delivered(WebhookFormat::Slack, &notification()).await;
    assert_eq!(
        body,
        serde_json::json!({"text": "*games/lobby*: rolled-back\nRevision 9f1c2a7b3d, step 3\n\
            analysis error-rate failed: 0.12 > 0.05"})
    );
}

#[tokio::test]
async fn wecom_format_posts_a_markdown_message_and_reports_a_refusal() {
    let body = delivered(WebhookFormat::WeCom, &approval_notification()).await;
    assert_eq!(body["msgtype"], "markdown");
    let content = body["markdown"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("**Approval needed**: games/lobby in cluster sh-1\n")
            && content.contains("step 2 of 4")
            && content.contains("25% of replicas updated")
            && content.contains("Released by alice, commit e4f5a6b")
            && content.ends_with("Asked: promote to 50%?"),
        "{content}"
    );
    let body = delivered(WebhookFormat::WeCom, &notification()).await;
    assert_eq!(
        body["markdown"]["content"],
        "**games/lobby**: rolled-back\nRevision 9f1c2a7b3d, step 3\n\
         analysis error-rate failed: 0.12 > 0.05"
    );

    // A robot that answers 200 with an error code refused the message.
    let received = Received::default();
    *received.answer.lock().unwrap() =
        Some(serde_json::json!({"errcode": 93000, "errmsg": "invalid webhook url"}));
    let (addr, server) = receiver(received.clone()).await;
    let err = WebhookNotifier::new(format!("http://{addr}/hook"))
        .unwrap()
        .format(WebhookFormat::WeCom)
        .notify(&notification())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NotifyError::Refused { reason, .. }
            if reason == "errcode 93000: invalid webhook url"),
        "{err}"
    );
    assert_eq!(received.bodies.lock().unwrap().len(), 1, "not retried");
    *received.answer.lock().unwrap() = Some(serde_json::json!({"errcode": 0, "errmsg": "ok"}));
    WebhookNotifier::new(format!("http://{addr}/hook"))
        .unwrap()
        .format(WebhookFormat::WeCom)
        .notify(&notification())
        .await
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn json_format_carries_the_approval_request() {
    let body = delivered(WebhookFormat::Json, &approval_notification()).await;
    assert_eq!(body["outcome"], "approval-requested");
    assert_eq!(body["step"], 1);
    assert_eq!(
        body["approval"]["key"],
        serde_json::json!({"app": {"namespace": "games", "name": "lobby"},
            "revision": "9f1c2a7b3d", "attempt": 3, "step": 1})
    );
    assert_eq!(body["approval"]["context"]["releasedBy"], "alice");
    let back: Notification = serde_json::from_value(body).unwrap();
    assert_eq!(back, approval_notification());
}
