//! The analysis spec: arguments and metrics, with Argo Rollouts' field names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::condition;
use super::duration::GoDuration;
use super::template;
use super::{AnalysisError, MetricProvider, SpecProblem};

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
    /// value, naming every one.
    pub fn resolve_args(
        &self,
        provided: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AnalysisError> {
        let mut problems = Vec::new();
        let args = self.resolve_args_into(provided, &mut problems);
        AnalysisError::from_problems(problems).map(|()| args)
    }

    /// The values that resolve; a problem for each argument that does not.
    fn resolve_args_into(
        &self,
        provided: &BTreeMap<String, String>,
        problems: &mut Vec<SpecProblem>,
    ) -> BTreeMap<String, String> {
        let declared: BTreeSet<&str> = self.args.iter().map(|a| a.name.as_str()).collect();
        for unknown in provided.keys().filter(|k| !declared.contains(k.as_str())) {
            problems.push(SpecProblem::new(
                "args",
                None,
                format!(
                    "unknown argument `{unknown}` (declared: {})",
                    list(declared.iter().copied())
                ),
            ));
        }
        let mut out = BTreeMap::new();
        for (i, arg) in self.args.iter().enumerate() {
            match provided.get(&arg.name).or(arg.value.as_ref()) {
                Some(v) => {
                    out.insert(arg.name.clone(), v.clone());
                }
                None => problems.push(SpecProblem::new(
                    format!("args[{i}].value"),
                    None,
                    format!("argument `{}` has no value and none was provided", arg.name),
                )),
            }
        }
        out
    }

    /// Checks the spec with the arguments a run will provide: argument names, every
    /// `{{args.x}}` declared, CEL syntax of both conditions, `count > 1` only with an
    /// `interval`, limits, and each provider's required fields.
    ///
    /// Every problem is reported, each with its path (`metrics[1].count`,
    /// `metrics[0].provider.web.url`, `args[2].value`). Checks that need an argument's value
    /// (a condition's CEL syntax, a templated URL) are skipped for a metric that uses an
    /// argument without one; that argument is reported instead.
    pub fn validate(&self, provided_args: &BTreeMap<String, String>) -> Result<(), AnalysisError> {
        let mut problems = Vec::new();
        if self.metrics.is_empty() {
            problems.push(SpecProblem::new("metrics", None, "no metrics"));
        }
        let mut names = BTreeSet::new();
        for (i, arg) in self.args.iter().enumerate() {
            if arg.name.is_empty() {
                problems.push(SpecProblem::new(
                    format!("args[{i}].name"),
                    None,
                    "argument name is empty",
                ));
            } else if !names.insert(arg.name.as_str()) {
                problems.push(SpecProblem::new(
                    format!("args[{i}].name"),
                    None,
                    format!("argument `{}` is declared twice", arg.name),
                ));
            }
        }
        let args = self.resolve_args_into(provided_args, &mut problems);
        let mut metric_names = BTreeSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            if m.name.is_empty() {
                problems.push(SpecProblem::new(
                    format!("metrics[{i}].name"),
                    None,
                    "metric name is empty",
                ));
            } else if !metric_names.insert(m.name.as_str()) {
                problems.push(SpecProblem::new(
                    format!("metrics[{i}].name"),
                    Some(&m.name),
                    format!("metric name `{}` is used twice", m.name),
                ));
            }
            m.validate_fields(i, &names, &args, &mut problems);
        }
        AnalysisError::from_problems(problems)
    }

    /// Checks that `providers` measures every metric's provider kind, so that a spec naming
    /// an unknown kind is rejected before anything starts (a run would error that metric at
    /// its first measurement). Every metric without a provider is reported at
    /// `metrics[i].provider`, with its kind and the kinds registered.
    pub fn validate_providers(&self, providers: &dyn MetricProvider) -> Result<(), AnalysisError> {
        let problems = self
            .metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| !providers.supports(m.provider.kind()))
            .map(|(i, m)| {
                SpecProblem::new(
                    format!("metrics[{i}].provider"),
                    Some(&m.name),
                    missing_provider(m.provider.kind(), &providers.kinds()),
                )
            })
            .collect();
        AnalysisError::from_problems(problems)
    }
}

impl MetricSpec {
    /// Adds this metric's problems, at `metrics[index].<field>`. `declared` are the declared
    /// argument names, `args` the values that resolved.
    fn validate_fields(
        &self,
        index: usize,
        declared: &BTreeSet<&str>,
        args: &BTreeMap<String, String>,
        problems: &mut Vec<SpecProblem>,
    ) {
        let name = (!self.name.is_empty()).then_some(self.name.as_str());
        let mut push = |field: &str, reason: String| {
            problems.push(SpecProblem::new(
                format!("metrics[{index}].{field}"),
                name,
                reason,
            ));
        };
        if let Some(c) = self.count
            && c > 1
            && self.interval.is_none()
        {
            push(
                "count",
                format!("count {c} needs an interval between measurements"),
            );
        }
        if self.interval.is_some_and(|i| i.0.is_zero()) {
            push("interval", "interval must be positive".into());
        }
        for (field, limit) in [
            ("failureLimit", self.failure_limit),
            ("inconclusiveLimit", self.inconclusive_limit),
            ("consecutiveErrorLimit", self.consecutive_error_limit),
        ] {
            if limit < -1 {
                push(
                    field,
                    format!("{limit} is below -1 (-1 disables the limit)"),
                );
            }
        }
        // A count of 1 without an interval is still one measurement; count > 1 without one is
        // reported above, so the success limits are measured against what would run.
        let measurements = match (self.interval, self.count) {
            (None, Some(c)) if c > 1 => None,
            _ => self.effective_count(),
        };
        for (field, limit, what) in [
            (
                "consecutiveSuccessLimit",
                self.consecutive_success_limit,
                "consecutive successes",
            ),
            ("successfulLimit", self.successful_limit, "successes"),
        ] {
            if limit > 0
                && let Some(c) = measurements
                && c < limit
            {
                push(
                    field,
                    format!("{limit} {what} can never happen in {c} measurements"),
                );
            }
        }
        // Every `{{args.x}}` must be declared (one problem per field, naming the first
        // undeclared argument).
        let every_declared: BTreeMap<String, String> = declared
            .iter()
            .map(|n| ((*n).to_owned(), String::new()))
            .collect();
        let mut undeclared = false;
        for (field, text) in self.templated_fields() {
            if let Err(reason) = template::render_str(&text, &every_declared) {
                push(&field, reason);
                undeclared = true;
            }
        }
        if undeclared {
            return;
        }
        // A declared argument without a value was reported with the arguments; what needs
        // the values cannot be checked.
        let Ok(rendered) = self.render(args) else {
            return;
        };
        for (field, cond) in [
            ("successCondition", &rendered.success_condition),
            ("failureCondition", &rendered.failure_condition),
        ] {
            if let Some(expr) = cond
                && let Err(reason) = condition::check(expr)
            {
                push(field, format!("`{expr}`: {reason}"));
            }
        }
        for (field, reason) in rendered.provider.problems() {
            push(&field, reason);
        }
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
    /// Problems with the rendered provider's fields, as (field path, reason).
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |field: &str, reason: String| out.push((field.to_owned(), reason));
        match self {
            ProviderSpec::Web(w) => {
                if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                    push(
                        "provider.web.url",
                        format!("`{}` is not an http(s) URL", w.url),
                    );
                }
                if let Some(m) = &w.method
                    && !matches!(m.to_ascii_uppercase().as_str(), "GET" | "POST" | "PUT")
                {
                    push(
                        "provider.web.method",
                        format!("`{m}` is not GET, POST or PUT"),
                    );
                }
                if w.timeout_seconds == Some(0) {
                    push("provider.web.timeoutSeconds", "must be positive".into());
                }
                if let Some(reason) = json_path_problem(w.json_path.as_deref()) {
                    push("provider.web.jsonPath", reason);
                }
            }
            ProviderSpec::Prometheus(p) => {
                if !(p.address.starts_with("http://") || p.address.starts_with("https://")) {
                    push(
                        "provider.prometheus.address",
                        format!("`{}` is not an http(s) URL", p.address),
                    );
                }
                if p.query.trim().is_empty() {
                    push("provider.prometheus.query", "empty query".into());
                }
            }
            ProviderSpec::Command(c) => {
                if c.command.first().is_none_or(|p| p.is_empty()) {
                    push("provider.command.command", "no program given".into());
                }
                if let Some(reason) = json_path_problem(c.json_path.as_deref()) {
                    push("provider.command.jsonPath", reason);
                }
            }
            ProviderSpec::Plugin(map) => {
                if map.len() != 1 || map.keys().any(String::is_empty) {
                    push(
                        "provider.plugin",
                        "must name exactly one plugin kind as its only key".into(),
                    );
                }
            }
        }
        out
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

fn json_path_problem(path: Option<&str>) -> Option<String> {
    let p = path?;
    serde_json_path::JsonPath::parse(&normalize_json_path(p))
        .err()
        .map(|e| format!("`{p}` is not a JSONPath: {e}"))
}

/// Why no provider measures `kind`, given the kinds `registered`.
pub(crate) fn missing_provider(kind: &str, registered: &[String]) -> String {
    if let Some(feature) = super::provider::feature_off(kind) {
        return format!(
            "the `{kind}` provider is not compiled in: enable the `{feature}` feature of \
             rorqual-release"
        );
    }
    let hint = if kind == "command" {
        "; the command provider runs programs, so it is opt-in: register it with \
         `Providers::with_command()`"
    } else {
        ""
    };
    format!(
        "no provider of kind `{kind}` is registered (registered: {}){hint}",
        list(registered.iter().map(String::as_str))
    )
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
        assert_eq!(braced.problems(), []);
        let broken = ProviderSpec::Web(WebMetric::get("http://x").json_path("{$.data["));
        let (field, reason) = broken.problems().remove(0);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod validation_tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::analysis::Providers;
    use crate::analysis::test_support::{Scripted, fake};

    /// Every problem is reported with its path, not only the first one found.
    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let spec = AnalysisSpec::new(vec![
            MetricSpec::new("ok", fake()),
            MetricSpec::new("latency", fake())
                .count(3)
                .failure_limit(-2)
                .success_condition("result <"),
            MetricSpec::new(
                "web",
                ProviderSpec::Web(WebMetric::get("localhost/{{args.path}}").json_path("$[")),
            ),
            MetricSpec::new("ok", fake()),
        ])
        .arg("svc", None)
        .arg("", Some("x"));
        let provided: BTreeMap<String, String> = [("extra".to_string(), "1".to_string())].into();
        let err = spec.validate(&provided).unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "args[1].name",
                "args",
                "args[0].value",
                "metrics[1].count",
                "metrics[1].failureLimit",
                "metrics[2].provider.web.url",
                "metrics[3].name",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("7 problems: args[1].name: argument name is empty; "),
            "{text}"
        );
        assert!(
            text.contains("args: unknown argument `extra` (declared: , svc)")
                && text.contains("args[0].value: argument `svc` has no value")
                && text.contains(
                    "metrics[2].provider.web.url (metric `web`): unknown argument `path`"
                )
                && text.contains("metrics[3].name (metric `ok`): metric name `ok` is used twice"),
            "{text}"
        );
        // The metric using `svc`, which has no value, is not checked further (its CEL and
        // provider fields need the value); the others are.
        assert_eq!(err.metric(), Some("latency"));

        // With the arguments fixed, the value-dependent checks run and report too.
        let spec = AnalysisSpec::new(vec![
            MetricSpec::new("latency", fake()).success_condition("result <"),
            MetricSpec::new(
                "web",
                ProviderSpec::Web(WebMetric::get("localhost/x").json_path("$[")),
            ),
        ])
        .arg("svc", Some("api"));
        let err = spec.validate(&BTreeMap::new()).unwrap_err();
        let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metrics[0].successCondition",
                "metrics[1].provider.web.url",
                "metrics[1].provider.web.jsonPath"
            ],
            "{err}"
        );
    }

    #[test]
    fn validate_providers_names_the_metric_path_the_kind_and_the_registered_kinds() {
        let spec = AnalysisSpec::new(vec![
            MetricSpec::new("a", fake()),
            MetricSpec::new("b", ProviderSpec::plugin("kafka-lag", json!({}))),
            MetricSpec::new("c", ProviderSpec::Command(CommandMetric::new(["true"]))),
        ])
        .arg("svc", Some("x"));
        let providers = Providers::new().with(Arc::new(Scripted::new(vec![])));
        let err = spec.validate_providers(&providers).unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 2, "{err}");
        assert_eq!(problems[0].path, "metrics[1].provider");
        assert_eq!(problems[0].metric.as_deref(), Some("b"));
        assert_eq!(
            problems[0].reason,
            "no provider of kind `kafka-lag` is registered (registered: fake)"
        );
        assert_eq!(problems[1].path, "metrics[2].provider");
        assert!(
            problems[1].reason.contains("command")
                && (problems[1].reason.contains("with_command")
                    || problems[1].reason.contains("enable the `command` feature")),
            "{}",
            problems[1].reason
        );

        // A single provider answers for its own kind; the registry for each it holds.
        let only = AnalysisSpec::new(vec![MetricSpec::new("a", fake())]).arg("svc", Some("x"));
        only.validate_providers(&Scripted::new(vec![])).unwrap();
        only.validate_providers(&providers).unwrap();
        let err = only.validate_providers(&Providers::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metrics[0].provider (metric `a`): no provider of kind `fake` is registered \
             (registered: none)"
        );
    }
}
