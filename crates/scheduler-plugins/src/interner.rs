//! Interned strings: label keys and values, node names and topology values become `u32`
//! symbols so that the hot loops compare integers instead of strings.

use std::fmt;
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

use crate::fast_hash::FastMap;

/// An interned string. Cheap to copy, compare and hash; [`Sym::as_str`] gives the text back.
///
/// Symbols live in one process-wide table that only grows: intern names and label values, not
/// unbounded free text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

#[derive(Default)]
struct Table {
    ids: FastMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(|| RwLock::new(Table::default()));

impl Sym {
    /// Interns `text`.
    pub fn new(text: &str) -> Sym {
        {
            let table = TABLE.read();
            if let Some(&id) = table.ids.get(text) {
                return Sym(id);
            }
        }
        let mut table = TABLE.write();
        if let Some(&id) = table.ids.get(text) {
            return Sym(id);
        }
        let id = u32::try_from(table.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(text);
        table.names.push(name.clone());
        table.ids.insert(name, id);
        Sym(id)
    }

    /// The symbol of `text` if it was ever interned (lookups of unknown text do not grow the
    /// table).
    pub fn lookup(text: &str) -> Option<Sym> {
        let table = TABLE.read();
        table.ids.get(text).map(|&id| Sym(id))
    }

    /// The symbols of many texts under one lock (`None` for text never interned).
    pub fn lookup_many<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<Option<Sym>> {
        let table = TABLE.read();
        texts
            .into_iter()
            .map(|t| table.ids.get(t).map(|&id| Sym(id)))
            .collect()
    }

    /// The texts of many symbols under one lock.
    pub fn resolve_many(syms: impl IntoIterator<Item = Sym>) -> Vec<String> {
        let table = TABLE.read();
        syms.into_iter()
            .map(|s| {
                table
                    .names
                    .get(s.0 as usize)
                    .map_or_else(String::new, |n| n.to_string())
            })
            .collect()
    }

    /// The interned text.
    pub fn as_str(self) -> Arc<str> {
        let table = TABLE.read();
        // Invariant: a Sym is only created by `new`, which pushed its index.
        table
            .names
            .get(self.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.as_str())
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl From<&str> for Sym {
    fn from(text: &str) -> Sym {
        Sym::new(text)
    }
}

/// A label set: interned key/value pairs sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<(Sym, Sym)>);

impl Labels {
    /// An empty label set.
    pub fn new() -> Labels {
        Labels(Vec::new())
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: Sym, value: Sym) {
        match self.0.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: Sym) -> Option<Sym> {
        self.0
            .binary_search_by_key(&key, |(k, _)| *k)
            .ok()
            .map(|i| self.0[i].1)
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (Sym, Sym)> + '_ {
        self.0.iter().copied()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Labels {
        let mut labels = Labels::new();
        for (k, v) in iter {
            labels.insert(Sym::new(k.as_ref()), Sym::new(v.as_ref()));
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_labels_are_sorted() {
        let a = Sym::new("zone");
        assert_eq!(a, Sym::new("zone"));
        assert_eq!(&*a.as_str(), "zone");
        assert_eq!(Sym::lookup("never-interned-xyz"), None);
        let labels: Labels = [("b", "2"), ("a", "1"), ("b", "3")].into_iter().collect();
        assert_eq!(labels.get(Sym::new("b")), Some(Sym::new("3")));
        assert_eq!(labels.iter().count(), 2);
    }
}
