//! Picking a value out of a JSON document with a JSONPath (RFC 9535, `serde_json_path`).

#[cfg(any(feature = "web", feature = "command"))]
use serde_json::Value;
#[cfg(any(feature = "web", feature = "command"))]
use serde_json_path::JsonPath;

#[cfg(any(feature = "web", feature = "command"))]
/// The value at `path` in `doc`: the single match, or an array when the path matches several
/// nodes. No path: the whole document. No match is an error naming the path. Argo's braced
/// form (`{$.data.ok}`) is accepted as well as the bare one.
pub(crate) fn extract(doc: Value, path: Option<&str>) -> Result<Value, String> {
    let Some(path) = path else {
        return Ok(doc);
    };
    let parsed = JsonPath::parse(&crate::analysis::spec::normalize_json_path(path))
        .map_err(|e| format!("`{path}` is not a JSONPath: {e}"))?;
    let nodes = parsed.query(&doc).all();
    match nodes.len() {
        0 => Err(format!(
            "JSONPath `{path}` matched nothing in {}",
            preview(&doc)
        )),
        1 => Ok(nodes[0].clone()),
        _ => Ok(Value::Array(nodes.into_iter().cloned().collect())),
    }
}

#[cfg(any(feature = "web", feature = "command"))]
/// The start of a document, for error messages.
pub(crate) fn preview(doc: &Value) -> String {
    let text = doc.to_string();
    truncate(&text, 200)
}

/// `text` cut to about `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(feature = "command")]
/// The last `max` bytes or so of `text`, on a character boundary.
pub(crate) fn last_chars(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(all(test, feature = "web", feature = "command"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn extracts_single_and_multiple_matches() {
        let doc = json!({"data": {"ok": true, "items": [{"v": 1}, {"v": 2}]}});
        assert_eq!(
            extract(doc.clone(), Some("$.data.ok")).unwrap(),
            json!(true)
        );
        assert_eq!(
            extract(doc.clone(), Some("$.data.items[1].v")).unwrap(),
            json!(2)
        );
        assert_eq!(
            extract(doc.clone(), Some("$.data.items[*].v")).unwrap(),
            json!([1, 2])
        );
        assert_eq!(extract(doc.clone(), None).unwrap(), doc);
        let e = extract(doc.clone(), Some("$.nope")).unwrap_err();
        assert!(e.contains("matched nothing"), "{e}");
        assert!(
            extract(doc.clone(), Some("data.ok"))
                .unwrap_err()
                .contains("not a JSONPath")
        );
        // Argo's Kubernetes form: one expression in braces, the root optional.
        for braced in ["{$.data.ok}", " { $.data.ok } ", "{.data.ok}"] {
            assert_eq!(
                extract(doc.clone(), Some(braced)).unwrap(),
                json!(true),
                "{braced}"
            );
        }
        assert_eq!(
            extract(doc.clone(), Some("{$.data.items[*].v}")).unwrap(),
            json!([1, 2])
        );
        let e = extract(doc.clone(), Some("{$.nope}")).unwrap_err();
        assert!(e.contains("`{$.nope}` matched nothing"), "{e}");
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(last_chars("ééé", 3), "é");
    }
}
