//! `Grant`: privileges of a role on a database (`CONNECT`, `CREATE`, `TEMPORARY`), exactly
//! the ones listed: others granted directly to the role on that database are revoked.

use std::collections::BTreeSet;

use rorqual_core::model::FieldError;
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::Client;

use super::{check_identifier, db_error, ident};
use crate::provider::{Observation, Result};

/// A privilege on a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Privilege {
    /// `CONNECT`.
    Connect,
    /// `CREATE` (schemas).
    Create,
    /// `TEMPORARY` (`TEMP`): temporary tables.
    #[serde(alias = "TEMP")]
    Temporary,
    /// `ALL`: every privilege above.
    All,
}

impl Privilege {
    /// The SQL keyword (`CONNECT`).
    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Connect => "CONNECT",
            Privilege::Create => "CREATE",
            Privilege::Temporary => "TEMPORARY",
            Privilege::All => "ALL",
        }
    }
}

/// A grant's parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GrantParams {
    role: String,
    database: String,
    privileges: BTreeSet<Privilege>,
}

impl GrantParams {
    /// The privileges with `ALL` expanded.
    fn wanted(&self) -> BTreeSet<Privilege> {
        if self.privileges.contains(&Privilege::All) {
            [Privilege::Connect, Privilege::Create, Privilege::Temporary].into()
        } else {
            self.privileges.clone()
        }
    }
}

pub(super) fn validate(p: &GrantParams) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_identifier("role", &p.role, &mut errors);
    check_identifier("database", &p.database, &mut errors);
    if p.privileges.is_empty() {
        errors.push(FieldError {
            path: "privileges".into(),
            message: "must list at least one privilege".into(),
        });
    }
    errors
}

/// The privileges granted directly to the role on the database; `None` when either is
/// missing.
async fn granted(client: &Client, p: &GrantParams) -> Result<Option<BTreeSet<Privilege>>> {
    let context = || format!("observing privileges of `{}` on `{}`", p.role, p.database);
    let rows = client
        .query(
            "SELECT a.privilege_type::text FROM pg_database d \
             CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
             JOIN pg_roles r ON r.oid = a.grantee \
             WHERE d.datname = $1 AND r.rolname = $2",
            &[&p.database, &p.role],
        )
        .await
        .map_err(|e| db_error(context(), e))?;
    let both = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) \
             AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)",
            &[&p.database, &p.role],
        )
        .await
        .map_err(|e| db_error(context(), e))?;
    if !both.get::<_, bool>(0) {
        return Ok(None);
    }
    let privileges = rows
        .iter()
        .filter_map(|row| match row.get::<_, String>(0).as_str() {
            "CONNECT" => Some(Privilege::Connect),
            "CREATE" => Some(Privilege::Create),
            "TEMPORARY" => Some(Privilege::Temporary),
            _ => None,
        })
        .collect();
    Ok(Some(privileges))
}

fn names(set: &BTreeSet<Privilege>) -> Vec<&'static str> {
    set.iter().map(|p| p.as_str()).collect()
}

pub(super) async fn observe(client: &Client, p: &GrantParams) -> Result<Observation> {
    let Some(have) = granted(client, p).await? else {
        return Ok(Observation::missing());
    };
    if have.is_empty() {
        return Ok(Observation::missing());
    }
    let want = p.wanted();
    let observation = if have == want {
        Observation::up_to_date()
    } else {
        Observation::outdated(format!(
            "privileges of `{}` on `{}`: {:?} -> {:?}",
            p.role,
            p.database,
            names(&have),
            names(&want)
        ))
    };
    Ok(observation.at_provider(json!({ "privileges": names(&have) })))
}

/// Grants exactly the wanted privileges (create and update): one simple query, which
/// PostgreSQL runs as one implicit transaction.
pub(super) async fn apply(client: &Client, p: &GrantParams) -> Result<()> {
    let want = names(&p.wanted()).join(", ");
    let (db, role) = (ident(&p.database), ident(&p.role));
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM {role}; GRANT {want} ON DATABASE {db} TO {role}"
        ))
        .await
        .map_err(|e| {
            db_error(
                format!("granting {want} on `{}` to `{}`", p.database, p.role),
                e,
            )
        })
}

/// Revokes every privilege the role holds directly on the database; nothing to do when the
/// role or the database is gone.
pub(super) async fn revoke(client: &Client, p: &GrantParams) -> Result<()> {
    if granted(client, p).await?.is_none() {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {} FROM {}",
            ident(&p.database),
            ident(&p.role)
        ))
        .await
        .map_err(|e| db_error(format!("revoking on `{}` from `{}`", p.database, p.role), e))
}
