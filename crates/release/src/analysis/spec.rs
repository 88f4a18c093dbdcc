//! The analysis spec: arguments and metrics, with Argo Rollouts' field names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use super::condition;
use super::duration::GoDuration;
use super::template;

/// An analysis template: arguments and the metrics measured with them (Argo's
/// `AnalysisTemplate.spec`).
///
/// ```
/// use rorqual_release::analysis::AnalysisSpec;
///
/// let spec: AnalysisSpec = yaml_serde::from_str(r#"
/// args:
///   - name: service
/// metrics:
///   - name: error-rate
///     interval: 10s
///     count: 3
///     successCondition: result < 0.05
///     failureLimit: 1
///     provider:
///       prometheus:
///         address: http://127.0.0.1:9090
///         query: sum(rate(errors{service="{{args.service}}"}[1m]))
/// "#).unwrap();
/// let args = [("service".to_string(), "web".to_string())].into();
/// spec.validate(&args).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct AnalysisSpec {
    /// Declared arguments, referenced as `{{args.name}}` in provider fields and conditions, and
    /// as `args.name` in CEL conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgSpec>,
    /// The metrics; the run's phase is the worst of theirs.
    pub metrics: Vec<MetricSpec>,
}

/// A declared analysis argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgSpec {
    /// The argument's name.
    pub name: String,
    /// Its default value; without one, the caller must provide it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One metric of an analysis (Argo's `Metric`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct MetricSpec {
    /// The metric's name, unique in the analysis.
    pub name: String,
    /// Time between measurements. Absent: one measurement. Present without `count`: measured
    /// until the run is terminated (background analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// How many measurements (errors excluded); above 1 needs an `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Wait before the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<GoDuration>,
    /// CEL expression over `result` (and `args`) that marks a measurement Successful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// CEL expression over `result` (and `args`) that marks a measurement Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated; one more fails the metric. Default 0; −1 disables.
    #[serde(default)]
    pub failure_limit: i32,
    /// Inconclusive measurements tolerated; one more makes the metric Inconclusive. Default 0;
    /// −1 disables.
    #[serde(default)]
    pub inconclusive_limit: i32,
    /// Consecutive provider errors tolerated; one more errors the metric. Default 4; −1
    /// disables.
    #[serde(default = "default_consecutive_error_limit")]
    pub consecutive_error_limit: i32,
    /// Consecutive successful measurements after which the metric succeeds early. Default 0
    /// (off). When set, reaching `count` without the streak is Inconclusive (the rollout
    /// pauses) while `failureLimit` applies, and Failed when `failureLimit` is −1 (the streak
    /// is then the only success criterion), as in Argo.
    #[serde(default)]
    pub consecutive_success_limit: u32,
    /// Successful measurements in total (not necessarily in a row) after which the metric
    /// succeeds early: BCS HookRun's `successfulLimit`. Default 0 (off).
    ///
    /// As in BCS, the limit is checked after `failureLimit` and before the inconclusive and
    /// error limits, and it ends a metric that would otherwise run until terminated
    /// (`interval` without `count`): "poll until it has worked N times". Where rorqual
    /// differs: BCS passes a metric that reaches `count` without reaching this limit; here,
    /// as for `consecutiveSuccessLimit`, that is Inconclusive while `failureLimit` applies and
    /// Failed when `failureLimit` is −1. A limit above the number of measurements is rejected
    /// by validation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub successful_limit: u32,
    /// Where the value comes from.
    pub provider: ProviderSpec,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_consecutive_error_limit() -> i32 {
    DEFAULT_CONSECUTIVE_ERROR_LIMIT
}

/// Argo's default for [`MetricSpec::consecutive_error_limit`].
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: i32 = 4;

/// Where a metric's value comes from: exactly one provider (Argo's `MetricProvider`, an object
/// with one key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawProvider", into = "RawProvider")]
#[non_exhaustive]
pub enum ProviderSpec {
    /// An HTTP request whose JSON response holds the value.
    Web(WebMetric),
    /// A Prometheus instant query.
    Prometheus(PrometheusMetric),
    /// A program whose standard output is the value.
    Command(CommandMetric),
    /// A provider registered by the host under its own kind: `{"plugin": {"<kind>": config}}`.
    Plugin(BTreeMap<String, serde_json::Value>),
}

impl ProviderSpec {
    /// The provider kind that measures this metric (`web`, `prometheus`, `command`, or a
    /// plugin's kind).
    pub fn kind(&self) -> &str {
        match self {
            ProviderSpec::Web(_) => "web",
            ProviderSpec::Prometheus(_) => "prometheus",
            ProviderSpec::Command(_) => "command",
            ProviderSpec::Plugin(map) => map.keys().next().map(String::as_str).unwrap_or(""),
        }
    }

    /// A plugin provider of `kind` with `config`.
    pub fn plugin(kind: impl Into<String>, config: serde_json::Value) -> Self {
        ProviderSpec::Plugin([(kind.into(), config)].into())
    }
}

/// The wire form of [`ProviderSpec`]: an object with exactly one provider key, as Argo writes
/// it. A derived enum would not do: `yaml_serde` (like `serde_yaml` before it) reads and
/// writes enums as YAML tags (`!web`), and the "exactly one" rule gets a clear message here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    web: Option<WebMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prometheus: Option<PrometheusMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<CommandMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plugin: Option<BTreeMap<String, serde_json::Value>>,
}

impl TryFrom<RawProvider> for ProviderSpec {
    type Error = String;

    fn try_from(raw: RawProvider) -> Result<Self, String> {
        let mut found = Vec::new();
        if let Some(w) = raw.web {
            found.push(ProviderSpec::Web(w));
        }
        if let Some(p) = raw.prometheus {
            found.push(ProviderSpec::Prometheus(p));
        }
        if let Some(c) = raw.command {
            found.push(ProviderSpec::Command(c));
        }
        if let Some(p) = raw.plugin {
            found.push(ProviderSpec::Plugin(p));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            n => Err(format!(
                "a provider needs exactly one of web, prometheus, command, plugin (found {n})"
            )),
        }
    }
}

impl From<ProviderSpec> for RawProvider {
    fn from(p: ProviderSpec) -> Self {
        let mut raw = RawProvider::default();
        match p {
            ProviderSpec::Web(w) => raw.web = Some(w),
            ProviderSpec::Prometheus(m) => raw.prometheus = Some(m),
            ProviderSpec::Command(c) => raw.command = Some(c),
            ProviderSpec::Plugin(m) => raw.plugin = Some(m),
        }
        raw
    }
}

/// The web provider's request (Argo's `web`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct WebMetric {
    /// The URL; `{{args.x}}` is substituted.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers; values are substituted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    /// A request body (POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Request timeout in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// JSONPath (RFC 9535) to the value in the response: `$.data.ok`, or Argo's Kubernetes
    /// form in braces, `{$.data.ok}` (also `{.data.ok}`, the root implied); absent: the whole
    /// document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
}

impl WebMetric {
    /// A GET of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        WebMetric {
            url: url.into(),
            ..WebMetric::default()
        }
    }

    /// Sets the JSONPath to the value.
    #[must_use]
    pub fn json_path(mut self, path: impl Into<String>) -> Self {
        self.json_path = Some(path.into());
        self
    }

    /// Adds a request header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Makes it a POST with `body`.
    #[must_use]
    pub fn post(mut self, body: impl Into<String>) -> Self {
        self.method = Some("POST".into());
        self.body = Some(body.into());
        self
    }

    /// Sets the timeout in seconds.
    #[must_use]
    pub fn timeout_seconds(mut self, secs: u64) -> Self {
        self.timeout_seconds = Some(secs);
        self
    }
}

/// An HTTP header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    /// The header name.
    pub key: String,
    /// The header value.
    pub value: String,
}

/// The prometheus provider's query (Argo's `prometheus`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PrometheusMetric {
    /// The server's base URL (`http://127.0.0.1:9090`).
    pub address: String,
    /// The PromQL instant query; `{{args.x}}` is substituted.
    pub query: String,
    /// Query timeout (default 30 s; a number means seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Request headers (authentication); values are substituted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
}

impl PrometheusMetric {
    /// `query` against the server at `address`.
    pub fn new(address: impl Into<String>, query: impl Into<String>) -> Self {
        PrometheusMetric {
            address: address.into(),
            query: query.into(),
            ..PrometheusMetric::default()
        }
    }
}

/// The command provider: runs a program; its standard output, parsed as JSON (a bare number is
/// JSON), is the value. A non-zero exit is an error.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct CommandMetric {
    /// The program and its arguments; each is substituted.
    pub command: Vec<String>,
    /// Extra environment variables; values are substituted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the program after this long (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// JSONPath to the value in the output (`$.healthy` or `{$.healthy}`, as for the web
    /// provider); absent: the whole output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
}

impl CommandMetric {
    /// Runs `command` (program first).
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandMetric {
            command: command.into_iter().map(Into::into).collect(),
            ..CommandMetric::default()
        }
    }
}

impl MetricSpec {
    /// A metric measured once by `provider`, with Argo's defaults.
    pub fn new(name: impl Into<String>, provider: ProviderSpec) -> Self {
        MetricSpec {
            name: name.into(),
            interval: None,
            count: None,
            initial_delay: None,
            success_condition: None,
            failure_condition: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: DEFAULT_CONSECUTIVE_ERROR_LIMIT,
            consecutive_success_limit: 0,
            successful_limit: 0,
            provider,
        }
    }

    /// Sets the interval between measurements.
    #[must_use]
    pub fn interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = Some(interval.into());
        self
    }

    /// Sets the number of measurements.
    #[must_use]
    pub fn count(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// Sets the delay before the first measurement.
    #[must_use]
    pub fn initial_delay(mut self, delay: std::time::Duration) -> Self {
        self.initial_delay = Some(delay.into());
        self
    }

    /// Sets the success condition (CEL).
    #[must_use]
    pub fn success_condition(mut self, cel: impl Into<String>) -> Self {
        self.success_condition = Some(cel.into());
        self
    }

    /// Sets the failure condition (CEL).
    #[must_use]
    pub fn failure_condition(mut self, cel: impl Into<String>) -> Self {
        self.failure_condition = Some(cel.into());
        self
    }

    /// Sets the failure limit (−1 disables).
    #[must_use]
    pub fn failure_limit(mut self, limit: i32) -> Self {
        self.failure_limit = limit;
        self
    }

    /// Sets the inconclusive limit (−1 disables).
    #[must_use]
    pub fn inconclusive_limit(mut self, limit: i32) -> Self {
        self.inconclusive_limit = limit;
        self
    }

    /// Sets the consecutive error limit (−1 disables).
    #[must_use]
    pub fn consecutive_error_limit(mut self, limit: i32) -> Self {
        self.consecutive_error_limit = limit;
        self
    }

    /// Sets the consecutive success limit (0: off).
    #[must_use]
    pub fn consecutive_success_limit(mut self, limit: u32) -> Self {
        self.consecutive_success_limit = limit;
        self
    }

    /// Sets the total successes after which the metric succeeds (BCS `successfulLimit`; 0:
    /// off).
    #[must_use]
    pub fn successful_limit(mut self, limit: u32) -> Self {
        self.successful_limit = limit;
        self
    }

    /// The number of non-error measurements after which the metric completes; `None`: runs
    /// until terminated.
    pub fn effective_count(&self) -> Option<u32> {
        match (self.interval, self.count) {
            (None, _) => Some(1),
            (Some(_), Some(c)) if c > 0 => Some(c),
            (Some(_), _) => None,
        }
    }

    /// This metric with `{{args.x}}` substituted in its provider fields and conditions.
    pub(crate) fn render(&self, args: &BTreeMap<String, String>) -> Result<MetricSpec, String> {
        let mut out = self.clone();
        out.provider = template::render_value(&self.provider, args)?;
        if let Some(c) = &self.success_condition {
            out.success_condition = Some(template::render_str(c, args)?);
        }
        if let Some(c) = &self.failure_condition {
            out.failure_condition = Some(template::render_str(c, args)?);
        }
        Ok(out)
    }
}

impl AnalysisSpec {
    /// An analysis of `metrics` without arguments.
    pub fn new(metrics: Vec<MetricSpec>) -> Self {
        AnalysisSpec {
            args: Vec::new(),
            metrics,
        }
    }

    /// Declares an argument, with a default value or `None`.
    #[must_use]
    pub fn arg(mut self, name: impl Into<String>, value: Option<&str>) -> Self {
        self.args.push(ArgSpec {
            name: name.into(),
            value: value.map(str::to_owned),
        });
        self
    }

    /// The argument values a run uses: declared defaults overridden by `provided`.
    ///
    /// Fails on a provided argument that is not declared and on a declared argument without a
    /// value.
    pub fn resolve_args(
        &self,
        provided: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AnalysisError> {
        let declared: BTreeSet<&str> = self.args.iter().map(|a| a.name.as_str()).collect();
        if let Some(unknown) = provided.keys().find(|k| !declared.contains(k.as_str())) {
            return Err(AnalysisError::invalid(
                None,
                "args",
                format!(
                    "unknown argument `{unknown}` (declared: {})",
                    list(declared.iter().copied())
                ),
            ));
        }
        let mut out = BTreeMap::new();
        for arg in &self.args {
            match provided.get(&arg.name).or(arg.value.as_ref()) {
                Some(v) => {
                    out.insert(arg.name.clone(), v.clone());
                }
                None => {
                    return Err(AnalysisError::invalid(
                        None,
                        "args",
                        format!("argument `{}` has no value and none was provided", arg.name),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Checks the spec with the arguments a run will provide: argument names, every
    /// `{{args.x}}` declared, CEL syntax of both conditions, `count > 1` only with an
    /// `interval`, limits, and each provider's required fields. Errors name the metric and
    /// field.
    pub fn validate(&self, provided_args: &BTreeMap<String, String>) -> Result<(), AnalysisError> {
        if self.metrics.is_empty() {
            return Err(AnalysisError::invalid(None, "metrics", "no metrics"));
        }
        let mut names = BTreeSet::new();
        for arg in &self.args {
            if arg.name.is_empty() || !names.insert(arg.name.as_str()) {
                return Err(AnalysisError::invalid(
                    None,
                    "args",
                    format!("argument name `{}` is empty or declared twice", arg.name),
                ));
            }
        }
        let args = self.resolve_args(provided_args)?;
        let mut metric_names = BTreeSet::new();
        for m in &self.metrics {
            let name = Some(m.name.as_str());
            if m.name.is_empty() || !metric_names.insert(m.name.as_str()) {
                return Err(AnalysisError::invalid(
                    name,
                    "name",
                    "metric name is empty or used twice",
                ));
            }
            m.validate_fields(&args)?;
        }
        Ok(())
    }
}

impl MetricSpec {
    fn validate_fields(&self, args: &BTreeMap<String, String>) -> Result<(), AnalysisError> {
        let name = Some(self.name.as_str());
        let err = |field: &str, reason: String| Err(AnalysisError::invalid(name, field, reason));
        if let Some(c) = self.count
            && c > 1
            && self.interval.is_none()
        {
            return err(
                "count",
                format!("count {c} needs an interval between measurements"),
            );
        }
        if self.interval.is_some_and(|i| i.0.is_zero()) {
            return err("interval", "interval must be positive".into());
        }
        for (field, limit) in [
            ("failureLimit", self.failure_limit),
            ("inconclusiveLimit", self.inconclusive_limit),
            ("consecutiveErrorLimit", self.consecutive_error_limit),
        ] {
            if limit < -1 {
                return err(
                    field,
                    format!("{limit} is below -1 (-1 disables the limit)"),
                );
            }
        }
        if self.consecutive_success_limit > 0
            && let Some(c) = self.effective_count()
            && c < self.consecutive_success_limit
        {
            return err(
                "consecutiveSuccessLimit",
                format!(
                    "{} consecutive successes can never happen in {c} measurements",
                    self.consecutive_success_limit
                ),
            );
        }
        if self.successful_limit > 0
            && let Some(c) = self.effective_count()
            && c < self.successful_limit
        {
            return err(
                "successfulLimit",
                format!(
                    "{} successes can never happen in {c} measurements",
                    self.successful_limit
                ),
            );
        }
        // Every `{{args.x}}` must be declared: render reports the first unknown one.
        for (field, text) in self.templated_fields() {
            template::render_str(&text, args)
                .map_err(|reason| AnalysisError::invalid(name, &field, reason))?;
        }
        let rendered = self
            .render(args)
            .map_err(|reason| AnalysisError::invalid(name, "provider", reason))?;
        for (field, cond) in [
            ("successCondition", &rendered.success_condition),
            ("failureCondition", &rendered.failure_condition),
        ] {
            if let Some(expr) = cond {
                condition::check(expr).map_err(|reason| {
                    AnalysisError::invalid(name, field, format!("`{expr}`: {reason}"))
                })?;
            }
        }
        rendered
            .provider
            .validate()
            .map_err(|(field, reason)| AnalysisError::invalid(name, &field, reason))
    }

    /// Every string that is templated, with its field path (for error messages).
    fn templated_fields(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(c) = &self.success_condition {
            out.push(("successCondition".to_owned(), c.clone()));
        }
        if let Some(c) = &self.failure_condition {
            out.push(("failureCondition".to_owned(), c.clone()));
        }
        if let Ok(v) = serde_json::to_value(&self.provider) {
            template::collect_strings(&v, "provider", &mut out);
        }
        out
    }
}

impl ProviderSpec {
    /// Required fields of the rendered provider; the error is (field path, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, reason: &str| Err((field.to_owned(), reason.to_owned()));
        match self {
            ProviderSpec::Web(w) => {
                if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                    return Err((
                        "provider.web.url".into(),
                        format!("`{}` is not an http(s) URL", w.url),
                    ));
                }
                if let Some(m) = &w.method
                    && !matches!(m.to_ascii_uppercase().as_str(), "GET" | "POST" | "PUT")
                {
                    return Err((
                        "provider.web.method".into(),
                        format!("`{m}` is not GET, POST or PUT"),
                    ));
                }
                if w.timeout_seconds == Some(0) {
                    return fail("provider.web.timeoutSeconds", "must be positive");
                }
                check_json_path(w.json_path.as_deref(), "provider.web.jsonPath")
            }
            ProviderSpec::Prometheus(p) => {
                if !(p.address.starts_with("http://") || p.address.starts_with("https://")) {
                    return Err((
                        "provider.prometheus.address".into(),
                        format!("`{}` is not an http(s) URL", p.address),
                    ));
                }
                if p.query.trim().is_empty() {
                    return fail("provider.prometheus.query", "empty query");
                }
                Ok(())
            }
            ProviderSpec::Command(c) => {
                if c.command.first().is_none_or(|p| p.is_empty()) {
                    return fail("provider.command.command", "no program given");
                }
                check_json_path(c.json_path.as_deref(), "provider.command.jsonPath")
            }
            ProviderSpec::Plugin(map) => {
                if map.len() != 1 || map.keys().any(String::is_empty) {
                    return fail(
                        "provider.plugin",
                        "must name exactly one plugin kind as its only key",
                    );
                }
                Ok(())
            }
        }
    }
}

/// A `jsonPath` as RFC 9535 wants it: Argo writes Kubernetes' template form, one expression in
/// braces (`{$.data.ok}`, or `{.data.ok}` with the root implied); the braces are dropped and a
/// missing `$` root is added. Anything else is returned trimmed, as written.
pub(crate) fn normalize_json_path(path: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = path.trim();
    let Some(inner) = trimmed
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .map(str::trim)
    else {
        return trimmed.into();
    };
    if inner.starts_with('.') || inner.starts_with('[') {
        format!("${inner}").into()
    } else {
        inner.into()
    }
}

fn check_json_path(path: Option<&str>, field: &str) -> Result<(), (String, String)> {
    match path {
        Some(p) => serde_json_path::JsonPath::parse(&normalize_json_path(p))
            .map(|_| ())
            .map_err(|e| (field.to_owned(), format!("`{p}` is not a JSONPath: {e}"))),
        None => Ok(()),
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod yaml_tests {
    use super::*;

    /// Argo writes a provider as a one-key map; `yaml_serde` (0.10, like `serde_yaml` 0.9)
    /// maps a derived enum to YAML tags (`!web`) instead, so [`RawProvider`] stays.
    #[test]
    fn providers_read_and_write_as_argo_maps_not_yaml_tags() {
        let map = "web:\n  url: http://x\n  jsonPath: $.ok\n";
        let spec: ProviderSpec = yaml_serde::from_str(map).unwrap();
        assert_eq!(
            spec,
            ProviderSpec::Web(WebMetric::get("http://x").json_path("$.ok"))
        );
        let written = yaml_serde::to_string(&spec).unwrap();
        assert_eq!(written, "web:\n  url: http://x\n  jsonPath: $.ok\n");
        let plugin = ProviderSpec::plugin("kafka-lag", serde_json::json!({"topic": "t"}));
        let written = yaml_serde::to_string(&plugin).unwrap();
        assert!(!written.contains('!'), "{written}");
        assert_eq!(
            yaml_serde::from_str::<ProviderSpec>(&written).unwrap(),
            plugin
        );

        // The tag form is not Argo's and is rejected, naming the keys that work.
        let tagged = yaml_serde::from_str::<ProviderSpec>("!web\nurl: http://x\n").unwrap_err();
        assert!(
            tagged
                .to_string()
                .contains("expected one of `web`, `prometheus`"),
            "{tagged}"
        );

        // Argo's braced JSONPath validates; a broken one is named with its field.
        let braced: ProviderSpec =
            yaml_serde::from_str("web:\n  url: http://x\n  jsonPath: \"{$.data.ok}\"\n").unwrap();
        assert_eq!(braced.validate(), Ok(()));
        let broken = ProviderSpec::Web(WebMetric::get("http://x").json_path("{$.data["));
        let (field, reason) = broken.validate().unwrap_err();
        assert_eq!(field, "provider.web.jsonPath");
        assert!(reason.contains("`{$.data[` is not a JSONPath"), "{reason}");

        // Why the work-around is still needed: a derived enum wants the tag form.
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(rename_all = "camelCase")]
        enum Derived {
            Web(WebMetric),
        }
        let e = yaml_serde::from_str::<Derived>(map).unwrap_err();
        assert!(e.to_string().contains("YAML tag"), "{e}");
        assert!(yaml_serde::from_str::<Derived>("!web\nurl: http://x\n").is_ok());
    }
}
