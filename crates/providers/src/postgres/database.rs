//! `Database`: a database with an owner and a connection limit.

use rorqual_core::model::FieldError;
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Client;

use super::{check_connection_limit, check_external_name, check_identifier, db_error, ident};
use crate::provider::{Observation, Result};

/// A database's parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DatabaseParams {
    /// Its owner (a role that exists); the administrative user when left out (then filled in
    /// by late initialisation).
    #[serde(default)]
    owner: Option<String>,
    /// Concurrent connections allowed; -1 (the default) for no limit.
    #[serde(default = "no_limit")]
    connection_limit: i32,
}

fn no_limit() -> i32 {
    -1
}

pub(super) fn validate(p: &DatabaseParams) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(owner) = &p.owner {
        check_identifier("owner", owner, &mut errors);
    }
    check_connection_limit(p.connection_limit, &mut errors);
    errors
}

/// The databases no resource may manage, besides the endpoint's administrative one.
const SYSTEM_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// Refuses the administrative database, `postgres` and the templates: adopting one would let
/// a delete drop it (or a change of owner or limit lock the administrator out).
pub(super) fn check_adoptable(name: &str, admin_database: &str) -> Result<()> {
    if name == admin_database || SYSTEM_DATABASES.contains(&name) {
        return Err(crate::provider::ProviderError::rejected(format!(
            "database `{name}` is the administrative database or a system database (postgres, template0, template1) and cannot be managed as a Database"
        )));
    }
    Ok(())
}

pub(super) async fn observe(
    client: &Client,
    name: &str,
    p: &DatabaseParams,
) -> Result<Observation> {
    check_external_name(name)?;
    let row = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba)::text, datconnlimit, pg_encoding_to_char(encoding)::text \
             FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| db_error(format!("observing database `{name}`"), e))?;
    let Some(row) = row else {
        return Ok(Observation::missing());
    };
    let owner: String = row.get(0);
    let limit: i32 = row.get(1);
    let encoding: String = row.get(2);
    let mut diff = Vec::new();
    if let Some(want) = &p.owner
        && *want != owner
    {
        diff.push(format!("owner: {owner} -> {want}"));
    }
    if limit != p.connection_limit {
        diff.push(format!(
            "connectionLimit: {limit} -> {}",
            p.connection_limit
        ));
    }
    let mut observation = if diff.is_empty() {
        Observation::up_to_date()
    } else {
        Observation::outdated(diff.join("\n"))
    };
    observation = observation
        .at_provider(json!({"owner": owner, "connectionLimit": limit, "encoding": encoding}));
    if p.owner.is_none() {
        observation = observation
            .late_initialized(json!({"owner": owner, "connectionLimit": p.connection_limit}));
    }
    Ok(observation)
}

pub(super) async fn create(client: &Client, name: &str, p: &DatabaseParams) -> Result<()> {
    check_external_name(name)?;
    let mut sql = format!(
        "CREATE DATABASE {} CONNECTION LIMIT {}",
        ident(name),
        p.connection_limit
    );
    if let Some(owner) = &p.owner {
        sql.push_str(&format!(" OWNER {}", ident(owner)));
    }
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // Idempotent: it exists already; the next observe compares the rest.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            update(client, name, p).await
        }
        Err(e) => Err(db_error(format!("creating database `{name}`"), e)),
    }
}

pub(super) async fn update(client: &Client, name: &str, p: &DatabaseParams) -> Result<()> {
    check_external_name(name)?;
    let mut sql = format!(
        "ALTER DATABASE {} CONNECTION LIMIT {};",
        ident(name),
        p.connection_limit
    );
    if let Some(owner) = &p.owner {
        sql.push_str(&format!(
            "ALTER DATABASE {} OWNER TO {};",
            ident(name),
            ident(owner)
        ));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| db_error(format!("updating database `{name}`"), e))
}

pub(super) async fn delete(client: &Client, name: &str) -> Result<()> {
    check_external_name(name)?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(name)
        ))
        .await
        .map_err(|e| db_error(format!("dropping database `{name}`"), e))
}
