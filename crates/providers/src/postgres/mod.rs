//! The PostgreSQL provider (feature `postgres`): databases, roles, grants and declarative
//! table schemas, each a [`Provider`] of one kind over one server.
//!
//! | kind | external name | `forProvider` |
//! | --- | --- | --- |
//! | `Database` | the database | `owner`, `connectionLimit` |
//! | `Role` | the role | `passwordSecretRef {name, key}`, `login`, `createDb`, `connectionLimit` |
//! | `Grant` | (a label) | `role`, `database`, `privileges` (`CONNECT`, `CREATE`, `TEMPORARY`, `ALL`) on the database |
//! | `TableSchema` | the PostgreSQL schema (namespace) it owns | `database`, `tables`, `allowDataLoss` (see [`schema`]) |
//!
//! Every call is idempotent: a create of something that exists succeeds, a delete of
//! something missing succeeds. A role's password comes from a [`SecretResolver`] and is sent
//! to the server as a SCRAM-SHA-256 verifier, so it never appears in SQL text, logs, errors or
//! diffs; a role's connection details (host, port, user, password) are [`Secret`]s.
//!
//! System objects are never adopted: a `Role` named as the endpoint's administrative user,
//! an existing superuser or `pg_*`, a `Database` named as the administrative database,
//! `postgres`, `template0` or `template1`, and a `TableSchema` named `public`,
//! `information_schema` or `pg_*` are refused (a permanent error saying why), so a delete
//! can never drop them.
//!
//! Resources may be applied in any order: an error that ends once another resource exists
//! (a `TableSchema` before its `Database`, a `Grant` before its `Role`, a `Database` before
//! its owner, a role's password secret not there yet) is retryable.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rorqual_providers::postgres::{Endpoint, PostgresProvider, StaticSecrets};
//! use rorqual_providers::Secret;
//!
//! let server = Endpoint::new("127.0.0.1", 5432, "postgres", Secret::new("admin-password"));
//! let secrets = Arc::new(StaticSecrets::new().with("orders-db", "password", "app-password"));
//! let databases = PostgresProvider::database(server.clone());
//! let roles = PostgresProvider::role(server.clone(), secrets);
//! let schemas = PostgresProvider::table_schema(server);
//! # let _ = (databases, roles, schemas);
//! ```

mod database;
mod grant;
mod role;
pub mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use rorqual_core::model::FieldError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::provider::{
    Creation, ExternalClient, ExternalRef, Observation, Provider, ProviderError, Result, Update,
};
use crate::secret::Secret;

pub use grant::Privilege;

/// The server the provider manages, and the administrative login it uses (a superuser, or a
/// role with `CREATEDB` and `CREATEROLE`). `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Host name or address (`127.0.0.1`).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The administrative user.
    pub user: String,
    /// Its password.
    pub password: Secret,
    /// The database to connect to for server-wide work (`postgres`).
    pub admin_database: String,
}

impl Endpoint {
    /// A server at `host:port`, administered as `user` with `password` through the
    /// `postgres` database.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Endpoint {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            admin_database: "postgres".to_owned(),
        }
    }

    /// Connects through the administrative database instead of `postgres`.
    #[must_use]
    pub fn with_admin_database(mut self, database: impl Into<String>) -> Self {
        self.admin_database = database.into();
        self
    }

    fn config(&self, user: &str, password: &Secret, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(user)
            .password(password.expose())
            .dbname(database)
            .application_name("rorqual-providers")
            // A reconcile never hangs on a lock or a long statement: both end in a
            // retryable error (55P03, 57014). Strings are read the standard way whatever the
            // server, database or role sets (a client setting wins over those).
            .options(
                "-c lock_timeout=10s -c statement_timeout=5min -c standard_conforming_strings=on",
            )
            .connect_timeout(std::time::Duration::from_secs(10));
        config
    }
}

/// Where a secret value is found: the key `key` of the secret `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// The key inside it.
    pub key: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret `{}` key `{}`", self.name, self.key)
    }
}

/// Resolves secret references (a role's password) to values: the seam to a secret store (on
/// Kubernetes, `Secret`s). Errors name the reference, never a value.
pub trait SecretResolver: Send + Sync + fmt::Debug + 'static {
    /// The value `reference` points to.
    ///
    /// # Errors
    ///
    /// [`ProviderError::Unavailable`] when the store cannot be read now or the secret or key
    /// does not exist (yet: it is often created after the resource that names it, so the
    /// reconcile is retried).
    fn resolve(&self, reference: &SecretRef) -> Result<Secret>;
}

/// Secrets held in memory, for tests and embedding. `Debug` shows the references only.
#[derive(Clone, Default)]
pub struct StaticSecrets(BTreeMap<SecretRef, Secret>);

impl StaticSecrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key `key` of secret `name`.
    #[must_use]
    pub fn with(
        mut self,
        name: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Secret>,
    ) -> Self {
        self.insert(name, key, value);
        self
    }

    /// Adds (or replaces) the key `key` of secret `name`.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Secret>,
    ) {
        let reference = SecretRef {
            name: name.into(),
            key: key.into(),
        };
        self.0.insert(reference, value.into());
    }
}

impl fmt::Debug for StaticSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretResolver for StaticSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret> {
        self.0
            .get(reference)
            .cloned()
            .ok_or_else(|| ProviderError::unavailable(format!("{reference} does not exist (yet)")))
    }
}

/// A resolver that shares its secrets: changes through [`SharedSecrets::insert`] are seen by
/// every provider holding a clone (a rotated password, in tests).
#[derive(Debug, Clone, Default)]
pub struct SharedSecrets(Arc<parking_lot::RwLock<StaticSecrets>>);

impl SharedSecrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key `key` of secret `name`.
    pub fn insert(
        &self,
        name: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Secret>,
    ) {
        self.0.write().insert(name, key, value);
    }
}

impl SecretResolver for SharedSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret> {
        self.0.read().resolve(reference)
    }
}

/// The kinds of PostgreSQL resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A database.
    Database,
    /// A role (a user when it may log in).
    Role,
    /// Privileges of a role on a database.
    Grant,
    /// A schema of declared tables.
    TableSchema,
}

impl Kind {
    /// The kind's name (`TableSchema`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Database => "Database",
            Kind::Role => "Role",
            Kind::Grant => "Grant",
            Kind::TableSchema => "TableSchema",
        }
    }
}

/// A [`Provider`] of one [`Kind`] of PostgreSQL resource on one server.
#[derive(Debug, Clone)]
pub struct PostgresProvider {
    kind: Kind,
    endpoint: Endpoint,
    secrets: Arc<dyn SecretResolver>,
}

impl PostgresProvider {
    /// Databases on `endpoint`.
    pub fn database(endpoint: Endpoint) -> Self {
        Self::of(Kind::Database, endpoint, Arc::new(StaticSecrets::new()))
    }

    /// Roles on `endpoint`, their passwords resolved through `secrets`.
    pub fn role(endpoint: Endpoint, secrets: Arc<dyn SecretResolver>) -> Self {
        Self::of(Kind::Role, endpoint, secrets)
    }

    /// Database privileges on `endpoint`.
    pub fn grant(endpoint: Endpoint) -> Self {
        Self::of(Kind::Grant, endpoint, Arc::new(StaticSecrets::new()))
    }

    /// Declarative table schemas on `endpoint` (see [`schema`]).
    pub fn table_schema(endpoint: Endpoint) -> Self {
        Self::of(Kind::TableSchema, endpoint, Arc::new(StaticSecrets::new()))
    }

    fn of(kind: Kind, endpoint: Endpoint, secrets: Arc<dyn SecretResolver>) -> Self {
        PostgresProvider {
            kind,
            endpoint,
            secrets,
        }
    }

    /// The kind it provides.
    pub fn resource_kind(&self) -> Kind {
        self.kind
    }
}

/// Reads `parameters` as `T`, with the field path of a shape error.
pub(crate) fn parse<T: DeserializeOwned>(parameters: &Value) -> Result<T, Vec<FieldError>> {
    let parameters = if parameters.is_null() {
        &Value::Object(serde_json::Map::new())
    } else {
        parameters
    };
    serde_path_to_error::deserialize(parameters).map_err(|e| {
        let path = e.path().to_string();
        vec![FieldError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }]
    })
}

/// Parses and validates, as [`Provider::validate`] and every call do.
fn checked<T: DeserializeOwned>(
    parameters: &Value,
    validate: impl Fn(&T) -> Vec<FieldError>,
) -> Result<T, Vec<FieldError>> {
    let value = parse::<T>(parameters)?;
    let errors = validate(&value);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// Checks a PostgreSQL identifier (a name of a database, role, table, column).
pub(crate) fn check_identifier(path: &str, name: &str, errors: &mut Vec<FieldError>) {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        errors.push(FieldError {
            path: path.to_owned(),
            message: format!("must be 1-63 bytes without NUL, got {name:?}"),
        });
    }
}

/// Checks a resource's external name as an identifier: PostgreSQL would cut a longer one
/// silently, and the resource would never find its object again.
pub(crate) fn check_external_name(name: &str) -> crate::provider::Result<()> {
    let mut errors = Vec::new();
    check_identifier("externalName", name, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::provider::ProviderError::Invalid(errors))
    }
}

/// Checks a `connectionLimit` (-1 for none, or a count).
pub(crate) fn check_connection_limit(limit: i32, errors: &mut Vec<FieldError>) {
    if limit < -1 {
        errors.push(FieldError {
            path: "connectionLimit".into(),
            message: format!("must be -1 (no limit) or more, got {limit}"),
        });
    }
}

/// `name` as a quoted SQL identifier (`"order ""items"""`).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a SQL string literal that means the same whatever `standard_conforming_strings`
/// is: `'it''s'`, or with a backslash the escape form `E'a\\b'`, where a backslash is
/// always an escape.
pub(crate) fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// SQLSTATEs that end once another resource or a concurrent reconcile has done its part:
/// a database that does not exist yet (3D000: a `TableSchema` before its `Database`), an
/// object that does not exist yet (42704: a `Grant` before its `Role`, a `Database` before
/// its owner), objects that still depend on what is dropped (2BP01), a concurrent create of
/// the same thing (23505 on a system catalog's index, 42P07), an object in use (55006).
const ORDERING_CODES: [&str; 6] = ["3D000", "42704", "2BP01", "23505", "42P07", "55006"];

/// Whether a SQLSTATE is worth retrying: connection problems (08), transaction rollbacks
/// such as serialization failures (40), resource shortages (53), shutdowns and cancels
/// (57), system errors (58), lock timeouts (55P03) and the [`ORDERING_CODES`]. A unique
/// violation (23505) is retryable only on a system catalog's index (`pg_*`, `constraint`):
/// a concurrent create of the same object. On a table's own index (a unique index over
/// duplicate rows) it stays until the data changes, so it is permanent.
fn retryable_code(code: &str, constraint: Option<&str>) -> bool {
    if code == "23505" {
        return constraint.is_some_and(|c| c.starts_with("pg_"));
    }
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55P03"
        || ORDERING_CODES.contains(&code)
}

/// A failed statement as a provider error: connection problems, resource shortages, lock
/// timeouts, serialization failures, shutdowns and ordering errors that end by themselves
/// (see [`ORDERING_CODES`]) are retryable; anything else is rejected.
pub(crate) fn db_error(context: impl fmt::Display, error: tokio_postgres::Error) -> ProviderError {
    let retryable = match error.code() {
        None => true,
        Some(code) => retryable_code(
            code.code(),
            error.as_db_error().and_then(|db| db.constraint()),
        ),
    };
    let what = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    };
    let message = format!("{context}: {what}");
    let source = Some(Box::new(error) as crate::provider::BoxError);
    if retryable {
        ProviderError::Unavailable { message, source }
    } else {
        ProviderError::Rejected { message, source }
    }
}

/// Connects to `database` as the endpoint's administrative user.
async fn connect_admin(endpoint: &Endpoint, database: &str) -> Result<tokio_postgres::Client> {
    let config = endpoint.config(&endpoint.user, &endpoint.password, database);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        db_error(
            format!(
                "connecting to database `{database}` at {}:{} as `{}`",
                endpoint.host, endpoint.port, endpoint.user
            ),
            e,
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

#[async_trait]
impl Provider for PostgresProvider {
    fn kind(&self) -> &str {
        self.kind.as_str()
    }

    fn validate(&self, parameters: &Value) -> Result<(), Vec<FieldError>> {
        match self.kind {
            Kind::Database => checked(parameters, database::validate).map(drop),
            Kind::Role => checked(parameters, role::validate).map(drop),
            Kind::Grant => checked(parameters, grant::validate).map(drop),
            Kind::TableSchema => schema::SchemaSpec::from_parameters(parameters).map(drop),
        }
    }

    async fn connect(&self, resource: &ExternalRef<'_>) -> Result<Box<dyn ExternalClient>> {
        let database = match self.kind {
            Kind::TableSchema => {
                schema::SchemaSpec::from_parameters(resource.parameters)
                    .map_err(ProviderError::Invalid)?
                    .database
            }
            _ => self.endpoint.admin_database.clone(),
        };
        let client = connect_admin(&self.endpoint, &database).await?;
        Ok(Box::new(PostgresClient {
            kind: self.kind,
            endpoint: self.endpoint.clone(),
            secrets: self.secrets.clone(),
            client,
        }))
    }
}

/// The client of one reconcile: one connection to the server.
#[derive(Debug)]
struct PostgresClient {
    kind: Kind,
    endpoint: Endpoint,
    secrets: Arc<dyn SecretResolver>,
    client: tokio_postgres::Client,
}

fn invalid(errors: Vec<FieldError>) -> ProviderError {
    ProviderError::Invalid(errors)
}

#[async_trait]
impl ExternalClient for PostgresClient {
    async fn observe(&self, r: &ExternalRef<'_>) -> Result<Observation> {
        match self.kind {
            Kind::Database => {
                let p = checked(r.parameters, database::validate).map_err(invalid)?;
                database::check_adoptable(r.external_name, &self.endpoint.admin_database)?;
                database::observe(&self.client, r.external_name, &p).await
            }
            Kind::Role => {
                let p = checked(r.parameters, role::validate).map_err(invalid)?;
                role::observe(self, r.external_name, &p).await
            }
            Kind::Grant => {
                let p = checked(r.parameters, grant::validate).map_err(invalid)?;
                grant::observe(&self.client, &p).await
            }
            Kind::TableSchema => {
                let p = schema::SchemaSpec::from_parameters(r.parameters).map_err(invalid)?;
                schema::observe(&self.client, r.external_name, &p).await
            }
        }
    }

    async fn create(&self, r: &ExternalRef<'_>) -> Result<Creation> {
        match self.kind {
            Kind::Database => {
                let p = checked(r.parameters, database::validate).map_err(invalid)?;
                database::check_adoptable(r.external_name, &self.endpoint.admin_database)?;
                database::create(&self.client, r.external_name, &p).await?;
                Ok(Creation::new())
            }
            Kind::Role => {
                let p = checked(r.parameters, role::validate).map_err(invalid)?;
                let details = role::create(self, r.external_name, &p).await?;
                Ok(Creation::new().connection_details(details))
            }
            Kind::Grant => {
                let p = checked(r.parameters, grant::validate).map_err(invalid)?;
                grant::apply(&self.client, &p).await?;
                Ok(Creation::new())
            }
            Kind::TableSchema => {
                let p = schema::SchemaSpec::from_parameters(r.parameters).map_err(invalid)?;
                schema::apply(&self.client, r.external_name, &p).await?;
                Ok(Creation::new())
            }
        }
    }

    async fn update(&self, r: &ExternalRef<'_>) -> Result<Update> {
        match self.kind {
            Kind::Database => {
                let p = checked(r.parameters, database::validate).map_err(invalid)?;
                database::check_adoptable(r.external_name, &self.endpoint.admin_database)?;
                database::update(&self.client, r.external_name, &p).await?;
                Ok(Update::default())
            }
            Kind::Role => {
                let p = checked(r.parameters, role::validate).map_err(invalid)?;
                let details = role::update(self, r.external_name, &p).await?;
                Ok(Update {
                    connection_details: details,
                })
            }
            Kind::Grant => {
                let p = checked(r.parameters, grant::validate).map_err(invalid)?;
                grant::apply(&self.client, &p).await?;
                Ok(Update::default())
            }
            Kind::TableSchema => {
                let p = schema::SchemaSpec::from_parameters(r.parameters).map_err(invalid)?;
                schema::apply(&self.client, r.external_name, &p).await?;
                Ok(Update::default())
            }
        }
    }

    async fn delete(&self, r: &ExternalRef<'_>) -> Result<()> {
        match self.kind {
            Kind::Database => {
                database::check_adoptable(r.external_name, &self.endpoint.admin_database)?;
                database::delete(&self.client, r.external_name).await
            }
            Kind::Role => role::delete(self, r.external_name).await,
            Kind::Grant => {
                let p = checked(r.parameters, grant::validate).map_err(invalid)?;
                grant::revoke(&self.client, &p).await
            }
            Kind::TableSchema => {
                let p = schema::SchemaSpec::from_parameters(r.parameters).map_err(invalid)?;
                schema::delete(&self.client, r.external_name, &p).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("orders"), "\"orders\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b'"), r"E'a\\b'''");
        assert_eq!(literal(r"\'; DROP"), r"E'\\''; DROP'");
    }

    #[test]
    fn static_secrets_debug_shows_references_not_values() {
        let secrets = StaticSecrets::new().with("app", "password", "s3cr3t-value");
        let shown = format!("{secrets:?}");
        assert!(
            shown.contains("app") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        let reference = SecretRef {
            name: "app".into(),
            key: "password".into(),
        };
        assert_eq!(
            secrets.resolve(&reference).unwrap().expose(),
            "s3cr3t-value"
        );
        let missing = SecretRef {
            name: "app".into(),
            key: "other".into(),
        };
        let err = secrets.resolve(&missing).unwrap_err();
        assert!(
            err.is_retryable(),
            "a secret created later is picked up: {err}"
        );
        assert!(err.to_string().contains("`other`"), "{err}");
    }

    #[test]
    fn ordering_errors_that_end_by_themselves_are_retryable() {
        for code in [
            "3D000", "42704", "2BP01", "42P07", "55006", "55P03", "08006", "40001",
        ] {
            assert!(retryable_code(code, None), "{code}");
        }
        for code in ["42601", "42501", "22023", "42P16", "23502", "23505"] {
            assert!(!retryable_code(code, None), "{code}");
        }
        assert!(retryable_code("23505", Some("pg_namespace_nspname_index")));
        assert!(!retryable_code("23505", Some("orders_email_key")));
    }

    #[test]
    fn an_endpoint_never_prints_its_password() {
        let e = Endpoint::new("127.0.0.1", 5432, "postgres", Secret::new("adm1n-pw"));
        assert!(!format!("{e:?}").contains("adm1n"));
    }
}
