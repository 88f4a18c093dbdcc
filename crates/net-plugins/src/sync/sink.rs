//! The registry seam: what a service registry must offer to be kept in step, and an in-memory
//! registry for tests and embedding.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::plan::{RegistryBatch, apply_to, replace_batch};
use super::{RegistryEntry, RegistryKey, SyncError};

/// A service registry the pools are mirrored into. Object safe: store it as
/// `Arc<dyn RegistrySink>`.
///
/// The registry records, with its entries, the store revision they reflect (the
/// checkpoint), so a restarted sync resumes after it. Entries are absolute (the state of an
/// address after a commit), so writing a batch again has no further effect; the checkpoint
/// only moves with the writes of its batch, so no change is lost.
#[async_trait]
pub trait RegistrySink: Send + Sync + Debug + 'static {
    /// The store revision the registry reflects; `None` when it was never synced.
    async fn checkpoint(&self) -> Result<Option<u64>, SyncError>;

    /// Every entry the registry holds.
    async fn entries(&self) -> Result<BTreeMap<RegistryKey, RegistryEntry>, SyncError>;

    /// Writes `batch` and records `batch.revision` as the checkpoint, atomically: a reader
    /// never sees the checkpoint moved without the writes. (A registry that must split a large
    /// batch writes the checkpoint with the last part: a crash in between leaves the old
    /// checkpoint, and the batch is written again.)
    ///
    /// `follows`: `Some(r)` applies the batch only if the checkpoint is still `r`, else
    /// [`SyncError::CheckpointMoved`] (two syncs writing one registry cannot interleave);
    /// `None` writes whatever the checkpoint is (a full replace).
    async fn apply(&self, batch: &RegistryBatch, follows: Option<u64>) -> Result<(), SyncError>;

    /// Makes the registry hold exactly `desired`, recording `revision`: lists what it holds,
    /// puts the desired entries that are missing or differ, deletes the rest. Returns the
    /// writes made. The default is [`RegistrySink::entries`] then [`RegistrySink::apply`]
    /// without a guard, which is right for one writer; a registry that several syncs may write
    /// at once overrides it to fail ([`SyncError::ResyncInterrupted`]) when another writes
    /// between its listing and its last write, as [`MemoryRegistry`] and the etcd registry do.
    async fn replace(
        &self,
        revision: u64,
        desired: &BTreeMap<RegistryKey, RegistryEntry>,
    ) -> Result<RegistryBatch, SyncError> {
        let held = self.entries().await?;
        let batch = replace_batch(revision, &held, desired);
        self.apply(&batch, None).await?;
        Ok(batch)
    }
}

/// A registry in memory: for tests, and for a process that serves lookups itself.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<(Option<u64>, BTreeMap<RegistryKey, RegistryEntry>)>,
}

impl MemoryRegistry {
    /// An empty registry that was never synced.
    pub fn new() -> Self {
        MemoryRegistry::default()
    }

    /// What it holds now, with its checkpoint.
    pub fn contents(&self) -> (Option<u64>, BTreeMap<RegistryKey, RegistryEntry>) {
        self.state.lock().clone()
    }
}

#[async_trait]
impl RegistrySink for MemoryRegistry {
    async fn checkpoint(&self) -> Result<Option<u64>, SyncError> {
        Ok(self.state.lock().0)
    }

    async fn entries(&self) -> Result<BTreeMap<RegistryKey, RegistryEntry>, SyncError> {
        Ok(self.state.lock().1.clone())
    }

    async fn apply(&self, batch: &RegistryBatch, follows: Option<u64>) -> Result<(), SyncError> {
        let mut state = self.state.lock();
        if let Some(expected) = follows
            && state.0 != Some(expected)
        {
            return Err(SyncError::CheckpointMoved {
                key: "memory".to_owned(),
                expected,
                found: state.0,
            });
        }
        apply_to(&mut state.1, batch);
        state.0 = Some(batch.revision);
        Ok(())
    }

    /// Lists and writes under one lock: no other writer comes in between.
    async fn replace(
        &self,
        revision: u64,
        desired: &BTreeMap<RegistryKey, RegistryEntry>,
    ) -> Result<RegistryBatch, SyncError> {
        let mut state = self.state.lock();
        let batch = replace_batch(revision, &state.1, desired);
        apply_to(&mut state.1, &batch);
        state.0 = Some(revision);
        Ok(batch)
    }
}
