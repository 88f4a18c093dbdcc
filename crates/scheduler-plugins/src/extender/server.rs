//! The extender HTTP server: `/filter`, `/prioritize`, `/bind`, `/preempt` over a
//! [`Scheduler`]'s plugins and cache.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use crate::extender::ExtenderStanza;
use crate::extender::wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, HostPriority, MetaVictims,
    to_extender_priority,
};
use crate::framework::Code;
use crate::interner::Sym;
use crate::kube::{node_from_json, node_name, pod_from_json};
use crate::scheduler::{Evaluation, Scheduler};
use crate::snapshot::{PodInfo, Snapshot};

/// How many pods seen in filter calls are remembered for a later bind, by default.
pub const DEFAULT_REMEMBERED_PODS: usize = 10_000;

/// Pods seen in filter calls, for the bind verb (whose request names the pod only). Bounded:
/// the pod whose last filter call is oldest is forgotten first.
#[derive(Debug)]
struct SeenPods {
    capacity: usize,
    /// uid → (pod, sequence number of its latest filter call).
    pods: HashMap<String, (PodInfo, u64)>,
    /// Filter calls, oldest first; an entry whose sequence number is no longer the pod's
    /// latest is stale and skipped.
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl SeenPods {
    fn new(capacity: usize) -> SeenPods {
        SeenPods {
            capacity: capacity.max(1),
            pods: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    fn insert(&mut self, pod: PodInfo) {
        let seq = self.next;
        self.next += 1;
        let uid = pod.uid.to_string();
        self.order.push_back((uid.clone(), seq));
        self.pods.insert(uid, (pod, seq));
        while self.pods.len() > self.capacity {
            let Some((uid, seq)) = self.order.pop_front() else {
                break;
            };
            if self
                .pods
                .get(&uid)
                .is_some_and(|(_, latest)| *latest == seq)
            {
                self.pods.remove(&uid);
            }
        }
        // Pods filtered again leave stale entries behind; drop them before they pile up.
        if self.order.len() > 2 * self.capacity {
            let pods = &self.pods;
            self.order
                .retain(|(uid, seq)| pods.get(uid).is_some_and(|(_, latest)| latest == seq));
        }
    }

    fn take(&mut self, uid: &str) -> Option<PodInfo> {
        self.pods.remove(uid).map(|(pod, _)| pod)
    }
}

/// The default limit on a request body: a full `NodeList` of 5,000 nodes is far above
/// axum's default of 2 MB.
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

/// Serves a scheduler's plugins to kube-scheduler through the extender protocol. Bound pods
/// are recorded in the scheduler's cache, and the bind verb needs the node there. In
/// node-cache-capable mode (the default) kube-scheduler sends `NodeNames` only, so feed the
/// cache yourself ([`Scheduler::upsert_node`] from a Node watch); otherwise
/// ([`ExtenderServer::node_cache_capable`] false) it sends full `Nodes`, which the server
/// upserts into the cache on every filter and prioritize call.
#[derive(Debug, Clone)]
pub struct ExtenderServer {
    scheduler: Scheduler,
    token: Option<Arc<str>>,
    seen: Arc<Mutex<SeenPods>>,
    node_cache_capable: bool,
    body_limit: usize,
}

/// A request error: HTTP 400 (or 401) with a message.
#[derive(Debug)]
struct BadRequest(StatusCode, String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode response: {e}"),
        )
            .into_response(),
    }
}

impl ExtenderServer {
    /// Serves `scheduler`'s profile and cache.
    pub fn new(scheduler: Scheduler) -> ExtenderServer {
        ExtenderServer {
            scheduler,
            token: None,
            seen: Arc::new(Mutex::new(SeenPods::new(DEFAULT_REMEMBERED_PODS))),
            node_cache_capable: true,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Serves the default plugins.
    pub fn with_default_plugins() -> ExtenderServer {
        ExtenderServer::new(Scheduler::with_default_plugins())
    }

    /// Requires `Authorization: Bearer <token>` on every verb.
    #[must_use]
    pub fn bearer_token(mut self, token: impl Into<String>) -> ExtenderServer {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// Remembers up to `pods` pods from filter calls for their bind call (default
    /// [`DEFAULT_REMEMBERED_PODS`]); past that, the pod filtered longest ago is forgotten,
    /// and its bind fails so that kube-scheduler retries it.
    #[must_use]
    pub fn remembered_pods(mut self, pods: usize) -> ExtenderServer {
        self.seen = Arc::new(Mutex::new(SeenPods::new(pods)));
        self
    }

    /// Whether kube-scheduler should send node names only (true, the default: the cache is fed
    /// by you) or full nodes (false: requests feed the cache). [`ExtenderServer::stanza`]
    /// writes this into `nodeCacheCapable`; the server accepts both forms either way.
    #[must_use]
    pub fn node_cache_capable(mut self, yes: bool) -> ExtenderServer {
        self.node_cache_capable = yes;
        self
    }

    /// The largest request body accepted, in bytes (default [`DEFAULT_BODY_LIMIT`]); a
    /// larger one gets HTTP 413.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> ExtenderServer {
        self.body_limit = bytes;
        self
    }

    /// The kube-scheduler `extenders[]` entry for this server at `url_prefix`, with
    /// `nodeCacheCapable` matching [`ExtenderServer::node_cache_capable`].
    pub fn stanza(&self, url_prefix: impl Into<String>) -> ExtenderStanza {
        ExtenderStanza::new(url_prefix).node_cache_capable(self.node_cache_capable)
    }

    /// The scheduler behind the server.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The router (POST `/filter`, `/prioritize`, `/bind`, `/preempt`; GET `/healthz`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/filter", post(filter_handler))
            .route("/prioritize", post(prioritize_handler))
            .route("/bind", post(bind_handler))
            .route("/preempt", post(preempt_handler))
            .route("/healthz", get(|| async { "ok" }))
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, BadRequest> {
        self.authorize(headers)?;
        serde_json::from_slice(body)
            .map_err(|e| BadRequest(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
    }

    /// Authorizes and decodes `ExtenderArgs` (filter and prioritize).
    fn args(&self, headers: &HeaderMap, body: &[u8]) -> Result<ExtenderArgs, BadRequest> {
        self.authorize(headers)?;
        ExtenderArgs::from_slice(body)
            .map_err(|e| BadRequest(StatusCode::BAD_REQUEST, e.to_string()))
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), BadRequest> {
        if let Some(token) = &self.token {
            let ok = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| t.trim() == &**token);
            if !ok {
                return Err(BadRequest(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token".into(),
                ));
            }
        }
        Ok(())
    }

    fn remember(&self, pod: &PodInfo) {
        self.seen.lock().insert(pod.clone());
    }

    /// Runs `f` over the candidate nodes of `args` in the cache: for `Nodes`, the given nodes
    /// are upserted into the cache first; for `NodeNames`, names the cache does not know are
    /// reported separately.
    fn with_candidates<R>(
        &self,
        args: &ExtenderArgs,
        f: impl FnOnce(&Snapshot, &[u32], &[String]) -> R,
    ) -> Result<R, String> {
        if let Some(nodes) = &args.nodes {
            let items = nodes
                .get("items")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut infos = Vec::with_capacity(items.len());
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                let info = node_from_json(item).map_err(|e| e.to_string())?;
                names.push(info.name);
                infos.push(info);
            }
            // Nodes mode feeds the cache (keeping the pods it has on those nodes), so a
            // later bind finds the node it is asked about.
            self.scheduler.add_nodes(infos);
            return Ok(self.scheduler.with_snapshot(|snapshot| {
                let idx: Vec<u32> = names
                    .iter()
                    .filter_map(|&name| snapshot.index_of(name).map(|i| i as u32))
                    .collect();
                f(snapshot, &idx, &[])
            }));
        }
        let names = args.node_names.as_deref().unwrap_or_default();
        Ok(self.scheduler.with_snapshot(|snapshot| {
            let mut idx = Vec::with_capacity(names.len());
            let mut unknown = Vec::new();
            let syms = Sym::lookup_many(names.iter().map(String::as_str));
            for (name, sym) in names.iter().zip(syms) {
                match sym.and_then(|s| snapshot.index_of(s)) {
                    Some(i) => idx.push(i as u32),
                    None => unknown.push(name.clone()),
                }
            }
            f(snapshot, &idx, &unknown)
        }))
    }

    /// The filter verb.
    pub fn filter(&self, args: &ExtenderArgs) -> ExtenderFilterResult {
        let mut result = ExtenderFilterResult::default();
        let names_mode = args.nodes.is_none();
        if names_mode {
            result.node_names = Some(Vec::new());
        }
        let pod = match pod_from_json(&args.pod) {
            Ok(p) => p,
            Err(e) => {
                result.error = e.to_string();
                return result;
            }
        };
        self.remember(&pod);
        let evaluated = self.with_candidates(args, |snapshot, idx, unknown| {
            let eval = self.scheduler.evaluate(&pod, snapshot, Some(idx), false);
            let names = |e: &Evaluation| -> (Vec<String>, Vec<(String, Code, String)>) {
                let nodes = snapshot.nodes();
                let ok = Sym::resolve_many(e.feasible.iter().map(|&i| nodes[i as usize].name));
                let bad = e
                    .failed
                    .iter()
                    .map(|(i, s)| {
                        (
                            nodes[*i as usize].name.as_str().to_string(),
                            s.code(),
                            s.message(),
                        )
                    })
                    .collect();
                (ok, bad)
            };
            (eval.map(|(_, e)| names(&e)), unknown.to_vec())
        });
        let (eval, unknown) = match evaluated {
            Ok(r) => r,
            Err(e) => {
                result.error = e;
                return result;
            }
        };
        for name in unknown {
            result
                .failed_and_unresolvable_nodes
                .insert(name, "node is unknown to the extender".into());
        }
        match eval {
            Err(status) => result.error = status.to_string(),
            Ok((ok, bad)) => {
                for (name, code, reason) in bad {
                    if code == Code::Unschedulable {
                        result.failed_nodes.insert(name, reason);
                    } else {
                        result.failed_and_unresolvable_nodes.insert(name, reason);
                    }
                }
                if let Some(list) = &args.nodes {
                    let keep: std::collections::HashSet<&str> =
                        ok.iter().map(String::as_str).collect();
                    let mut list = list.clone();
                    if let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) {
                        items.retain(|n| node_name(n).is_some_and(|name| keep.contains(name)));
                    }
                    result.nodes = Some(list);
                } else {
                    result.node_names = Some(ok);
                }
            }
        }
        result
    }

    /// The prioritize verb: 0..=10 per node, in input order (the weighted total over the
    /// Score plugins that ran, scaled so their maximum is 10; infeasible nodes get 0).
    pub fn prioritize(&self, args: &ExtenderArgs) -> Result<Vec<HostPriority>, String> {
        let pod = pod_from_json(&args.pod).map_err(|e| e.to_string())?;
        let all_names: Vec<String> = match &args.nodes {
            Some(list) => list
                .get("items")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(node_name)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            None => args.node_names.clone().unwrap_or_default(),
        };
        let scores = self.with_candidates(args, |snapshot, idx, _unknown| {
            self.scheduler
                .evaluate(&pod, snapshot, Some(idx), true)
                .map(|(_, e)| {
                    let scores = e
                        .feasible
                        .iter()
                        .zip(e.scores.iter())
                        .map(|(&i, &s)| (snapshot.nodes()[i as usize].name.as_str().to_string(), s))
                        .collect::<HashMap<String, i64>>();
                    (scores, e.max_score)
                })
        })?;
        let (scores, max_total) = scores.map_err(|s| s.to_string())?;
        Ok(all_names
            .into_iter()
            .map(|host| {
                let total = scores.get(&host).copied().unwrap_or(0);
                HostPriority {
                    score: to_extender_priority(total, max_total),
                    host,
                }
            })
            .collect())
    }

    /// The bind verb: re-checks, reserves (an underlay address, for example) and binds. The
    /// request names the pod only, so the pod must have been seen in a filter call; otherwise
    /// the bind fails (kube-scheduler then retries the pod, filter first).
    pub async fn bind(&self, args: &ExtenderBindingArgs) -> ExtenderBindingResult {
        let seen = self.seen.lock().take(&args.pod_uid);
        let Some(pod) = seen else {
            return ExtenderBindingResult {
                error: format!(
                    "cannot bind {}/{} (uid {}) to {}: the pod was not seen in a filter call \
                     (or was forgotten since); retry it",
                    args.pod_namespace, args.pod_name, args.pod_uid, args.node
                ),
            };
        };
        match self.scheduler.bind_to_node(pod, &args.node).await {
            Ok(_) => ExtenderBindingResult::default(),
            Err(status) => ExtenderBindingResult {
                error: format!(
                    "cannot bind {}/{} to {}: {status}",
                    args.pod_namespace, args.pod_name, args.node
                ),
            },
        }
    }

    /// The preempt verb: keeps the candidate nodes where the pod fits once the victims are
    /// gone.
    pub fn preempt(
        &self,
        args: &ExtenderPreemptionArgs,
    ) -> Result<ExtenderPreemptionResult, String> {
        let pod = pod_from_json(&args.pod).map_err(|e| e.to_string())?;
        let base = self.scheduler.with_snapshot(Snapshot::clone);
        let mut out = BTreeMap::new();
        for (node, victims) in &args.victims {
            let Some(index) = Sym::lookup(node).and_then(|s| base.index_of(s)) else {
                continue;
            };
            let mut what_if = base.clone();
            for v in &victims.pods {
                what_if.remove_pod(&v.uid);
            }
            let fits = self
                .scheduler
                .evaluate(&pod, &what_if, Some(&[index as u32]), false)
                .is_ok_and(|(_, e)| !e.feasible.is_empty());
            if fits {
                out.insert(
                    node.clone(),
                    MetaVictims {
                        pods: victims.pods.clone(),
                        num_pdb_violations: victims.num_pdb_violations,
                    },
                );
            }
        }
        Ok(ExtenderPreemptionResult {
            node_name_to_meta_victims: out,
        })
    }
}

async fn filter_handler(
    State(s): State<ExtenderServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match s.args(&headers, &body) {
        Ok(args) => json_response(&s.filter(&args)),
        Err(e) => e.into_response(),
    }
}

async fn prioritize_handler(
    State(s): State<ExtenderServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args = match s.args(&headers, &body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    match s.prioritize(&args) {
        Ok(list) => json_response(&list),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

async fn bind_handler(
    State(s): State<ExtenderServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match s.check(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match ExtenderBindingArgs::from_value(&value) {
        Ok(args) => json_response(&s.bind(&args).await),
        Err(e) => BadRequest(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn preempt_handler(
    State(s): State<ExtenderServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match s.check(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let args = match ExtenderPreemptionArgs::from_value(&value) {
        Ok(a) => a,
        Err(e) => return BadRequest(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match s.preempt(&args) {
        Ok(r) => json_response(&r),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
