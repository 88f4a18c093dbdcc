//! The extender HTTP server: `/filter`, `/prioritize`, `/bind`, `/preempt` over a
//! [`Scheduler`]'s plugins and cache.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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

use axum::serve::ListenerExt;
use serde_json::value::RawValue;

use crate::extender::binder::{Binder, PodBinding};
use crate::extender::node_feed::{FedNode, NodeFeed};
use crate::extender::wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, HostPriority, MetaVictims,
    to_extender_priority,
};
use crate::extender::{ExtenderStanza, KubeVersion};
use crate::framework::Code;
use crate::framework::{BindPlugin, CycleState, Plugin, Status};
use crate::interner::Sym;
use crate::kube::pod_from_json;
use crate::scheduler::Scheduler;
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
/// ([`ExtenderServer::node_cache_capable`] false) it sends full `Nodes`, and the server
/// upserts into the cache each node whose JSON differs from the last request's (an unchanged
/// node is not decoded again; nodes that stop appearing stay cached until
/// [`Scheduler::remove_node`]).
///
/// With `bindVerb` kube-scheduler delegates binding: give the server a [`Binder`]
/// ([`ExtenderServer::binder`]) and tell it the caller's release
/// ([`ExtenderServer::kube_scheduler_version`]).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use rorqual_scheduler::extender::{ApiserverConfig, ExtenderServer};
///
/// let binder = ApiserverConfig::new("https://127.0.0.1:6443")
///     .bearer_token(std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/token")?)
///     .ca_pem(std::fs::read("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")?)
///     .build()?;
/// let server = ExtenderServer::with_default_plugins()
///     .node_cache_capable(false)
///     .kube_scheduler_version("v1.20.2".parse()?)
///     .binder(Arc::new(binder));
/// let version = "1.20".parse()?;
/// println!("{}", server.stanza("http://127.0.0.1:8888").to_yaml(version)?);
/// server.serve(tokio::net::TcpListener::bind("127.0.0.1:8888").await?).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ExtenderServer {
    scheduler: Scheduler,
    token: Option<Arc<str>>,
    seen: Arc<Mutex<SeenPods>>,
    node_cache_capable: bool,
    body_limit: usize,
    target: Option<KubeVersion>,
    binder: Option<Arc<dyn Binder>>,
    feed: Arc<Mutex<NodeFeed>>,
}

/// The extender's Binder as the Bind step of the scheduler's binding cycle.
#[derive(Debug)]
struct BindThrough {
    binder: Arc<dyn Binder>,
    binding: PodBinding,
}

impl Plugin for BindThrough {
    fn name(&self) -> &str {
        "ExtenderBinder"
    }
}

#[async_trait::async_trait]
impl BindPlugin for BindThrough {
    async fn bind(&self, _state: &CycleState, _pod: &PodInfo, _node: Sym) -> Status {
        match self.binder.bind(&self.binding).await {
            Ok(()) => Status::success(),
            Err(e) => Status::error(error_chain(&e)),
        }
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One node of a filter or prioritize request, in request order.
#[derive(Debug)]
enum InputNode {
    /// In the cache: its name and snapshot index.
    Candidate(Sym, u32),
    /// Not a candidate: unreadable or unknown, with why.
    Left { name: String, reason: String },
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
            target: None,
            binder: None,
            feed: Arc::new(Mutex::new(NodeFeed::default())),
        }
    }

    /// The kube-scheduler version that calls this extender. It decides where a filter result
    /// puts the reasons of nodes preemption cannot help: `FailedAndUnresolvableNodes` from
    /// 1.21, `FailedNodes` before (1.20 does not know the other field and would drop them).
    /// Unset, they go to both fields, which every version reads correctly (see
    /// [`ExtenderFilterResult::record_failure`]).
    #[must_use]
    pub fn kube_scheduler_version(mut self, version: KubeVersion) -> ExtenderServer {
        self.target = Some(version);
        self
    }

    /// Creates Bindings through `binder` in the bind verb. kube-scheduler delegates binding
    /// to an extender whose stanza has `bindVerb`, so without a binder nothing would bind the
    /// pod: [`ExtenderServer::stanza`] sets `bindVerb` only when a binder is configured, and
    /// a bind call without one is answered with an error.
    #[must_use]
    pub fn binder(mut self, binder: Arc<dyn Binder>) -> ExtenderServer {
        self.binder = Some(binder);
        self
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
    /// `nodeCacheCapable` matching [`ExtenderServer::node_cache_capable`] and `bindVerb`
    /// set only when the server has a [`Binder`] ([`ExtenderServer::binder`]).
    pub fn stanza(&self, url_prefix: impl Into<String>) -> ExtenderStanza {
        ExtenderStanza::new(url_prefix)
            .node_cache_capable(self.node_cache_capable)
            .bind(self.binder.is_some())
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

    /// Serves on `listener` until the task is dropped. Connections are kept alive and use
    /// `TCP_NODELAY`, so a response is not held back waiting for the client's ACK.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY on an extender connection: {e}");
            }
        });
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

    /// Nodes mode: reads the request's nodes through the feed (decoding only changed ones)
    /// and upserts the changed ones into the cache.
    fn feed_nodes(&self, items: &[Box<RawValue>]) -> Vec<FedNode> {
        // The feed's lock is taken before the cache's, never the other way round.
        let fed = self.feed.lock().read(items, |name| {
            self.scheduler.with_snapshot(|s| s.index_of(name).is_some())
        });
        if !fed.changed.is_empty() {
            // Nodes mode feeds the cache (keeping the pods it has on those nodes), so a
            // later bind finds the node it is asked about.
            self.scheduler.add_nodes(fed.changed);
        }
        fed.nodes
    }

    /// Runs `f` over the candidate nodes of `args` in the cache (their snapshot indices),
    /// and gives every node of the request in order: a candidate, or left out with why (in
    /// Nodes mode a node that cannot be read, in NodeNames mode a name the cache lacks).
    fn with_candidates<R>(
        &self,
        args: &ExtenderArgs,
        f: impl FnOnce(&Snapshot, &[u32]) -> R,
    ) -> (R, Vec<InputNode>) {
        let fed = args.nodes.as_deref().map(|items| self.feed_nodes(items));
        self.scheduler.with_snapshot(|snapshot| {
            let unknown = |name: String| InputNode::Left {
                name,
                reason: "node is unknown to the extender".to_owned(),
            };
            let inputs: Vec<InputNode> = match fed {
                Some(fed) => fed
                    .into_iter()
                    .map(|node| match node {
                        FedNode::Node(name) => match snapshot.index_of(name) {
                            Some(i) => InputNode::Candidate(name, i as u32),
                            None => unknown(name.as_str().to_string()),
                        },
                        FedNode::Unreadable { name, reason } => InputNode::Left { name, reason },
                    })
                    .collect(),
                None => {
                    let names = args.node_names.as_deref().unwrap_or_default();
                    let syms = Sym::lookup_many(names.iter().map(String::as_str));
                    names
                        .iter()
                        .zip(syms)
                        .map(|(name, sym)| {
                            match sym.and_then(|s| snapshot.index_of(s).map(|i| (s, i))) {
                                Some((s, i)) => InputNode::Candidate(s, i as u32),
                                None => unknown(name.clone()),
                            }
                        })
                        .collect()
                }
            };
            let idx: Vec<u32> = inputs
                .iter()
                .filter_map(|n| match n {
                    InputNode::Candidate(_, i) => Some(*i),
                    InputNode::Left { .. } => None,
                })
                .collect();
            (f(snapshot, &idx), inputs)
        })
    }

    /// The filter verb. A node that cannot be read (an invalid quantity, say) fails alone,
    /// with a reason naming the node, the field and the value; the other nodes are filtered
    /// as usual. Reasons go in the fields the caller's version reads
    /// ([`ExtenderServer::kube_scheduler_version`]). In Nodes mode the feasible nodes go
    /// back exactly as they came, in request order.
    pub fn filter(&self, args: &ExtenderArgs) -> ExtenderFilterResult {
        let mut result = ExtenderFilterResult::default();
        if args.nodes.is_none() {
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
        let (eval, inputs) = self.with_candidates(args, |snapshot, idx| {
            self.scheduler
                .evaluate(&pod, snapshot, Some(idx), false)
                .map(|(_, e)| {
                    let nodes = snapshot.nodes();
                    let ok: HashSet<Sym> =
                        e.feasible.iter().map(|&i| nodes[i as usize].name).collect();
                    let bad: Vec<(String, Code, String)> = e
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
                })
        });
        let (ok, bad) = match eval {
            Ok(r) => r,
            Err(status) => {
                result.error = status.to_string();
                return result;
            }
        };
        for (name, code, reason) in bad {
            result.record_failure(name, reason, code != Code::Unschedulable, self.target);
        }
        let mut feasible = Vec::with_capacity(ok.len());
        for (i, input) in inputs.into_iter().enumerate() {
            match input {
                InputNode::Candidate(name, _) if ok.contains(&name) => feasible.push((i, name)),
                InputNode::Candidate(..) => {}
                InputNode::Left { name, reason } => {
                    result.record_failure(name, reason, true, self.target);
                }
            }
        }
        match &args.nodes {
            Some(items) => {
                result.nodes = Some(feasible.iter().map(|&(i, _)| items[i].clone()).collect());
            }
            None => {
                result.node_names = Some(Sym::resolve_many(feasible.iter().map(|&(_, name)| name)));
            }
        }
        result
    }

    /// The prioritize verb: 0..=10 per node, in input order (the weighted total over the
    /// Score plugins that ran, scaled so their maximum is 10; infeasible and unreadable nodes
    /// get 0).
    pub fn prioritize(&self, args: &ExtenderArgs) -> Result<Vec<HostPriority>, String> {
        let pod = pod_from_json(&args.pod).map_err(|e| e.to_string())?;
        let (scores, inputs) = self.with_candidates(args, |snapshot, idx| {
            self.scheduler
                .evaluate(&pod, snapshot, Some(idx), true)
                .map(|(_, e)| {
                    let scores = e
                        .feasible
                        .iter()
                        .zip(e.scores.iter())
                        .map(|(&i, &s)| (snapshot.nodes()[i as usize].name, s))
                        .collect::<HashMap<Sym, i64>>();
                    (scores, e.max_score)
                })
        });
        let (scores, max_total) = scores.map_err(|s| s.to_string())?;
        Ok(inputs
            .into_iter()
            .map(|input| match input {
                InputNode::Candidate(name, _) => HostPriority {
                    score: to_extender_priority(scores.get(&name).copied().unwrap_or(0), max_total),
                    host: name.as_str().to_string(),
                },
                InputNode::Left { name, .. } => HostPriority {
                    host: name,
                    score: 0,
                },
            })
            .collect())
    }

    /// The bind verb: re-checks, reserves (an underlay address, for example), then creates
    /// the Binding through the server's [`Binder`] in place of the profile's Bind plugins,
    /// unreserving when that fails. The request names the pod only, so the pod must have been
    /// seen in a filter call; otherwise the bind fails (kube-scheduler then retries the pod,
    /// filter first). Errors name the pod, the node and, from the API server, its status.
    pub async fn bind(&self, args: &ExtenderBindingArgs) -> ExtenderBindingResult {
        let key = format!("{}/{}", args.pod_namespace, args.pod_name);
        let Some(binder) = &self.binder else {
            return ExtenderBindingResult {
                error: format!(
                    "cannot bind pod {key} to node {}: this extender has no binder to create \
                     the Binding with (configure one, or remove bindVerb from the scheduler \
                     configuration so that kube-scheduler binds)",
                    args.node
                ),
            };
        };
        let seen = self.seen.lock().take(&args.pod_uid);
        let Some(pod) = seen else {
            return ExtenderBindingResult {
                error: format!(
                    "cannot bind pod {key} (uid {}) to node {}: the pod was not seen in a filter \
                     call (or was forgotten since); retry it",
                    args.pod_uid, args.node
                ),
            };
        };
        let through = BindThrough {
            binder: binder.clone(),
            binding: PodBinding::new(
                &args.pod_namespace,
                &args.pod_name,
                &args.pod_uid,
                &args.node,
            ),
        };
        match self
            .scheduler
            .bind_to_node_via(pod, &args.node, Some(&through))
            .await
        {
            Ok(_) => ExtenderBindingResult::default(),
            Err(status) => ExtenderBindingResult {
                error: format!("cannot bind pod {key} to node {}: {status}", args.node),
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
