//! Success and failure conditions in CEL (the `cel` crate), over `result` and `args`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::{Context, Program, Value as CelValue};
use serde_json::Value;

/// Checks that `expr` parses as CEL; the error is the parser's message.
pub(crate) fn check(expr: &str) -> Result<(), String> {
    Program::compile(expr)
        .map(|_| ())
        .map_err(|e| format!("CEL syntax error: {}", e.to_string().replace('\n', "; ")))
}

/// Evaluates `expr` with `result` (the measured value) and `args` (a map of strings); the
/// expression must yield a bool.
pub(crate) fn evaluate(
    expr: &str,
    result: &Value,
    args: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let program =
        Program::compile(expr).map_err(|e| format!("CEL syntax error in `{expr}`: {e}"))?;
    let mut context = Context::default();
    context.add_variable_from_value("result", to_cel(result));
    let args: HashMap<String, String> = args.clone().into_iter().collect();
    context.add_variable_from_value("args", args);
    match program.execute(&context) {
        Ok(CelValue::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("`{expr}` gave {other:?}, not a bool")),
        Err(e) => Err(format!("evaluating `{expr}`: {e}")),
    }
}

/// JSON → CEL. Integers become `int` (not `uint`) when they fit, so `result + 1` and
/// `result == 0` work as written; other numbers become `double`.
fn to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => CelValue::Int(i),
            (None, Some(u)) => CelValue::UInt(u),
            _ => CelValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let map: HashMap<String, CelValue> =
                map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            CelValue::from(map)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn no_args() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn numbers_compare_across_int_and_float() {
        assert!(evaluate("result < 0.05", &json!(0.01), &no_args()).unwrap());
        assert!(!evaluate("result < 0.05", &json!(1), &no_args()).unwrap());
        assert!(evaluate("result == 0", &json!(0), &no_args()).unwrap());
        assert!(evaluate("result >= 5", &json!(5.0), &no_args()).unwrap());
        assert!(evaluate("result <= 5", &json!(3), &no_args()).unwrap());
    }

    #[test]
    fn structured_results_and_args() {
        let r = json!({"ok": true, "latencies": [10, 20]});
        assert!(evaluate("result.ok && result.latencies[1] < 50", &r, &no_args()).unwrap());
        let args = [("version".to_string(), "v2".to_string())].into();
        assert!(evaluate("result == args.version", &json!("v2"), &args).unwrap());
        assert!(evaluate("size(result) == 2", &json!([1, 2]), &no_args()).unwrap());
    }

    #[test]
    fn errors_are_reported() {
        assert!(check("result <").unwrap_err().contains("CEL syntax error"));
        check("result < 0.05 && args.x == 'y'").unwrap();
        assert!(evaluate("result + 1 == 2", &json!(1), &no_args()).unwrap());
        let e = evaluate("result + 1", &json!(1), &no_args()).unwrap_err();
        assert!(e.contains("not a bool"), "{e}");
        let e = evaluate("result.missing > 1", &json!({"a": 1}), &no_args()).unwrap_err();
        assert!(e.contains("evaluating"), "{e}");
    }
}
