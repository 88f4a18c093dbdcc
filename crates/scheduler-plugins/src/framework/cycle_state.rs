//! Per-cycle typed state shared by a pod's plugin calls; cloneable for what-if runs.

use std::any::{Any, TypeId};
use std::fmt;

use crate::fast_hash::FastMap;

/// A value stored in [`CycleState`]: any `Clone + Debug + Send + Sync` type.
pub trait StateData: Any + Send + Sync + fmt::Debug {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn StateData>;
    /// As `Any`, for downcasts.
    fn as_any(&self) -> &dyn Any;
    /// As mutable `Any`, for downcasts.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any + Clone + Send + Sync + fmt::Debug> StateData for T {
    fn clone_box(&self) -> Box<dyn StateData> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Present in the [`CycleState`] given to Unreserve when the host unreserves because the pod
/// is gone (deleted, or released through the `Placement` seam) rather than because a cycle
/// failed: plugins then give back everything the pod holds, including what earlier cycles
/// took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRemoved;

/// Typed key/value state for one scheduling cycle, keyed by the value's type (a plugin stores
/// its own private type, so keys never clash).
#[derive(Debug, Default)]
pub struct CycleState {
    // Read once per plugin per node in the filter: a cheap hash, as the keys are type ids.
    values: FastMap<TypeId, Box<dyn StateData>>,
    skip_filter: Vec<usize>,
    skip_score: Vec<usize>,
}

impl Clone for CycleState {
    fn clone(&self) -> CycleState {
        CycleState {
            values: self
                .values
                .iter()
                .map(|(k, v)| (*k, (**v).clone_box()))
                .collect(),
            skip_filter: self.skip_filter.clone(),
            skip_score: self.skip_score.clone(),
        }
    }
}

impl CycleState {
    /// Empty state.
    pub fn new() -> CycleState {
        CycleState::default()
    }

    /// Stores `value`, replacing any value of the same type.
    pub fn write<T: StateData + Clone>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The stored value of type `T`.
    pub fn read<T: StateData>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| (**v).as_any().downcast_ref())
    }

    /// The stored value of type `T`, mutably.
    pub fn read_mut<T: StateData>(&mut self) -> Option<&mut T> {
        self.values
            .get_mut(&TypeId::of::<T>())
            .and_then(|v| (**v).as_any_mut().downcast_mut())
    }

    /// Removes the value of type `T`.
    pub fn delete<T: StateData>(&mut self) -> Option<Box<dyn StateData>> {
        self.values.remove(&TypeId::of::<T>())
    }

    pub(crate) fn set_skips(&mut self, filter: Vec<usize>, score: Vec<usize>) {
        self.skip_filter = filter;
        self.skip_score = score;
    }

    pub(crate) fn skip_filter(&self) -> &[usize] {
        &self.skip_filter
    }

    pub(crate) fn skip_score_mut(&mut self) -> &mut Vec<usize> {
        &mut self.skip_score
    }

    pub(crate) fn skip_score(&self) -> &[usize] {
        &self.skip_score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Counts(Vec<u32>);

    #[test]
    fn typed_values_and_clone_is_deep() {
        let mut state = CycleState::new();
        state.write(Counts(vec![1]));
        state.write(7u64);
        let copy = state.clone();
        state.read_mut::<Counts>().unwrap().0.push(2);
        assert_eq!(state.read::<Counts>(), Some(&Counts(vec![1, 2])));
        assert_eq!(copy.read::<Counts>(), Some(&Counts(vec![1])));
        assert_eq!(copy.read::<u64>(), Some(&7));
        assert!(state.read::<String>().is_none());
        assert!(state.delete::<u64>().is_some());
        assert!(state.read::<u64>().is_none());
    }
}
