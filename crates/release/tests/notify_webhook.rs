//! The webhook notifier against a local HTTP receiver on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use rorqual_core::model::{AppKey, Revision};
use rorqual_release::notify::{
    Notification, Notifier, NotifyError, RecordingNotifier, WebhookNotifier,
};
use serde_json::Value;

/// One request the receiver got: its `Authorization` header (if any) and its JSON body.
type Delivery = (Option<String>, Value);

#[derive(Clone, Default)]
struct Received {
    bodies: Arc<Mutex<Vec<Delivery>>>,
    /// Status codes to answer with before answering 200.
    failures: Arc<Mutex<Vec<u16>>>,
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
                    match next {
                        Some(code) => StatusCode::from_u16(code).unwrap(),
                        None => StatusCode::OK,
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
