//! rorqual-providers: the cloud resource `Provider` seam, the managed-resource reconciler and
//! reference providers (PostgreSQL, RabbitMQ).
//!
//! Not yet implemented: this crate holds only its documentation until its issue is taken.
