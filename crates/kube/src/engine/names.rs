//! Names, labels and field managers: how rorqual's applications and revisions appear in a
//! cluster (pure).

use std::collections::BTreeMap;

use rorqual_core::model::{AppKey, Revision};

/// The label naming an object's application.
pub const LABEL_APP: &str = "rorqual.io/app";
/// The label naming an object's (or a pod's) revision.
pub const LABEL_REVISION: &str = "rorqual.io/revision";
/// Kubernetes' recommended label for the tool that manages an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`] on everything rorqual writes.
pub const MANAGED_BY: &str = "rorqual";

/// The field manager of rorqual's server-side applies.
pub const FIELD_MANAGER: &str = "rorqual";
/// The field manager of `scale_group`'s applies, which write the replica count alone (a scale
/// is then told apart from a template change in `managedFields`).
pub const SCALE_MANAGER: &str = "rorqual-scale";

/// The ReplicaSet of `app` at `revision`: `<app>-<revision>`.
pub fn replica_set_name(app: &AppKey, revision: &Revision) -> String {
    format!("{}-{}", app.name, revision)
}

/// The Service of `app`'s stateless `revision` (its pods' EndpointSlices are where routers
/// find the revision's ready addresses): `<app>-<revision>` when that is a DNS-1035 label (a
/// Service name: at most 63 characters, starting with a letter), else `r<revision>-` followed
/// by as much of the app's name as fits. Routers find the slices by label, not by this name.
pub fn revision_service_name(app: &AppKey, revision: &Revision) -> String {
    let plain = format!("{}-{}", app.name, revision);
    if plain.len() <= 63 && plain.starts_with(|c: char| c.is_ascii_lowercase()) {
        return plain;
    }
    let mut name = format!("r{revision}-{}", app.name);
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// The labels of everything rorqual writes for `app`.
pub fn app_labels(app: &AppKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP.to_owned(), app.name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ])
}

/// [`app_labels`] plus the revision.
pub fn revision_labels(app: &AppKey, revision: &Revision) -> BTreeMap<String, String> {
    let mut labels = app_labels(app);
    labels.insert(LABEL_REVISION.to_owned(), revision.to_string());
    labels
}

/// The label selector (query form) of every object rorqual manages.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// Whether labels say rorqual manages the object (an object without them is someone else's
/// and is never adopted).
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY))
}

/// The ordinal of stateful pod `pod` of set `set` (`<set>-<k>`).
pub fn ordinal_of(set: &str, pod: &str) -> Option<u32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_are_read_only_from_the_sets_own_pods() {
        assert_eq!(ordinal_of("game", "game-0"), Some(0));
        assert_eq!(ordinal_of("game", "game-12"), Some(12));
        assert_eq!(ordinal_of("game", "game-x"), None);
        assert_eq!(ordinal_of("game", "game-01"), None);
        assert_eq!(ordinal_of("game", "games-1"), None);
        assert_eq!(ordinal_of("game", "game-"), None);
    }

    #[test]
    fn revision_service_names_are_dns_1035_labels() {
        let rev = Revision::from("0a1b2c3d4e");
        let short = AppKey::new("ns", "web");
        assert_eq!(revision_service_name(&short, &rev), "web-0a1b2c3d4e");
        let digit = AppKey::new("ns", "7seas");
        assert_eq!(revision_service_name(&digit, &rev), "r0a1b2c3d4e-7seas");
        let long = AppKey::new("ns", "a-".repeat(30).trim_end_matches('-'));
        let name = revision_service_name(&long, &rev);
        assert!(
            name.len() <= 63 && name.starts_with('r') && !name.ends_with('-'),
            "{name}"
        );
        assert!(rorqual_core::model::is_dns_label(&name), "{name}");
    }

    #[test]
    fn managed_means_the_label_says_rorqual() {
        let app = AppKey::new("games", "web");
        assert!(is_managed(Some(&app_labels(&app))));
        assert!(!is_managed(None));
        let theirs = BTreeMap::from([(LABEL_MANAGED_BY.to_owned(), "helm".to_owned())]);
        assert!(!is_managed(Some(&theirs)));
    }
}
