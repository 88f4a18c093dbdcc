//! `Role`: a role (a user when it may log in) with a password from a secret reference.
//!
//! The password is resolved through the provider's [`SecretResolver`](super::SecretResolver)
//! and sent as a SCRAM-SHA-256 verifier computed here, so the clear text is in no SQL
//! statement (and no server log). Observe checks it by logging in as the role over TCP: a
//! rotated secret makes the role "not up to date" and the update sets the new password.
//! Roles are read from `pg_roles`, so the administrative user need not be a superuser (one
//! with `CREATEROLE` will do); only a superuser also sees whether a role has a password at
//! all (`pg_authid`), otherwise the password is checked by logging in only.

use rorqual_core::model::FieldError;
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::error::SqlState;

use super::{
    PostgresClient, SecretRef, check_connection_limit, check_external_name, db_error, ident,
    literal,
};
use crate::provider::{Observation, Result};
use crate::secret::{ConnectionDetails, Secret};

/// A role's parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RoleParams {
    /// Where its password is; no password when left out.
    #[serde(default)]
    password_secret_ref: Option<SecretRef>,
    /// Whether it may log in (default true).
    #[serde(default = "yes")]
    login: bool,
    /// Whether it may create databases (default false).
    #[serde(default)]
    create_db: bool,
    /// Concurrent connections allowed; -1 (the default) for no limit.
    #[serde(default = "no_limit")]
    connection_limit: i32,
}

fn yes() -> bool {
    true
}

fn no_limit() -> i32 {
    -1
}

pub(super) fn validate(p: &RoleParams) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(r) = &p.password_secret_ref {
        for (path, value) in [
            ("passwordSecretRef.name", &r.name),
            ("passwordSecretRef.key", &r.key),
        ] {
            if value.is_empty() {
                errors.push(FieldError {
                    path: path.into(),
                    message: "must not be empty".into(),
                });
            }
        }
    }
    check_connection_limit(p.connection_limit, &mut errors);
    errors
}

/// Refuses the endpoint's administrative user, reserved `pg_*` roles and any existing
/// superuser: adopting one would let an update change its login or password, or a delete
/// drop it.
async fn check_adoptable(c: &PostgresClient, name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(crate::provider::ProviderError::rejected(format!(
            "role `{name}` {why} and cannot be managed as a Role"
        )))
    };
    if name == c.endpoint.user {
        return refuse("is the administrative user of the endpoint");
    }
    if name.starts_with("pg_") {
        return refuse("is a reserved system role name (pg_*)");
    }
    let superuser = c
        .client
        .query_opt("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map_err(|e| db_error(format!("checking role `{name}`"), e))?
        .is_some_and(|row| row.get::<_, bool>(0));
    if superuser {
        return refuse("is an existing superuser");
    }
    Ok(())
}

fn password(c: &PostgresClient, p: &RoleParams) -> Result<Option<Secret>> {
    p.password_secret_ref
        .as_ref()
        .map(|r| c.secrets.resolve(r))
        .transpose()
}

fn details(c: &PostgresClient, name: &str, password: Option<Secret>) -> ConnectionDetails {
    let mut d = ConnectionDetails::new()
        .with("host", c.endpoint.host.clone())
        .with("port", c.endpoint.port.to_string())
        .with("user", name);
    if let Some(password) = password {
        d.insert("password", password);
    }
    d
}

/// Whether `password` logs `name` in; `None` when that cannot be told (no login allowed
/// from here, too many connections).
async fn password_works(c: &PostgresClient, name: &str, password: &Secret) -> Option<bool> {
    let config = c
        .endpoint
        .config(name, password, &c.endpoint.admin_database);
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            let _ = connection.await;
            Some(true)
        }
        Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => Some(false),
        Err(_) => None,
    }
}

/// Reads the role from `pg_roles`, which any role may read. Whether it has a password is in
/// `pg_authid` only, which only a superuser may read: `None` when the administrative user
/// is not one (the password is then checked by logging in only).
pub(super) async fn observe(c: &PostgresClient, name: &str, p: &RoleParams) -> Result<Observation> {
    check_adoptable(c, name).await?;
    let row = c
        .client
        .query_opt(
            "SELECT r.rolcanlogin, r.rolcreatedb, r.rolconnlimit, \
                    (SELECT s.rolsuper FROM pg_roles s WHERE s.rolname = current_user) \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&name],
        )
        .await
        .map_err(|e| db_error(format!("observing role `{name}`"), e))?;
    let Some(row) = row else {
        return Ok(Observation::missing());
    };
    let (login, create_db, limit, superuser): (bool, bool, i32, Option<bool>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    // A separate statement: a query naming pg_authid fails for a non-superuser even where
    // it would not be read.
    let has_password: Option<bool> = if superuser == Some(true) {
        c.client
            .query_opt(
                "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1",
                &[&name],
            )
            .await
            .map_err(|e| db_error(format!("observing the password of role `{name}`"), e))?
            .map(|row| row.get(0))
    } else {
        None
    };
    let mut diff = Vec::new();
    if login != p.login {
        diff.push(format!("login: {login} -> {}", p.login));
    }
    if create_db != p.create_db {
        diff.push(format!("createDb: {create_db} -> {}", p.create_db));
    }
    if limit != p.connection_limit {
        diff.push(format!(
            "connectionLimit: {limit} -> {}",
            p.connection_limit
        ));
    }
    let password = password(c, p)?;
    match (&password, has_password) {
        (None, Some(true)) => diff.push("password: set -> none".into()),
        (Some(_), Some(false)) => diff.push("password: none -> from secret".into()),
        (Some(secret), Some(true) | None)
            if login && p.login && password_works(c, name, secret).await == Some(false) =>
        {
            diff.push("password: differs from the secret".into());
        }
        _ => {}
    }
    let observation = if diff.is_empty() {
        Observation::up_to_date()
    } else {
        Observation::outdated(diff.join("\n"))
    };
    Ok(observation
        .at_provider(json!({"login": login, "createDb": create_db, "connectionLimit": limit}))
        .connection_details(details(c, name, password)))
}

/// The options of `CREATE ROLE` / `ALTER ROLE`.
fn options(p: &RoleParams, password: Option<&Secret>) -> String {
    let mut sql = format!(
        "{} {} CONNECTION LIMIT {} PASSWORD ",
        if p.login { "LOGIN" } else { "NOLOGIN" },
        if p.create_db {
            "CREATEDB"
        } else {
            "NOCREATEDB"
        },
        p.connection_limit
    );
    match password {
        // A SCRAM verifier (salted, iterated hash): the server stores it as is.
        Some(secret) => sql.push_str(&literal(&postgres_protocol::password::scram_sha_256(
            secret.expose().as_bytes(),
        ))),
        None => sql.push_str("NULL"),
    }
    sql
}

pub(super) async fn create(
    c: &PostgresClient,
    name: &str,
    p: &RoleParams,
) -> Result<ConnectionDetails> {
    check_external_name(name)?;
    check_adoptable(c, name).await?;
    let password = password(c, p)?;
    let sql = format!(
        "CREATE ROLE {} {}",
        ident(name),
        options(p, password.as_ref())
    );
    match c.client.batch_execute(&sql).await {
        Ok(()) => Ok(details(c, name, password)),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => update(c, name, p).await,
        // The statement holds a password hash: the error names the role only.
        Err(e) => Err(db_error(format!("creating role `{name}`"), e)),
    }
}

pub(super) async fn update(
    c: &PostgresClient,
    name: &str,
    p: &RoleParams,
) -> Result<ConnectionDetails> {
    check_external_name(name)?;
    check_adoptable(c, name).await?;
    let password = password(c, p)?;
    let sql = format!(
        "ALTER ROLE {} {}",
        ident(name),
        options(p, password.as_ref())
    );
    c.client
        .batch_execute(&sql)
        .await
        .map_err(|e| db_error(format!("updating role `{name}`"), e))?;
    Ok(details(c, name, password))
}

pub(super) async fn delete(c: &PostgresClient, name: &str) -> Result<()> {
    check_adoptable(c, name).await?;
    c.client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(name)))
        .await
        .map_err(|e| db_error(format!("dropping role `{name}`"), e))
}
