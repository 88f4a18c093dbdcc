//! A state entry as a ConfigMap, and back.
//!
//! ```yaml
//! metadata:
//!   name: rorqual.rollout-step-web-3f1c…   # see `naming`
//!   labels:
//!     app.kubernetes.io/managed-by: rorqual
//!     rorqual.io/state-store: rorqual
//!   annotations:
//!     rorqual.io/state-key: rollout-step/web
//! data:
//!   value: '{"step":3}'       # UTF-8 values; any other bytes go to binaryData.value
//! ```
//!
//! Reading checks all of it: a ConfigMap of the store that lacks its key annotation, holds
//! another key, or holds anything but exactly one `value` is reported as corrupt, never
//! guessed at.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rorqual_core::engine::Versioned;

/// The label every object rorqual writes carries, with value [`MANAGED_BY_VALUE`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "rorqual";
/// The label naming the store a ConfigMap belongs to.
pub const STORE_LABEL: &str = "rorqual.io/state-store";
/// The annotation holding the state key.
pub const KEY_ANNOTATION: &str = "rorqual.io/state-key";
/// The `data` / `binaryData` entry holding the value.
const VALUE: &str = "value";

/// The ConfigMap holding `value` under `key`, to create (`resource_version: None`) or replace.
pub(crate) fn encode(
    store: &str,
    name: &str,
    key: &str,
    value: Vec<u8>,
    resource_version: Option<String>,
) -> ConfigMap {
    let (data, binary_data) = match String::from_utf8(value) {
        Ok(text) => (Some(BTreeMap::from([(VALUE.to_owned(), text)])), None),
        Err(bytes) => (
            None,
            Some(BTreeMap::from([(
                VALUE.to_owned(),
                ByteString(bytes.into_bytes()),
            )])),
        ),
    };
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (STORE_LABEL.to_owned(), store.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                KEY_ANNOTATION.to_owned(),
                key.to_owned(),
            )])),
            resource_version,
            ..ObjectMeta::default()
        },
        data,
        binary_data,
        ..ConfigMap::default()
    }
}

/// The key a ConfigMap of the store says it holds.
pub(crate) fn stored_key(map: &ConfigMap) -> Option<&str> {
    map.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KEY_ANNOTATION))
        .map(String::as_str)
}

/// Whether the ConfigMap is one this store wrote (its labels say so).
pub(crate) fn is_managed(map: &ConfigMap, store: &str) -> bool {
    let labels = map.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE) && label(STORE_LABEL) == Some(store)
}

/// The resource version as this store's version.
pub(crate) fn version(map: &ConfigMap) -> Result<u64, String> {
    let rv = map.metadata.resource_version.as_deref().unwrap_or_default();
    rv.parse::<u64>()
        .map_err(|_| format!("its resourceVersion `{rv}` is not a number"))
}

/// The entry held by a ConfigMap read for `key`, or why it is not a valid entry.
pub(crate) fn decode(map: &ConfigMap, store: &str, key: &str) -> Result<Versioned, String> {
    if !is_managed(map, store) {
        return Err(format!(
            "it lacks the labels {MANAGED_BY_LABEL}={MANAGED_BY_VALUE} and {STORE_LABEL}={store}"
        ));
    }
    match stored_key(map) {
        None => return Err(format!("it has no {KEY_ANNOTATION} annotation")),
        Some(found) if found != key => {
            return Err(format!(
                "its {KEY_ANNOTATION} annotation names key `{found}`"
            ));
        }
        Some(_) => {}
    }
    let data = map.data.as_ref().filter(|d| !d.is_empty());
    let binary = map.binary_data.as_ref().filter(|d| !d.is_empty());
    let value = match (data, binary) {
        (Some(data), None) if data.len() == 1 => data.get(VALUE).map(|v| v.clone().into_bytes()),
        (None, Some(binary)) if binary.len() == 1 => binary.get(VALUE).map(|v| v.0.clone()),
        _ => None,
    };
    let Some(value) = value else {
        let mut entries: Vec<String> = data
            .into_iter()
            .flat_map(|d| d.keys().map(|k| format!("data.{k}")))
            .chain(
                binary
                    .into_iter()
                    .flat_map(|d| d.keys().map(|k| format!("binaryData.{k}"))),
            )
            .collect();
        if entries.is_empty() {
            entries.push("nothing".to_owned());
        }
        return Err(format!(
            "it holds {} instead of exactly one `{VALUE}` entry",
            entries.join(", ")
        ));
    };
    Ok(Versioned {
        value,
        version: version(map)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(value: Vec<u8>) -> ConfigMap {
        encode("s", "s.k", "k", value, Some("42".to_owned()))
    }

    #[test]
    fn values_round_trip_as_text_or_bytes() {
        let text = stored(br#"{"step":3}"#.to_vec());
        assert_eq!(
            text.data.as_ref().unwrap()["value"],
            r#"{"step":3}"#,
            "UTF-8 stays readable"
        );
        assert_eq!(
            decode(&text, "s", "k").unwrap(),
            Versioned {
                value: br#"{"step":3}"#.to_vec(),
                version: 42
            }
        );
        let bytes = stored(vec![0xff, 0x00]);
        assert!(bytes.data.is_none());
        assert_eq!(decode(&bytes, "s", "k").unwrap().value, vec![0xff, 0x00]);
        assert_eq!(decode(&stored(Vec::new()), "s", "k").unwrap().value, b"");
    }

    #[test]
    fn garbage_is_described() {
        let mut edited = stored(b"1".to_vec());
        edited.data = Some(BTreeMap::from([("oops".to_owned(), "x".to_owned())]));
        let why = decode(&edited, "s", "k").unwrap_err();
        assert!(why.contains("data.oops"), "{why}");

        let mut emptied = stored(b"1".to_vec());
        emptied.data = None;
        assert!(decode(&emptied, "s", "k").unwrap_err().contains("nothing"));

        let other_key = stored(b"1".to_vec());
        assert!(
            decode(&other_key, "s", "j")
                .unwrap_err()
                .contains("names key `k`")
        );

        let mut unlabelled = stored(b"1".to_vec());
        unlabelled.metadata.labels = None;
        assert!(
            decode(&unlabelled, "s", "k")
                .unwrap_err()
                .contains("lacks the labels")
        );
        assert!(
            decode(&stored(b"1".to_vec()), "other", "k").is_err(),
            "another store's"
        );

        let mut bad_version = stored(b"1".to_vec());
        bad_version.metadata.resource_version = Some("abc".to_owned());
        assert!(
            decode(&bad_version, "s", "k")
                .unwrap_err()
                .contains("`abc`")
        );
    }
}
