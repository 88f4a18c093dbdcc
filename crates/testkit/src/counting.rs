//! [`CountingEngine`]: any engine, with a count of the read calls made through it (`nodes`,
//! `groups`, `instances`, `apps`), for tests and benchmarks of how often a controller reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rorqual_core::Result;
use rorqual_core::engine::{Engine, EventStream, GroupStatus, LogOptions, LogStream, StateStore};
use rorqual_core::model::{AppKey, AppSpec, Instance, Node, Revision};

/// Wraps `inner`, counting read calls; every call goes through unchanged.
#[derive(Debug)]
pub struct CountingEngine {
    inner: Arc<dyn Engine>,
    reads: AtomicU64,
}

impl CountingEngine {
    /// Counts the reads made of `inner`.
    pub fn new(inner: Arc<dyn Engine>) -> Self {
        CountingEngine {
            inner,
            reads: AtomicU64::new(0),
        }
    }

    /// Read calls so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Engine for CountingEngine {
    fn kind(&self) -> &str {
        self.inner.kind()
    }
    async fn nodes(&self) -> Result<Vec<Node>> {
        self.read();
        self.inner.nodes().await
    }
    async fn apply_group(&self, spec: &AppSpec, replicas: u32) -> Result<GroupStatus> {
        self.inner.apply_group(spec, replicas).await
    }
    async fn scale_group(
        &self,
        app: &AppKey,
        revision: &Revision,
        replicas: u32,
    ) -> Result<GroupStatus> {
        self.inner.scale_group(app, revision, replicas).await
    }
    async fn delete_group(&self, app: &AppKey, revision: &Revision) -> Result<()> {
        self.inner.delete_group(app, revision).await
    }
    async fn groups(&self, app: &AppKey) -> Result<Vec<GroupStatus>> {
        self.read();
        self.inner.groups(app).await
    }
    async fn instances(&self, app: &AppKey) -> Result<Vec<Instance>> {
        self.read();
        self.inner.instances(app).await
    }
    async fn apps(&self) -> Result<Vec<AppKey>> {
        self.read();
        self.inner.apps().await
    }
    async fn move_identity(&self, spec: &AppSpec, ordinal: u32) -> Result<Instance> {
        self.inner.move_identity(spec, ordinal).await
    }
    fn events(&self) -> EventStream {
        self.inner.events()
    }
    fn state_store(&self) -> Arc<dyn StateStore> {
        self.inner.state_store()
    }
    async fn logs(&self, instance: &str, options: LogOptions) -> Result<LogStream> {
        self.inner.logs(instance, options).await
    }
    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}
