//! Starts the test control plane (etcd, kube-apiserver, kube-controller-manager), creates a
//! namespace that is ready for pods, prints how long each took and stops everything.
//!
//! ```sh
//! export RORQUAL_KUBE_BIN=$(scripts/build-kube)
//! cargo run --release -p rorqual-kube --features testenv --example testenv_start
//! ```

use std::time::Instant;

use rorqual_kube::testenv::TestEnv;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let began = Instant::now();
    let env = TestEnv::start().await?;
    let started = began.elapsed();
    let namespace = env.new_namespace("example").await?;
    let ready = began.elapsed();
    println!(
        "control plane at {} ready in {:.2} s; namespace {namespace} ready for pods at {:.2} s",
        env.server_url(),
        started.as_secs_f64(),
        ready.as_secs_f64()
    );
    drop(env);
    println!("stopped after {:.2} s", began.elapsed().as_secs_f64());
    Ok(())
}
