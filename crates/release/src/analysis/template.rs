//! `{{args.name}}` substitution in provider fields and conditions.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Replaces every `{{args.name}}` (spaces inside the braces allowed) with the argument's value.
/// Other `{{…}}` text is left alone. An unknown argument is an error naming it.
pub(crate) fn render_str(text: &str, args: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = after[..end].trim();
        match inner.strip_prefix("args.") {
            Some(name) => match args.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    let declared: Vec<&str> = args.keys().map(String::as_str).collect();
                    return Err(format!(
                        "unknown argument `{name}` in `{text}` (declared: {})",
                        if declared.is_empty() {
                            "none".to_owned()
                        } else {
                            declared.join(", ")
                        }
                    ));
                }
            },
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `value` with every string inside substituted.
pub(crate) fn render_value<T: Serialize + DeserializeOwned>(
    value: &T,
    args: &BTreeMap<String, String>,
) -> Result<T, String> {
    let mut json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    render_json(&mut json, args)?;
    serde_json::from_value(json).map_err(|e| format!("after substituting arguments: {e}"))
}

fn render_json(value: &mut Value, args: &BTreeMap<String, String>) -> Result<(), String> {
    match value {
        Value::String(s) => *s = render_str(s, args)?,
        Value::Array(items) => {
            for v in items {
                render_json(v, args)?;
            }
        }
        Value::Object(map) => {
            for v in map.values_mut() {
                render_json(v, args)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every string in `value` with its dotted field path.
pub(crate) fn collect_strings(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((path.to_owned(), s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_strings(v, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                collect_strings(v, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args() -> BTreeMap<String, String> {
        [
            ("svc".to_string(), "web".to_string()),
            ("ns".to_string(), "prod".to_string()),
        ]
        .into()
    }

    #[test]
    fn substitutes_known_args() {
        assert_eq!(
            render_str("http://x/{{args.svc}}?ns={{ args.ns }}", &args()).unwrap(),
            "http://x/web?ns=prod"
        );
        assert_eq!(render_str("no templates", &args()).unwrap(), "no templates");
        assert_eq!(
            render_str("{{other}} {{args.svc}}", &args()).unwrap(),
            "{{other}} web"
        );
        assert_eq!(
            render_str("open {{args.svc", &args()).unwrap(),
            "open {{args.svc"
        );
    }

    #[test]
    fn unknown_arg_is_named() {
        let err = render_str("q{{args.service}}", &args()).unwrap_err();
        assert!(err.contains("unknown argument `service`"), "{err}");
        assert!(err.contains("declared: ns, svc"), "{err}");
    }

    #[test]
    fn renders_nested_values_and_collects_paths() {
        let v = serde_json::json!({"url": "u/{{args.svc}}", "headers": [{"value": "{{args.ns}}"}]});
        let r: Value = render_value(&v, &args()).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"url": "u/web", "headers": [{"value": "prod"}]})
        );
        let mut out = Vec::new();
        collect_strings(&v, "provider", &mut out);
        assert!(out.contains(&("provider.headers[0].value".into(), "{{args.ns}}".into())));
    }
}
