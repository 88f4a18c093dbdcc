//! Nodes mode (`nodeCacheCapable: false`): kube-scheduler sends every candidate node in full,
//! about 4–5 KB of JSON each, with every filter and prioritize call, and nearly always the
//! same bytes as last time. The feed remembers the JSON it last read for each node and only
//! decodes a node whose JSON changed, so a request costs a hash and a comparison per node
//! instead of a decode and a cache update.

use std::collections::HashMap;
use std::hash::Hasher;

use serde_json::value::RawValue;

use crate::fast_hash::FxHasher;
use crate::interner::Sym;
use crate::kube::node_from_str;
use crate::snapshot::NodeInfo;

/// One node of a request, in request order.
#[derive(Debug)]
pub(crate) enum FedNode {
    /// The node, by name (in the scheduler's cache once the changed ones are upserted).
    Node(Sym),
    /// A node that cannot be read: its name (`?` if even that is unreadable) and why.
    Unreadable { name: String, reason: String },
}

/// What one request's nodes amount to.
#[derive(Debug, Default)]
pub(crate) struct Fed {
    /// Every node of the request, in order.
    pub(crate) nodes: Vec<FedNode>,
    /// Nodes whose JSON is new or changed, decoded: to upsert into the cache.
    pub(crate) changed: Vec<NodeInfo>,
}

/// The JSON last read per node, found by a fingerprint of the text and confirmed by
/// comparing the text itself (a fingerprint collision costs a decode, never a stale node).
#[derive(Debug, Default)]
pub(crate) struct NodeFeed {
    by_fingerprint: HashMap<u64, Sym>,
    texts: HashMap<Sym, (u64, Box<str>)>,
}

fn fingerprint(text: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(text.as_bytes());
    h.write_usize(text.len());
    h.finish()
}

impl NodeFeed {
    /// Reads `items`: known JSON by name, the rest decoded (and remembered). `cached` says
    /// whether the scheduler's cache still has a node (the host may have removed it): a node
    /// it lacks is decoded again even if its JSON is unchanged.
    pub(crate) fn read(&mut self, items: &[Box<RawValue>], cached: impl Fn(Sym) -> bool) -> Fed {
        let mut fed = Fed {
            nodes: Vec::with_capacity(items.len()),
            changed: Vec::new(),
        };
        for item in items {
            let text = item.get();
            let print = fingerprint(text);
            let known = self.by_fingerprint.get(&print).copied().filter(|name| {
                self.texts
                    .get(name)
                    .is_some_and(|(_, last)| **last == *text)
                    && cached(*name)
            });
            if let Some(name) = known {
                fed.nodes.push(FedNode::Node(name));
                continue;
            }
            match node_from_str(text) {
                Ok(info) => {
                    self.remember(info.name, print, text);
                    fed.nodes.push(FedNode::Node(info.name));
                    fed.changed.push(info);
                }
                Err(e) => fed.nodes.push(FedNode::Unreadable {
                    name: e.name.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        fed
    }

    fn remember(&mut self, name: Sym, print: u64, text: &str) {
        if let Some((old, _)) = self.texts.insert(name, (print, Box::from(text)))
            && old != print
            && self.by_fingerprint.get(&old) == Some(&name)
        {
            self.by_fingerprint.remove(&old);
        }
        self.by_fingerprint.insert(print, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn only_changed_or_uncached_nodes_are_decoded() {
        let mut feed = NodeFeed::default();
        let a = r#"{"metadata": {"name": "feed-a"}, "status": {"allocatable": {"cpu": "4"}}}"#;
        let b = r#"{"metadata": {"name": "feed-b"}, "status": {"allocatable": {"cpu": "2"}}}"#;
        let first = feed.read(&[raw(a), raw(b)], |_| true);
        assert_eq!(first.changed.len(), 2);
        let again = feed.read(&[raw(a), raw(b)], |_| true);
        assert!(again.changed.is_empty());
        assert!(matches!(again.nodes[1], FedNode::Node(n) if n == Sym::new("feed-b")));
        let a2 = a.replace("\"4\"", "\"8\"");
        let changed = feed.read(&[raw(&a2), raw(b)], |_| true);
        assert_eq!(changed.changed.len(), 1);
        assert_eq!(changed.changed[0].allocatable.cpu.millis(), 8000);
        // Removed from the cache by the host: decoded again although unchanged.
        let gone = feed.read(&[raw(&a2), raw(b)], |n| n != Sym::new("feed-b"));
        assert_eq!(gone.changed.len(), 1);
        assert_eq!(gone.changed[0].name, Sym::new("feed-b"));
    }

    #[test]
    fn an_unreadable_node_is_reported_with_its_name() {
        let mut feed = NodeFeed::default();
        let bad =
            r#"{"metadata": {"name": "feed-bad"}, "status": {"allocatable": {"pods": "lots"}}}"#;
        let fed = feed.read(&[raw(bad)], |_| true);
        match &fed.nodes[0] {
            FedNode::Unreadable { name, reason } => {
                assert_eq!(name, "feed-bad");
                assert!(
                    reason.contains("status.allocatable.pods") && reason.contains("`lots`"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
