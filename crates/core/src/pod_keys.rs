//! The annotation and label keys by which a Kubernetes pod carries what rorqual's placement
//! needs: engines write them on the pods they create (rorqual-kube's `KubeEngine`), the
//! scheduler reads them (rorqual-scheduler's pod decoder, the extender, `KubeScheduler`). One
//! list, so both sides agree.

/// Stable identity of a stateful pod (`namespace/name`).
pub const ANNOTATION_IDENTITY: &str = "rorqual.io/identity";
/// The label a StatefulSet's controller puts on each of its pods, with the pod's stable name
/// (`<set>-<ordinal>`): the identity (`namespace/name`) of a pod without
/// [`ANNOTATION_IDENTITY`].
pub const LABEL_STATEFULSET_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// The node the identity ran on last.
pub const ANNOTATION_PREVIOUS_NODE: &str = "rorqual.io/previous-node";
/// The zone the identity ran in last.
pub const ANNOTATION_PREVIOUS_ZONE: &str = "rorqual.io/previous-zone";
/// The pod needs an underlay address from this pool (`*`: any pool).
pub const ANNOTATION_UNDERLAY_POOL: &str = "rorqual.io/underlay-pool";
/// The pod's fixed-IP claim is bound to `pool/address`.
pub const ANNOTATION_UNDERLAY_CLAIM: &str = "rorqual.io/underlay-claim";
/// The pod's gang (pod group) name.
pub const ANNOTATION_GANG: &str = "rorqual.io/gang";
/// The gang's minMember.
pub const ANNOTATION_GANG_MIN_MEMBER: &str = "rorqual.io/gang-min-member";
/// How long gang members wait at Permit, in seconds.
pub const ANNOTATION_GANG_TIMEOUT: &str = "rorqual.io/gang-timeout-seconds";
