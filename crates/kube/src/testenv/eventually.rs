//! [`eventually`]: the wait every test against a cluster needs (controllers act
//! asynchronously).

use std::future::Future;
use std::time::Duration;

/// Polls `probe` every 100 ms until it returns `Some`, and returns that.
///
/// # Panics
///
/// When `timeout` passes first: the message names `what` (a test helper: the panic is the
/// failed test).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
