//! The route table — which application nginx serves on which address, with which split and
//! preview, each revision resolved to its endpoints — and the history of applied config
//! versions. No I/O.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::traffic::{Backend, TrafficError, TrafficSplit};
use rorqual_core::model::{AppKey, Revision};

/// A revision as nginx routes it: its weight and the endpoints its upstream lists (the
/// revision's ready endpoints when the split or preview was applied, sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutedBackend {
    /// The revision.
    pub revision: Revision,
    /// Its weight in percent (100 for a preview).
    pub weight: u32,
    /// The `server` addresses of its share of the upstream; empty for a weight-0 revision,
    /// which nginx leaves out.
    pub endpoints: Vec<SocketAddr>,
}

impl RoutedBackend {
    /// `backend` over `endpoints` (sorted and deduplicated here, so that the same set always
    /// renders the same config).
    pub(super) fn new(backend: &Backend, mut endpoints: Vec<SocketAddr>) -> Self {
        endpoints.sort_unstable();
        endpoints.dedup();
        RoutedBackend {
            revision: backend.revision.clone(),
            weight: backend.weight,
            endpoints,
        }
    }

    /// The split's entry for this revision (weight only).
    pub(super) fn to_backend(&self) -> Backend {
        Backend::new(self.revision.clone(), self.weight)
    }

    /// Whether the upstream lists it: a positive weight over at least one endpoint.
    pub(super) fn is_live(&self) -> bool {
        self.weight > 0 && !self.endpoints.is_empty()
    }
}

/// The split nginx routes, weights only.
pub(super) fn to_split(routed: &[RoutedBackend]) -> TrafficSplit {
    TrafficSplit::new(routed.iter().map(RoutedBackend::to_backend).collect())
}

/// One applied config, with the unified diff from the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigVersion {
    /// Increases by one per applied config, from 1.
    pub version: u64,
    /// When it was applied.
    pub at: SystemTime,
    /// The whole config.
    pub config: String,
    /// Unified diff from the previous version (empty for the first).
    pub diff: String,
}

/// Every routed application, in the order nginx's config lists them.
pub(super) type RouteTable = BTreeMap<AppKey, AppRoute>;

/// One application's active server and, optionally, its preview server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AppRoute {
    pub(super) listen: SocketAddr,
    /// `None` until the first split: the server answers 503. One entry per revision of the
    /// split, in its order.
    pub(super) split: Option<Vec<RoutedBackend>>,
    pub(super) preview: Option<PreviewRoute>,
}

/// An application's preview server: its address and the revision it serves, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PreviewRoute {
    pub(super) listen: SocketAddr,
    pub(super) backend: Option<RoutedBackend>,
}

impl AppRoute {
    /// A route on `listen` without a split (503) or preview.
    pub(super) fn new(listen: SocketAddr) -> Self {
        AppRoute {
            listen,
            split: None,
            preview: None,
        }
    }

    /// Every address this route listens on.
    pub(super) fn listens(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.listen).chain(self.preview.as_ref().map(|p| p.listen))
    }
}

/// The table a builder's routes and preview routes make: every address used once, and a
/// preview only for an application that has an active route.
pub(super) fn route_table(
    routes: BTreeMap<AppKey, SocketAddr>,
    previews: &BTreeMap<AppKey, SocketAddr>,
) -> Result<RouteTable, TrafficError> {
    let mut seen = BTreeMap::new();
    let listens = routes
        .iter()
        .map(|(app, addr)| (app.to_string(), addr))
        .chain(
            previews
                .iter()
                .map(|(app, addr)| (format!("{app} (preview)"), addr)),
        );
    for (name, addr) in listens {
        if let Some(other) = seen.insert(*addr, name.clone()) {
            return Err(config_error(format!(
                "{name} and {other} both listen on {addr}"
            )));
        }
    }
    if let Some(app) = previews.keys().find(|a| !routes.contains_key(*a)) {
        return Err(config_error(format!(
            "preview route for {app} needs an active route for it too"
        )));
    }
    Ok(routes
        .into_iter()
        .map(|(app, listen)| {
            let preview = previews.get(&app).map(|&listen| PreviewRoute {
                listen,
                backend: None,
            });
            (
                app,
                AppRoute {
                    listen,
                    split: None,
                    preview,
                },
            )
        })
        .collect())
}

/// Fails when another application's route (or, for `preview`, `app`'s own active route)
/// already listens on `listen`.
pub(super) fn check_free(
    routes: &RouteTable,
    app: &AppKey,
    listen: SocketAddr,
    preview: bool,
) -> Result<(), TrafficError> {
    for (a, r) in routes {
        let taken = if a == app {
            // Re-adding a route may keep its own address; the other kind of route may not.
            if preview {
                r.listen == listen
            } else {
                r.preview.as_ref().is_some_and(|p| p.listen == listen)
            }
        } else {
            r.listens().any(|l| l == listen)
        };
        if taken {
            return Err(config_error(format!("{a} already listens on {listen}")));
        }
    }
    Ok(())
}

/// A [`TrafficError::Config`] of the nginx router.
pub(super) fn config_error(reason: String) -> TrafficError {
    TrafficError::Config {
        router: "nginx".into(),
        reason,
    }
}

/// The error for an application this router does not serve.
pub(super) fn not_routed(app: &AppKey) -> TrafficError {
    TrafficError::InvalidSplit {
        reason: format!("{app} is not routed by this nginx router; add a route first"),
    }
}

/// The applied config versions (the last `keep`) and the number the next one gets.
#[derive(Debug)]
pub(super) struct ConfigHistory {
    versions: VecDeque<ConfigVersion>,
    next: u64,
    keep: usize,
}

impl ConfigHistory {
    /// An empty history keeping the last `keep` versions (at least 1).
    pub(super) fn new(keep: usize) -> Self {
        ConfigHistory {
            versions: VecDeque::new(),
            next: 1,
            keep: keep.max(1),
        }
    }

    /// The number the next config gets.
    pub(super) fn next_version(&self) -> u64 {
        self.next
    }

    /// A config that was rendered but not applied still uses up its number, so a version
    /// nginx may have seen is never reused.
    pub(super) fn skip(&mut self) {
        self.next += 1;
    }

    /// Records `config` as applied `version`, with its diff from the previous version.
    pub(super) fn record(&mut self, version: u64, config: String) {
        let diff = match self.versions.back() {
            Some(prev) => similar::TextDiff::from_lines(&prev.config, &config)
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("nginx.conf (version {})", prev.version),
                    &format!("nginx.conf (version {version})"),
                )
                .to_string(),
            None => String::new(),
        };
        self.versions.push_back(ConfigVersion {
            version,
            at: SystemTime::now(),
            config,
            diff,
        });
        while self.versions.len() > self.keep {
            self.versions.pop_front();
        }
        self.next = version + 1;
    }

    /// The kept versions, oldest first.
    pub(super) fn versions(&self) -> impl Iterator<Item = &ConfigVersion> {
        self.versions.iter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn history_keeps_the_last_versions_with_diffs_and_never_reuses_a_number() {
        let mut h = ConfigHistory::new(2);
        h.record(h.next_version(), "a\nb\n".into());
        h.skip(); // version 2 was rejected
        h.record(h.next_version(), "a\nc\n".into());
        h.record(h.next_version(), "a\nd\n".into());
        let kept: Vec<_> = h.versions().map(|v| v.version).collect();
        assert_eq!(kept, [3, 4]);
        let last = h.versions().last().unwrap();
        assert!(
            last.diff.contains("-c\n+d\n") && last.diff.contains("(version 3)"),
            "{}",
            last.diff
        );
        assert_eq!(h.next_version(), 5);
    }

    #[test]
    fn an_address_is_taken_by_another_app_or_by_the_other_kind_of_route() {
        let (a, b) = (AppKey::new("x", "a"), AppKey::new("x", "b"));
        let mut routes = RouteTable::new();
        routes.insert(a.clone(), AppRoute::new(addr(8080)));
        let mut with_preview = AppRoute::new(addr(8081));
        with_preview.preview = Some(PreviewRoute {
            listen: addr(8082),
            backend: None,
        });
        routes.insert(b.clone(), with_preview);
        assert!(check_free(&routes, &b, addr(8080), false).is_err());
        assert!(check_free(&routes, &a, addr(8082), false).is_err());
        assert!(check_free(&routes, &b, addr(8082), false).is_err());
        assert!(check_free(&routes, &b, addr(8081), true).is_err());
        check_free(&routes, &b, addr(8081), false).unwrap();
        check_free(&routes, &b, addr(8082), true).unwrap();
        check_free(&routes, &a, addr(9000), false).unwrap();
    }
}
