//! `TableSchema`: declared tables in one PostgreSQL schema (namespace), the way game teams
//! ship table definitions next to their app. The external name is the PostgreSQL schema the
//! resource owns: every table in it is managed, and a table not declared is dropped (with
//! `allowDataLoss: true`). So it cannot be `public` (shared by everything in the database),
//! `information_schema` or `pg_*`: those are refused. An index that is not declared (made by
//! hand, backing a constraint, on an expression, partial) is left alone and listed in
//! `atProvider` as `unmanagedIndexes` (`table.index`).
//!
//! ```yaml
//! database: shop
//! allowDataLoss: false
//! tables:
//!   - name: orders
//!     comment: one row per order
//!     columns:
//!       - {name: id, type: bigint}
//!       - {name: status, type: varchar(20), nullable: false, default: "'new'"}
//!       - {name: customer_id, type: bigint, references: {table: customers, column: id}}
//!     primaryKey: [id]
//!     indexes:
//!       - {name: orders_status, columns: [status]}
//! ```
//!
//! The spec is validated before anything runs ([`SchemaSpec::from_parameters`]: duplicate
//! tables, columns or indexes, unknown types, defaults that do not parse or do not fit the
//! type, keys and references to missing tables or columns, each with its field path). A
//! change is planned as a migration ([`plan::plan`], pure: declared and observed schema in,
//! ordered steps out) that observe shows as the diff; create and update run the whole plan
//! in one transaction, and refuse with the plan when a step is destructive (drop a column or
//! table, narrow or convert a type) unless `allowDataLoss: true`. Deleting drops the schema:
//! without `allowDataLoss` with `DROP SCHEMA … RESTRICT`, which the server refuses while the
//! schema holds anything (no check-then-drop race), with it `CASCADE`.
//!
//! ```
//! use rorqual_providers::postgres::schema::{SchemaSpec, model::Schema, plan::plan};
//!
//! let spec: serde_json::Value = yaml_serde::from_str(
//!     "database: shop\ntables:\n- name: t\n  columns: [{name: id, type: int}]\n  primaryKey: [id]\n",
//! ).unwrap();
//! let spec = SchemaSpec::from_parameters(&spec).unwrap();
//! let steps = plan("shop", &spec.to_schema(), &Schema::default());
//! assert_eq!(steps.to_string(), "+ create schema shop\n+ create table t (id integer not null, primary key (id))");
//! ```

pub mod model;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};

use rorqual_core::model::FieldError;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Client;

use self::model::{Column, DefaultExpr, ForeignKey, Index, Schema, SqlType, Table};
use super::{check_identifier, db_error, ident};
use crate::provider::{Observation, ProviderError, Result};

/// A `TableSchema`'s parameters, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SchemaSpec {
    /// The database holding the schema.
    pub database: String,
    /// Whether destructive steps (drops, narrowing) may run.
    #[serde(default)]
    pub allow_data_loss: bool,
    /// The tables.
    #[serde(default)]
    pub tables: Vec<TableSpec>,
}

/// A declared table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct TableSpec {
    /// Its name.
    pub name: String,
    /// Its comment (an empty one is none).
    #[serde(default)]
    pub comment: Option<String>,
    /// Its columns, in order.
    pub columns: Vec<ColumnSpec>,
    /// The primary key's columns (their values are then required).
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Its indexes.
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
}

/// A declared column.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ColumnSpec {
    /// Its name.
    pub name: String,
    /// Its type (`bigint`, `varchar(20)`, `numeric(10,2)`, `timestamptz`, …).
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether it may hold NULL (default true; primary key columns never do).
    #[serde(default = "yes")]
    pub nullable: bool,
    /// Its default, in SQL (`0`, `'new'`, `true`, `now()`, `CURRENT_TIMESTAMP`). Calls are
    /// limited to [`model::CALLS`] (`now()`, `clock_timestamp()`, `statement_timestamp()`,
    /// `transaction_timestamp()`, `gen_random_uuid()`) and run `pg_catalog`-qualified.
    #[serde(default)]
    pub default: Option<String>,
    /// Its comment (an empty one is none).
    #[serde(default)]
    pub comment: Option<String>,
    /// The column of another declared table it references (a foreign key).
    #[serde(default)]
    pub references: Option<ReferenceSpec>,
}

fn yes() -> bool {
    true
}

/// A foreign key target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ReferenceSpec {
    /// The referenced table (declared in the same spec).
    pub table: String,
    /// Its column (its single-column primary key or a unique index).
    pub column: String,
}

/// A declared index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IndexSpec {
    /// Its name (unique in the schema).
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<String>,
    /// Whether it is unique.
    #[serde(default)]
    pub unique: bool,
}

fn error(errors: &mut Vec<FieldError>, path: String, message: String) {
    errors.push(FieldError { path, message });
}

impl SchemaSpec {
    /// Reads and validates `forProvider`.
    ///
    /// # Errors
    ///
    /// Every problem, each with its path (`tables[0].columns[2].default`).
    pub fn from_parameters(parameters: &Value) -> Result<SchemaSpec, Vec<FieldError>> {
        let spec: SchemaSpec = super::parse(parameters)?;
        let errors = spec.validate();
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_identifier("database", &self.database, &mut errors);
        let mut tables: BTreeMap<&str, usize> = BTreeMap::new();
        let mut indexes: BTreeMap<&str, String> = BTreeMap::new();
        for (t, table) in self.tables.iter().enumerate() {
            let at = format!("tables[{t}]");
            check_identifier(&format!("{at}.name"), &table.name, &mut errors);
            if let Some(first) = tables.insert(&table.name, t) {
                error(
                    &mut errors,
                    format!("{at}.name"),
                    format!("duplicate table {:?} (also tables[{first}])", table.name),
                );
            }
            if table.columns.is_empty() {
                error(
                    &mut errors,
                    format!("{at}.columns"),
                    "must list at least one column".into(),
                );
            }
            let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
            for (c, column) in table.columns.iter().enumerate() {
                let at = format!("{at}.columns[{c}]");
                check_identifier(&format!("{at}.name"), &column.name, &mut errors);
                if let Some(first) = columns.insert(&column.name, c) {
                    error(
                        &mut errors,
                        format!("{at}.name"),
                        format!("duplicate column {:?} (also columns[{first}])", column.name),
                    );
                }
                let ty = SqlType::parse(&column.ty);
                if ty.is_none() {
                    error(
                        &mut errors,
                        format!("{at}.type"),
                        format!("unknown type {:?}", column.ty),
                    );
                }
                if let Some(default) = &column.default {
                    match DefaultExpr::parse(default) {
                        Err(why) => error(
                            &mut errors,
                            format!("{at}.default"),
                            format!("{default:?} does not parse: {why}"),
                        ),
                        Ok(Some(expr)) => {
                            if let Some(ty) = &ty
                                && let Err(why) = expr.check_type(ty)
                            {
                                error(&mut errors, format!("{at}.default"), why);
                            }
                        }
                        Ok(None) => {}
                    }
                }
            }
            for (k, key) in table.primary_key.iter().enumerate() {
                if !columns.contains_key(key.as_str()) {
                    error(
                        &mut errors,
                        format!("{at}.primaryKey[{k}]"),
                        format!("no column {key:?} in table {:?}", table.name),
                    );
                }
            }
            for (i, index) in table.indexes.iter().enumerate() {
                let at = format!("{at}.indexes[{i}]");
                check_identifier(&format!("{at}.name"), &index.name, &mut errors);
                if let Some(first) = indexes.insert(&index.name, at.clone()) {
                    error(
                        &mut errors,
                        format!("{at}.name"),
                        format!("duplicate index {:?} (also {first})", index.name),
                    );
                }
                if index.columns.is_empty() {
                    error(
                        &mut errors,
                        format!("{at}.columns"),
                        "must list at least one column".into(),
                    );
                }
                for (k, column) in index.columns.iter().enumerate() {
                    if !columns.contains_key(column.as_str()) {
                        error(
                            &mut errors,
                            format!("{at}.columns[{k}]"),
                            format!("no column {column:?} in table {:?}", table.name),
                        );
                    }
                }
            }
        }
        // References, once every table is known.
        for (t, table) in self.tables.iter().enumerate() {
            for (c, column) in table.columns.iter().enumerate() {
                let Some(r) = &column.references else {
                    continue;
                };
                let at = format!("tables[{t}].columns[{c}].references");
                let Some(target) = self.tables.iter().find(|x| x.name == r.table) else {
                    error(
                        &mut errors,
                        format!("{at}.table"),
                        format!("references missing table {:?}", r.table),
                    );
                    continue;
                };
                if !target.columns.iter().any(|x| x.name == r.column) {
                    error(
                        &mut errors,
                        format!("{at}.column"),
                        format!("no column {:?} in table {:?}", r.column, r.table),
                    );
                    continue;
                }
                let keyed = target.primary_key == [r.column.clone()]
                    || target
                        .indexes
                        .iter()
                        .any(|i| i.unique && i.columns == [r.column.clone()]);
                if !keyed {
                    error(
                        &mut errors,
                        format!("{at}.column"),
                        format!(
                            "{}.{} is neither the primary key nor uniquely indexed",
                            r.table, r.column
                        ),
                    );
                }
            }
        }
        errors
    }

    /// The declared schema, normalised (types, defaults, primary key columns not null).
    /// Call on a validated spec (from [`SchemaSpec::from_parameters`]).
    pub fn to_schema(&self) -> Schema {
        let mut tables = BTreeMap::new();
        for t in &self.tables {
            let columns = t
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    ty: SqlType::parse(&c.ty).unwrap_or_else(|| SqlType::Other(c.ty.clone())),
                    nullable: c.nullable && !t.primary_key.contains(&c.name),
                    default: c
                        .default
                        .as_deref()
                        .and_then(|d| DefaultExpr::parse(d).ok().flatten())
                        .map(|d| match SqlType::parse(&c.ty) {
                            Some(ty) => d.normalize(&ty),
                            None => d,
                        }),
                    comment: non_empty(&c.comment),
                })
                .collect();
            let indexes = t
                .indexes
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        Index {
                            columns: i.columns.clone(),
                            unique: i.unique,
                        },
                    )
                })
                .collect();
            let foreign_keys = t
                .columns
                .iter()
                .filter_map(|c| {
                    let r = c.references.as_ref()?;
                    Some((
                        format!("{}_{}_fkey", t.name, c.name),
                        ForeignKey {
                            column: c.name.clone(),
                            table: r.table.clone(),
                            references: r.column.clone(),
                        },
                    ))
                })
                .collect();
            tables.insert(
                t.name.clone(),
                Table {
                    columns,
                    primary_key: t.primary_key.clone(),
                    primary_key_name: None,
                    indexes,
                    foreign_keys,
                    unmanaged_indexes: BTreeSet::new(),
                    comment: non_empty(&t.comment),
                },
            );
        }
        Schema {
            exists: true,
            tables,
        }
    }
}

/// An empty comment is no comment: PostgreSQL removes a comment set to `''`.
fn non_empty(comment: &Option<String>) -> Option<String> {
    comment.clone().filter(|c| !c.is_empty())
}

/// Reads the schema `schema` from the catalog (`pg_catalog`).
///
/// # Errors
///
/// When a catalog query fails.
pub async fn read_catalog(client: &Client, schema: &str) -> Result<Schema> {
    let context = || format!("reading the catalog of schema `{schema}`");
    let exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(|e| db_error(context(), e))?
        .is_some();
    let mut out = Schema {
        exists,
        tables: BTreeMap::new(),
    };
    if !exists {
        return Ok(out);
    }
    let rows = client
        .query(
            "SELECT c.relname::text, obj_description(c.oid, 'pg_class'), a.attname::text, \
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
             ORDER BY c.relname, a.attnum",
            &[&schema],
        )
        .await
        .map_err(|e| db_error(context(), e))?;
    for row in rows {
        let name: String = row.get(0);
        let table = out.tables.entry(name).or_default();
        table.comment = row.get(1);
        let Some(column) = row.get::<_, Option<String>>(2) else {
            continue;
        };
        let ty: String = row.get(3);
        let ty = SqlType::parse(&ty).unwrap_or(SqlType::Other(ty));
        let default: Option<String> = row.get(5);
        table.columns.push(Column {
            name: column,
            nullable: !row.get::<_, bool>(4),
            default: default.map(|d| match DefaultExpr::parse(&d) {
                Ok(Some(parsed)) => parsed.normalize(&ty),
                _ => DefaultExpr::Raw(d),
            }),
            ty,
            comment: row.get(6),
        });
    }
    let constraints = client
        .query(
            "SELECT c.relname::text, con.conname::text, con.contype::text, \
                    array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o), \
                    f.relname::text, \
                    array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) \
             FROM pg_constraint con \
             JOIN pg_class c ON c.oid = con.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_class f ON f.oid = con.confrelid \
             WHERE n.nspname = $1 AND con.contype IN ('p', 'f')",
            &[&schema],
        )
        .await
        .map_err(|e| db_error(context(), e))?;
    for row in constraints {
        let Some(table) = out.tables.get_mut(&row.get::<_, String>(0)) else {
            continue;
        };
        let name: String = row.get(1);
        let columns: Vec<String> = row.get(3);
        if row.get::<_, String>(2) == "p" {
            table.primary_key = columns;
            table.primary_key_name = Some(name);
        } else if let ([column], Some(target), [references]) = (
            columns.as_slice(),
            row.get::<_, Option<String>>(4),
            row.get::<_, Vec<String>>(5).as_slice(),
        ) {
            table.foreign_keys.insert(
                name,
                ForeignKey {
                    column: column.clone(),
                    table: target,
                    references: references.clone(),
                },
            );
        }
    }
    let indexes = client
        .query(
            "SELECT t.relname::text, i.relname::text, ix.indisunique, \
                    ix.indexprs IS NULL AND ix.indpred IS NULL \
                        AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid), \
                    array(SELECT a.attname::text FROM unnest(ix.indkey::int2[]) WITH ORDINALITY k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.n ORDER BY k.o) \
             FROM pg_index ix \
             JOIN pg_class i ON i.oid = ix.indexrelid \
             JOIN pg_class t ON t.oid = ix.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = $1 AND NOT ix.indisprimary",
            &[&schema],
        )
        .await
        .map_err(|e| db_error(context(), e))?;
    for row in indexes {
        let Some(table) = out.tables.get_mut(&row.get::<_, String>(0)) else {
            continue;
        };
        // An index backing a constraint (unique, exclusion), on an expression or partial is
        // not modelled: kept as a name only, never dropped or replaced.
        if row.get::<_, bool>(3) {
            table.indexes.insert(
                row.get(1),
                Index {
                    unique: row.get(2),
                    columns: row.get(4),
                },
            );
        } else {
            table.unmanaged_indexes.insert(row.get(1));
        }
    }
    // Columns of an observed type rorqual does not model keep their declared default form.
    Ok(out)
}

/// Why a plan may not run.
fn refusal(schema: &str, plan: &plan::Plan) -> String {
    format!(
        "the migration of schema `{schema}` would lose data and allowDataLoss is not set; refused plan:\n{plan}"
    )
}

pub(super) async fn observe(client: &Client, name: &str, spec: &SchemaSpec) -> Result<Observation> {
    check_name(name)?;
    let observed = read_catalog(client, name).await?;
    if !observed.exists {
        return Ok(Observation::missing());
    }
    let desired = spec.to_schema();
    let plan = plan::plan(name, &desired, &observed);
    let tables: BTreeSet<&String> = observed.tables.keys().collect();
    let unmanaged = plan::unmanaged_indexes(&desired, &observed);
    let observation = if plan.is_empty() {
        Observation::up_to_date()
    } else if plan.is_destructive() && !spec.allow_data_loss {
        Observation::outdated(refusal(name, &plan))
    } else {
        Observation::outdated(plan.to_string())
    };
    Ok(observation.at_provider(json!({ "tables": tables, "unmanagedIndexes": unmanaged })))
}

/// Plans and runs the migration in one transaction (create and update).
pub(super) async fn apply(client: &Client, name: &str, spec: &SchemaSpec) -> Result<plan::Plan> {
    check_name(name)?;
    let observed = read_catalog(client, name).await?;
    let plan = plan::plan(name, &spec.to_schema(), &observed);
    if plan.is_empty() {
        return Ok(plan);
    }
    if plan.is_destructive() && !spec.allow_data_loss {
        return Err(ProviderError::rejected(refusal(name, &plan)));
    }
    // One simple-query message: PostgreSQL runs its statements as one implicit transaction,
    // so either every step applies or none does.
    client
        .batch_execute(&plan.sql())
        .await
        .map_err(|e| db_error(format!("migrating schema `{name}` with plan:\n{plan}\n"), e))?;
    Ok(plan)
}

/// Checks the external name: an identifier, and not a schema the resource could not own
/// wholesale (`public`, shared by everything in the database; `information_schema` and
/// `pg_*`, the system's), since it manages every table in it and a delete drops it.
fn check_name(name: &str) -> Result<()> {
    super::check_external_name(name)?;
    if name == "public" || name == "information_schema" || name.starts_with("pg_") {
        return Err(ProviderError::rejected(format!(
            "schema `{name}` is a shared or system schema (public, information_schema, pg_*) and cannot be owned by a TableSchema; name a schema of its own"
        )));
    }
    Ok(())
}

/// Drops the schema; refused while it holds anything unless `allowDataLoss`. The check is
/// the server's own: `DROP SCHEMA … RESTRICT` fails (2BP01) while anything is in the schema,
/// so a table created between a check and the drop is never lost; `CASCADE` only with
/// `allowDataLoss: true`.
pub(super) async fn delete(client: &Client, name: &str, spec: &SchemaSpec) -> Result<()> {
    check_name(name)?;
    let mode = if spec.allow_data_loss {
        "CASCADE"
    } else {
        "RESTRICT"
    };
    match client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {} {mode}", ident(name)))
        .await
    {
        Ok(()) => Ok(()),
        Err(e)
            if e.code()
                == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) =>
        {
            let observed = read_catalog(client, name).await?;
            let tables: Vec<&str> = observed.tables.keys().map(String::as_str).collect();
            let holds = if tables.is_empty() {
                "objects".to_owned()
            } else {
                format!("tables {}", tables.join(", "))
            };
            Err(ProviderError::Rejected {
                message: format!(
                    "deleting schema `{name}` would drop {holds} and allowDataLoss is not set (use deletionPolicy: Orphan to keep them)"
                ),
                source: Some(Box::new(e)),
            })
        }
        Err(e) => Err(db_error(format!("dropping schema `{name}`"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(tables: Value) -> Vec<String> {
        match SchemaSpec::from_parameters(&json!({"database": "app", "tables": tables})) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn bad_specs_are_rejected_with_every_path() {
        let found = problems(json!([
            {"name": "orders", "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "id", "type": "bigint"},
                {"name": "kind", "type": "varchr(3)"},
                {"name": "n", "type": "integer", "default": "'abc'"},
                {"name": "at", "type": "timestamptz", "default": "now("},
                {"name": "c", "type": "bigint", "references": {"table": "customers", "column": "id"}},
            ], "primaryKey": ["id", "nope"],
               "indexes": [{"name": "orders_kind", "columns": ["kind", "missing"]}]},
        ]));
        assert_eq!(
            found,
            [
                "tables[0].columns[1].name: duplicate column \"id\" (also columns[0])",
                "tables[0].columns[2].type: unknown type \"varchr(3)\"",
                "tables[0].columns[3].default: \"abc\" is not a number (type integer)",
                "tables[0].columns[4].default: \"now(\" does not parse: a call of now may have no arguments and must close with `)`",
                "tables[0].primaryKey[1]: no column \"nope\" in table \"orders\"",
                "tables[0].indexes[0].columns[1]: no column \"missing\" in table \"orders\"",
                "tables[0].columns[5].references.table: references missing table \"customers\"",
            ]
        );
    }

    #[test]
    fn a_good_spec_passes_and_shape_errors_have_paths() {
        assert!(
            problems(json!([{"name": "t", "columns": [
                {"name": "id", "type": "uuid", "default": "gen_random_uuid()"},
                {"name": "at", "type": "timestamp with time zone", "default": "CURRENT_TIMESTAMP"},
                {"name": "n", "type": "int", "default": "-1"},
                {"name": "ok", "type": "bool", "default": "true"},
                {"name": "s", "type": "text", "default": "'it''s'::text"},
            ], "primaryKey": ["id"]}]))
            .is_empty()
        );
        let shape = problems(json!([{"name": "t", "columns": [{"name": "id", "typo": "int"}]}]));
        assert_eq!(shape.len(), 1);
        assert!(shape[0].starts_with("tables[0].columns[0]"), "{shape:?}");
    }

    #[test]
    fn defaults_normalise_as_postgres_prints_them() {
        let parse = |s: &str| DefaultExpr::parse(s).unwrap();
        assert_eq!(parse("'-1'::integer"), parse("-1"));
        assert_eq!(parse("'new'::character varying"), parse("'new'"));
        assert_eq!(parse("now()"), parse("NOW ( )"));
        assert_eq!(parse("null"), None);
        assert!(DefaultExpr::parse("'x'::nosuchtype").is_err());
        assert!(DefaultExpr::parse("1 + 1").is_err());
        assert_eq!(parse("pg_catalog.now()"), parse("now()"));
        assert_eq!(parse("now()").unwrap().to_sql(), "pg_catalog.now()");
    }

    #[test]
    fn defaults_may_call_only_allowed_functions() {
        let found = problems(json!([{"name": "t", "columns": [
            {"name": "a", "type": "int", "default": "pg_sleep()"},
            {"name": "b", "type": "text", "default": "public.evil()"},
            {"name": "c", "type": "int", "default": "now()"},
            {"name": "d", "type": "timestamptz", "default": "clock_timestamp()"},
            {"name": "e", "type": "uuid", "default": "pg_catalog.gen_random_uuid()"},
        ]}]));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("tables[0].columns[0].default: \"pg_sleep()\" does not parse: pg_sleep() is not a function a default may call"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("tables[0].columns[1].default:"),
            "{found:?}"
        );
        assert_eq!(
            found[2],
            "tables[0].columns[2].default: now() is not a value of type integer"
        );
    }

    #[test]
    fn defaults_and_comments_normalise_by_column_type() {
        let spec = SchemaSpec::from_parameters(&json!({"database": "app", "tables": [
            {"name": "t", "comment": "", "columns": [
                {"name": "i", "type": "int", "default": "007"},
                {"name": "f", "type": "float8", "default": "1.50"},
                {"name": "r", "type": "real", "default": "02.5"},
                {"name": "n", "type": "numeric(10,2)", "default": "0010.50"},
                {"name": "u", "type": "uuid", "default": "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"},
                {"name": "b", "type": "bool", "default": "'yes'"},
                {"name": "s", "type": "text", "default": "'007'", "comment": ""},
            ]},
        ]}))
        .unwrap()
        .to_schema();
        let t = &spec.tables["t"];
        let defaults: Vec<String> = t
            .columns
            .iter()
            .map(|c| c.default.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(
            defaults,
            [
                "'7'",
                "'1.5'",
                "'2.5'",
                "'10.5'",
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                "true",
                "'007'"
            ]
        );
        assert_eq!(t.comment, None);
        assert_eq!(t.columns[6].comment, None);
        // As PostgreSQL prints them back.
        let n = DefaultExpr::parse("10.50").unwrap().unwrap();
        assert_eq!(
            n.normalize(&SqlType::Numeric(Some((10, 2)))).to_string(),
            "'10.5'"
        );
    }

    #[test]
    fn types_parse_from_aliases_and_widen_only_upwards() {
        assert_eq!(SqlType::parse("INT8"), Some(SqlType::BigInt));
        assert_eq!(
            SqlType::parse("varchar( 20 )"),
            Some(SqlType::Varchar(Some(20)))
        );
        assert_eq!(
            SqlType::parse("decimal(10, 2)"),
            Some(SqlType::Numeric(Some((10, 2))))
        );
        assert_eq!(SqlType::parse("numeric(2,5)"), None);
        assert!(SqlType::Integer.widens_to(&SqlType::BigInt));
        assert!(!SqlType::BigInt.widens_to(&SqlType::Integer));
        assert!(SqlType::Varchar(Some(5)).widens_to(&SqlType::Varchar(Some(9))));
        assert!(!SqlType::Varchar(Some(9)).widens_to(&SqlType::Varchar(Some(5))));
        assert!(!SqlType::Text.widens_to(&SqlType::Varchar(Some(5))));
        assert!(SqlType::Numeric(Some((10, 2))).widens_to(&SqlType::Numeric(Some((12, 3)))));
        assert!(!SqlType::Numeric(Some((10, 2))).widens_to(&SqlType::Numeric(Some((10, 3)))));
    }
}
