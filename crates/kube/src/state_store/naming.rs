//! From a state key to a ConfigMap name.
//!
//! The name is `<store>.<key>` when that is a valid DNS-1123 subdomain (lowercase
//! alphanumerics, `-` and `.`, dot-separated labels that start and end alphanumeric, at most
//! 253 characters), so most keys stay readable in `kubectl get configmaps`. Any other key
//! (upper case, `/`, too long, …) becomes `<store>.<readable part>-<hash>`: the key lowercased
//! with every other character turned into `-`, cut to fit, and the first 16 hex digits of the
//! key's SHA-256, so two keys that read alike still get different names. The key itself is
//! kept in an annotation, which reads check, so a name that two keys could share is never taken
//! for the wrong key.

use sha2::{Digest, Sha256};

/// The longest ConfigMap name (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// Hex digits of the key's hash appended to a derived name.
const HASH_DIGITS: usize = 16;

/// Whether `name` is a DNS-1123 subdomain.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.split('.').all(is_label_like)
}

/// Whether `label` is one dot-free part of a subdomain: lowercase alphanumerics and `-`,
/// starting and ending alphanumeric.
fn is_label_like(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// Whether `store` is usable as a store name: a DNS-1123 label of at most 63 characters (it
/// is also a label value).
pub(crate) fn is_store_name(store: &str) -> bool {
    store.len() <= 63 && is_label_like(store)
}

/// The ConfigMap name of `key` in `store` (see the [module docs](self)).
pub(crate) fn configmap_name(store: &str, key: &str) -> String {
    let direct = format!("{store}.{key}");
    if is_dns_subdomain(&direct) {
        return direct;
    }
    let hash = Sha256::digest(key.as_bytes());
    let hash: String = hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(HASH_DIGITS)
        .collect();
    // `<store>.` + readable + `-` + hash, at most 253 characters.
    let room = MAX_NAME - store.len() - 2 - HASH_DIGITS;
    let readable: String = key
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    let readable = readable.trim_matches('-');
    if readable.is_empty() {
        format!("{store}.{hash}")
    } else {
        format!("{store}.{readable}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_valid_key_is_kept() {
        assert_eq!(
            configmap_name("rorqual", "rollout-web"),
            "rorqual.rollout-web"
        );
        assert_eq!(configmap_name("s", "a.b-1"), "s.a.b-1");
    }

    #[test]
    fn other_keys_get_a_readable_part_and_a_hash() {
        let name = configmap_name("rorqual", "rollout-step/Web");
        assert!(name.starts_with("rorqual.rollout-step-web-"), "{name}");
        assert_eq!(name.len(), "rorqual.rollout-step-web-".len() + HASH_DIGITS);
        assert_ne!(name, configmap_name("rorqual", "rollout-step/web"));
        assert_eq!(configmap_name("s", "///").len(), "s.".len() + HASH_DIGITS);
        assert_ne!(configmap_name("s", "a_"), configmap_name("s", "a-"));
    }

    #[test]
    fn subdomain_rules() {
        assert!(is_dns_subdomain("a.b-c.d"));
        for bad in ["", "A", "a..b", "-a", "a-", "a_b", "a/b", ".a"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_store_name("rorqual-state"));
        assert!(!is_store_name("a.b"));
        assert!(!is_store_name(&"a".repeat(64)));
    }

    proptest! {
        #[test]
        fn every_key_gets_a_valid_name(key in "\\PC{0,300}") {
            let name = configmap_name("rorqual", &key);
            prop_assert!(is_dns_subdomain(&name), "{name:?} from {key:?}");
        }

        #[test]
        fn different_keys_get_different_names(a in "[a-zA-Z0-9/_.-]{1,40}", b in "[a-zA-Z0-9/_.-]{1,40}") {
            prop_assume!(a != b);
            prop_assert_ne!(configmap_name("s", &a), configmap_name("s", &b));
        }
    }
}
