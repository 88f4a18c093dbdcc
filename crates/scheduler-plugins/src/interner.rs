//! Interned strings: label keys and values, node names and topology values become `u32`
//! symbols so that the hot loops compare integers instead of strings.

use std::fmt;
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

use crate::fast_hash::FastMap;

/// An interned string. Cheap to copy, compare and hash; [`Sym::as_str`] gives the text back.
///
/// Symbols live in one process-wide table that only grows: intern names, label keys and the
/// values selectors and node labels mention, not unbounded free text (pod label values go
/// through [`Labels::insert_str`], which interns nothing new).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

#[derive(Default)]
struct Table {
    ids: FastMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(|| RwLock::new(Table::default()));

impl Sym {
    /// The symbol's position in the process-wide table (dense from 0; symbols are never
    /// removed), for tables indexed by symbol.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }

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

    /// The symbol of `text`, or, if it was never interned, the table's size at this lookup
    /// (every symbol below it differs from `text`).
    fn lookup_or_generation(text: &str) -> Result<Sym, u32> {
        let table = TABLE.read();
        match table.ids.get(text) {
            Some(&id) => Ok(Sym(id)),
            None => Err(u32::try_from(table.names.len()).unwrap_or(u32::MAX)),
        }
    }

    /// How many symbols the process-wide table holds (it only grows): a gauge for
    /// long-running schedulers.
    pub fn interned_count() -> usize {
        TABLE.read().names.len()
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

/// A label value kept as text: not interned when it was set.
#[derive(Debug, Clone)]
struct TextValue {
    key: Sym,
    text: Arc<str>,
    /// The table's size when `text` was looked up and not found: every symbol below it was
    /// interned by then and so differs from `text`; only younger ones need a text comparison.
    generation: u32,
}

impl TextValue {
    /// Whether this value is `sym`'s text.
    fn is(&self, sym: Sym) -> bool {
        sym.0 >= self.generation && *sym.as_str() == *self.text
    }
}

/// A label set sorted by key. Keys are interned; a value is interned when it is set with
/// [`Labels::insert`], and looked up, not interned, with [`Labels::insert_str`]: a value that
/// no selector, term or node label mentions (a pod's `controller-uid`, say) is kept as text,
/// so a long-running scheduler fed such values does not grow the symbol table. Matching
/// ([`Labels::value_in`], [`crate::selector::Selector::matches`]) compares either form, and a
/// text value still matches a selector that interns the same text later.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// Interned pairs, sorted by key (all of a node's labels): the hot path.
    syms: Vec<(Sym, Sym)>,
    /// Values kept as text, sorted by key; a key is in one list or the other.
    texts: Vec<TextValue>,
}

/// One value, either form.
#[derive(Clone, Copy)]
enum ValueRef<'a> {
    Sym(Sym),
    Text(&'a TextValue),
}

impl ValueRef<'_> {
    fn text(self) -> Arc<str> {
        match self {
            ValueRef::Sym(s) => s.as_str(),
            ValueRef::Text(t) => t.text.clone(),
        }
    }

    fn same(self, other: ValueRef<'_>) -> bool {
        match (self, other) {
            (ValueRef::Sym(a), ValueRef::Sym(b)) => a == b,
            (ValueRef::Text(a), ValueRef::Text(b)) => a.text == b.text,
            (ValueRef::Sym(s), ValueRef::Text(t)) | (ValueRef::Text(t), ValueRef::Sym(s)) => {
                t.is(s)
            }
        }
    }
}

impl PartialEq for Labels {
    /// Equal when the same keys have the same value texts (a symbol and a text value with
    /// the same text are equal).
    fn eq(&self, other: &Labels) -> bool {
        if self.texts.is_empty() && other.texts.is_empty() {
            return self.syms == other.syms;
        }
        let (a, b) = (self.entries(), other.entries());
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|((ka, va), (kb, vb))| ka == kb && va.same(*vb))
    }
}

impl Eq for Labels {}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // By text, as equality compares a symbol and a text value with the same text equal.
        for (k, v) in self.entries() {
            k.hash(state);
            v.text().hash(state);
        }
    }
}

impl Labels {
    /// An empty label set.
    pub fn new() -> Labels {
        Labels::default()
    }

    /// Every pair, sorted by key.
    fn entries(&self) -> Vec<(Sym, ValueRef<'_>)> {
        let mut out: Vec<(Sym, ValueRef<'_>)> = self
            .syms
            .iter()
            .map(|&(k, v)| (k, ValueRef::Sym(v)))
            .chain(self.texts.iter().map(|t| (t.key, ValueRef::Text(t))))
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    fn remove_text(&mut self, key: Sym) {
        if let Ok(i) = self.texts.binary_search_by_key(&key, |t| t.key) {
            self.texts.remove(i);
        }
    }

    fn find(&self, key: Sym) -> Option<ValueRef<'_>> {
        if let Ok(i) = self.syms.binary_search_by_key(&key, |(k, _)| *k) {
            return Some(ValueRef::Sym(self.syms[i].1));
        }
        if self.texts.is_empty() {
            return None;
        }
        self.texts
            .binary_search_by_key(&key, |t| t.key)
            .ok()
            .map(|i| ValueRef::Text(&self.texts[i]))
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: Sym, value: Sym) {
        match self.syms.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => self.syms[i].1 = value,
            Err(i) => {
                self.syms.insert(i, (key, value));
                self.remove_text(key);
            }
        }
    }

    /// Sets `key` to `value`, interning the key but not the value: a value already interned
    /// (one a selector, a term or a node label mentions) is stored as its symbol, any other
    /// as text. Use this for labels of pods read from outside (an extender request, a
    /// watch), whose values may be unbounded.
    pub fn insert_str(&mut self, key: &str, value: &str) {
        let key = Sym::new(key);
        match Sym::lookup_or_generation(value) {
            Ok(sym) => self.insert(key, sym),
            Err(generation) => {
                if let Ok(i) = self.syms.binary_search_by_key(&key, |(k, _)| *k) {
                    self.syms.remove(i);
                }
                let text = TextValue {
                    key,
                    text: Arc::from(value),
                    generation,
                };
                match self.texts.binary_search_by_key(&key, |t| t.key) {
                    Ok(i) => self.texts[i] = text,
                    Err(i) => self.texts.insert(i, text),
                }
            }
        }
    }

    /// The value of `key` as a symbol. A value kept as text (see [`Labels::insert_str`]) is
    /// interned by this call: to test pod labels without interning, use
    /// [`Labels::contains_key`], [`Labels::value_in`] or [`Labels::text`].
    pub fn get(&self, key: Sym) -> Option<Sym> {
        match self.find(key)? {
            ValueRef::Sym(s) => Some(s),
            ValueRef::Text(t) => Some(Sym::new(&t.text)),
        }
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: Sym) -> bool {
        self.find(key).is_some()
    }

    /// Whether the value of `key` is one of `values` (`None`: `key` is not set). Interns
    /// nothing; a text value is compared by text with the symbols interned after it was set.
    pub fn value_in(&self, key: Sym, values: &[Sym]) -> Option<bool> {
        Some(match self.find(key)? {
            ValueRef::Sym(s) => values.contains(&s),
            ValueRef::Text(t) => values.iter().any(|v| t.is(*v)),
        })
    }

    /// The text of the value of `key`.
    pub fn text(&self, key: Sym) -> Option<Arc<str>> {
        self.find(key).map(ValueRef::text)
    }

    /// The pairs whose value is interned, sorted by key (values kept as text are skipped:
    /// see [`Labels::text_keys`] and [`Labels::resolved_pairs`]).
    pub fn iter(&self) -> impl Iterator<Item = (Sym, Sym)> + '_ {
        self.syms.iter().copied()
    }

    /// The keys whose value is kept as text.
    pub fn text_keys(&self) -> impl Iterator<Item = Sym> + '_ {
        self.texts.iter().map(|t| t.key)
    }

    /// Every pair whose value is interned now: [`Labels::iter`], plus the text values that
    /// were interned after they were set (looked up, under one lock, only if the table grew
    /// since).
    pub fn resolved_pairs(&self) -> impl Iterator<Item = (Sym, Sym)> + '_ {
        let mut late = Vec::new();
        if !self.texts.is_empty() {
            let size = Sym::interned_count();
            let stale: Vec<&TextValue> = self
                .texts
                .iter()
                .filter(|t| (t.generation as usize) < size)
                .collect();
            if !stale.is_empty() {
                let syms = Sym::lookup_many(stale.iter().map(|t| &*t.text));
                late.extend(
                    stale
                        .iter()
                        .zip(syms)
                        .filter_map(|(t, s)| Some((t.key, s?))),
                );
            }
        }
        self.syms.iter().copied().chain(late)
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty() && self.texts.is_empty()
    }
}

/// Interns keys and values (use [`Labels::insert_str`] for values that may be unbounded).
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

    #[test]
    fn text_values_are_replaced_and_compared_by_text() {
        let key = Sym::new("interner-test-key");
        let mut a = Labels::new();
        a.insert_str("interner-test-key", "interner-test-never-interned");
        assert_eq!((a.iter().count(), a.text_keys().count()), (0, 1));
        assert!(a.contains_key(key));
        a.insert(key, Sym::new("v"));
        assert_eq!((a.iter().count(), a.text_keys().count()), (1, 0));
        assert_eq!(a.get(key), Some(Sym::new("v")));

        let mut text = Labels::new();
        text.insert_str("interner-test-key", "interner-test-late");
        let late = Sym::new("interner-test-late");
        let mut sym = Labels::new();
        sym.insert(key, late);
        assert_eq!(text, sym);
        assert_eq!(text.value_in(key, &[Sym::new("v"), late]), Some(true));
        assert_eq!(text.resolved_pairs().collect::<Vec<_>>(), vec![(key, late)]);
    }
}
