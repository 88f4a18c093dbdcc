//! Success and failure conditions in CEL (the `cel` crate), over `result` and `args`.

use std::collections::BTreeMap;

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
    let result =
        cel::to_value(result).map_err(|e| format!("cannot give result {result} to CEL: {e}"))?;
    context.add_variable_from_value("result", result);
    let args = cel::to_value(args).map_err(|e| format!("cannot give args to CEL: {e}"))?;
    context.add_variable_from_value("args", args);
    match program.execute(&context) {
        Ok(CelValue::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("`{expr}` gave {other:?}, not a bool")),
        Err(e) => Err(format!("evaluating `{expr}`: {e}")),
    }
}

#[cfg(test)]
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
        let e = evaluate("result + 1", &json!(1), &no_args()).unwrap_err();
        assert!(e.contains("not a bool"), "{e}");
        let e = evaluate("result.missing > 1", &json!({"a": 1}), &no_args()).unwrap_err();
        assert!(e.contains("evaluating"), "{e}");
    }
}
