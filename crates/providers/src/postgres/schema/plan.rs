//! Migration planning, pure: the declared [`Schema`] and the observed one in, the ordered
//! steps that make the second the first out, each marked additive, a change, or destructive
//! (it can lose data: dropping a column or table, narrowing or converting a type).

use std::fmt;

use super::model::{Column, ForeignKey, Schema, Table};
use crate::postgres::{ident, literal};

/// How much a step risks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Risk {
    /// Adds something (a schema, table, column, index, key, comment).
    Additive,
    /// Changes or removes something without losing stored values (a default, a
    /// nullability, a widening type, an index).
    Change,
    /// Can lose stored values (drop a table or column, narrow or convert a type).
    Destructive,
}

impl Risk {
    fn marker(self) -> char {
        match self {
            Risk::Additive => '+',
            Risk::Change => '~',
            Risk::Destructive => '-',
        }
    }
}

/// One step of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Step {
    /// How much it risks.
    pub risk: Risk,
    /// What it does, for people (`add column orders.note text`).
    pub summary: String,
    /// The statement.
    pub sql: String,
}

/// A migration: ordered steps. `Display` shows one line per step, marked `+` (additive),
/// `~` (change) or `-` (destructive).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The steps, in the order they run.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether any step can lose data.
    pub fn is_destructive(&self) -> bool {
        self.steps.iter().any(|s| s.risk == Risk::Destructive)
    }

    /// The statements, in order, as one script.
    pub fn sql(&self) -> String {
        self.steps
            .iter()
            .map(|s| format!("{};", s.sql))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{} {}", step.risk.marker(), step.summary)?;
        }
        Ok(())
    }
}

struct Builder<'a> {
    schema: &'a str,
    steps: Vec<Step>,
}

impl Builder<'_> {
    fn push(&mut self, risk: Risk, summary: String, sql: String) {
        self.steps.push(Step { risk, summary, sql });
    }

    fn table(&self, table: &str) -> String {
        format!("{}.{}", ident(self.schema), ident(table))
    }
}

fn column_sql(c: &Column) -> String {
    let mut sql = format!("{} {}", ident(&c.name), c.ty);
    if let Some(d) = &c.default {
        sql.push_str(&format!(" DEFAULT {}", d.to_sql()));
    }
    if !c.nullable {
        sql.push_str(" NOT NULL");
    }
    sql
}

fn comment_sql(comment: &Option<String>) -> String {
    comment
        .as_deref()
        .map_or_else(|| "NULL".to_owned(), literal)
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The steps that turn `observed` (the PostgreSQL schema `schema`) into `desired`.
///
/// Order: create the schema; drop foreign keys that go or change and declared indexes that
/// change (an index that is not declared is left alone: see [`unmanaged_indexes`]); create new
/// tables; per existing table drop a primary key that goes or changes, add columns, change
/// types, defaults and nullability, add the new primary key, drop columns; create indexes; add foreign keys (every table and column
/// they name exists by then); drop tables; set comments.
pub fn plan(schema: &str, desired: &Schema, observed: &Schema) -> Plan {
    let mut b = Builder {
        schema,
        steps: Vec::new(),
    };
    if !observed.exists {
        b.push(
            Risk::Additive,
            format!("create schema {schema}"),
            format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)),
        );
    }
    let empty = Table::default();
    // Foreign keys and indexes that go or change, before anything they depend on changes.
    for (name, have) in &observed.tables {
        let want = desired.tables.get(name);
        for (fk_name, fk) in &have.foreign_keys {
            if want.is_none_or(|w| !w.foreign_keys.values().any(|f| f == fk)) {
                b.push(
                    Risk::Change,
                    format!(
                        "drop foreign key {name}.{} -> {}.{}",
                        fk.column, fk.table, fk.references
                    ),
                    format!(
                        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                        b.table(name),
                        ident(fk_name)
                    ),
                );
            }
        }
        let Some(want) = want else { continue };
        // Only a declared index whose definition changed: an undeclared one is not this
        // resource's to drop (see [`unmanaged_indexes`]).
        for (index, def) in &have.indexes {
            if want.indexes.get(index).is_some_and(|w| w != def) {
                b.push(
                    Risk::Change,
                    format!("drop index {index} on {name}"),
                    format!("DROP INDEX {}.{}", ident(schema), ident(index)),
                );
            }
        }
    }
    for (name, want) in &desired.tables {
        match observed.tables.get(name) {
            None => create_table(&mut b, name, want),
            Some(have) => alter_table(&mut b, name, want, have),
        }
    }
    for (name, want) in &desired.tables {
        let have = observed.tables.get(name).unwrap_or(&empty);
        for (index, def) in &want.indexes {
            if have.indexes.get(index) != Some(def) {
                let unique = if def.unique { "UNIQUE " } else { "" };
                b.push(
                    Risk::Additive,
                    format!(
                        "create {}index {index} on {name} ({})",
                        unique.to_lowercase(),
                        def.columns.join(", ")
                    ),
                    format!(
                        "CREATE {unique}INDEX {} ON {} ({})",
                        ident(index),
                        b.table(name),
                        list(&def.columns)
                    ),
                );
            }
        }
    }
    for (name, want) in &desired.tables {
        let have = observed.tables.get(name).unwrap_or(&empty);
        for (fk_name, fk) in &want.foreign_keys {
            if !have.foreign_keys.values().any(|f| f == fk) {
                add_foreign_key(&mut b, name, fk_name, fk);
            }
        }
    }
    for name in observed.tables.keys() {
        if !desired.tables.contains_key(name) {
            b.push(
                Risk::Destructive,
                format!("drop table {name}"),
                format!("DROP TABLE {}", b.table(name)),
            );
        }
    }
    for (name, want) in &desired.tables {
        let have = observed.tables.get(name);
        if have.map_or(want.comment.is_some(), |h| h.comment != want.comment) {
            b.push(
                Risk::Additive,
                format!("comment on table {name}: {}", comment_sql(&want.comment)),
                format!(
                    "COMMENT ON TABLE {} IS {}",
                    b.table(name),
                    comment_sql(&want.comment)
                ),
            );
        }
        for c in &want.columns {
            let before = have
                .and_then(|h| h.column(&c.name))
                .and_then(|c| c.comment.clone());
            if before != c.comment {
                b.push(
                    Risk::Additive,
                    format!(
                        "comment on column {name}.{}: {}",
                        c.name,
                        comment_sql(&c.comment)
                    ),
                    format!(
                        "COMMENT ON COLUMN {}.{} IS {}",
                        b.table(name),
                        ident(&c.name),
                        comment_sql(&c.comment)
                    ),
                );
            }
        }
    }
    Plan { steps: b.steps }
}

/// The indexes of `observed` tables that are kept in `desired` but that `desired` does not
/// declare, as `table.index`: left alone by [`plan`] and reported, never dropped. They
/// include the indexes the catalog reader does not model (backing a constraint, on an
/// expression, partial).
pub fn unmanaged_indexes(desired: &Schema, observed: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for (name, have) in &observed.tables {
        let Some(want) = desired.tables.get(name) else {
            continue;
        };
        for index in have.indexes.keys().chain(&have.unmanaged_indexes) {
            if !want.indexes.contains_key(index) {
                out.push(format!("{name}.{index}"));
            }
        }
    }
    out.sort();
    out
}

fn add_foreign_key(b: &mut Builder<'_>, table: &str, name: &str, fk: &ForeignKey) {
    b.push(
        Risk::Additive,
        format!(
            "add foreign key {table}.{} -> {}.{}",
            fk.column, fk.table, fk.references
        ),
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
            b.table(table),
            ident(name),
            ident(&fk.column),
            b.table(&fk.table),
            ident(&fk.references)
        ),
    );
}

fn create_table(b: &mut Builder<'_>, name: &str, want: &Table) {
    let mut parts: Vec<String> = want.columns.iter().map(column_sql).collect();
    if !want.primary_key.is_empty() {
        parts.push(format!("PRIMARY KEY ({})", list(&want.primary_key)));
    }
    let columns = want
        .columns
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", c.name, c.ty);
            if !c.nullable {
                s.push_str(" not null");
            }
            if let Some(d) = &c.default {
                s.push_str(&format!(" default {d}"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = if want.primary_key.is_empty() {
        String::new()
    } else {
        format!(", primary key ({})", want.primary_key.join(", "))
    };
    b.push(
        Risk::Additive,
        format!("create table {name} ({columns}{key})"),
        format!("CREATE TABLE {} ({})", b.table(name), parts.join(", ")),
    );
}

fn alter_table(b: &mut Builder<'_>, name: &str, want: &Table, have: &Table) {
    let table = b.table(name);
    // A changed or removed primary key goes before the column loop: PostgreSQL refuses to
    // drop NOT NULL from a column while it is in the primary key (42P16). The new key is
    // added after the loop, once its columns exist.
    let key_changes = want.primary_key != have.primary_key;
    if key_changes && let Some(old) = &have.primary_key_name {
        b.push(
            Risk::Change,
            format!(
                "drop primary key of {name} ({})",
                have.primary_key.join(", ")
            ),
            format!("ALTER TABLE {table} DROP CONSTRAINT {}", ident(old)),
        );
    }
    for c in &want.columns {
        let Some(old) = have.column(&c.name) else {
            b.push(
                Risk::Additive,
                format!("add column {name}.{} {}", c.name, c.ty),
                format!("ALTER TABLE {table} ADD COLUMN {}", column_sql(c)),
            );
            continue;
        };
        let col = ident(&c.name);
        if old.ty != c.ty {
            if old.ty.widens_to(&c.ty) {
                b.push(
                    Risk::Change,
                    format!("widen column {name}.{}: {} -> {}", c.name, old.ty, c.ty),
                    format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE {}", c.ty),
                );
            } else {
                b.push(
                    Risk::Destructive,
                    format!(
                        "convert column {name}.{}: {} -> {} (narrowing or incompatible: values may be cut or fail)",
                        c.name, old.ty, c.ty
                    ),
                    format!(
                        "ALTER TABLE {table} ALTER COLUMN {col} TYPE {} USING {col}::{}",
                        c.ty, c.ty
                    ),
                );
            }
        }
        if old.default != c.default {
            let (summary, sql) = match &c.default {
                Some(d) => (
                    format!(
                        "set default of {name}.{}: {} -> {d}",
                        c.name,
                        old.default
                            .as_ref()
                            .map_or("none".to_owned(), ToString::to_string)
                    ),
                    format!(
                        "ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {}",
                        d.to_sql()
                    ),
                ),
                None => (
                    format!("drop default of {name}.{}", c.name),
                    format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT"),
                ),
            };
            b.push(Risk::Change, summary, sql);
        }
        if old.nullable != c.nullable {
            let (what, verb) = if c.nullable {
                ("allow null in", "DROP")
            } else {
                ("require values in", "SET")
            };
            b.push(
                Risk::Change,
                format!("{what} {name}.{}", c.name),
                format!("ALTER TABLE {table} ALTER COLUMN {col} {verb} NOT NULL"),
            );
        }
    }
    if key_changes && !want.primary_key.is_empty() {
        b.push(
            Risk::Additive,
            format!(
                "add primary key of {name} ({})",
                want.primary_key.join(", ")
            ),
            format!(
                "ALTER TABLE {table} ADD PRIMARY KEY ({})",
                list(&want.primary_key)
            ),
        );
    }
    for old in &have.columns {
        if want.column(&old.name).is_none() {
            b.push(
                Risk::Destructive,
                format!("drop column {name}.{} ({})", old.name, old.ty),
                format!("ALTER TABLE {table} DROP COLUMN {}", ident(&old.name)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SchemaSpec;
    use super::*;
    use serde_json::json;

    fn desired(tables: serde_json::Value) -> Schema {
        SchemaSpec::from_parameters(&json!({"database": "app", "tables": tables}))
            .unwrap()
            .to_schema()
    }

    fn orders() -> serde_json::Value {
        json!([{
            "name": "orders",
            "comment": "one row per order",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "status", "type": "varchar(20)", "nullable": false, "default": "'new'"},
                {"name": "total", "type": "numeric(10,2)"},
            ],
            "primaryKey": ["id"],
            "indexes": [{"name": "orders_status", "columns": ["status"]}],
        }])
    }

    #[test]
    fn a_missing_schema_is_created_with_its_tables_indexes_and_comments() {
        let plan = plan("shop", &desired(orders()), &Schema::default());
        assert_eq!(
            plan.to_string(),
            "+ create schema shop\n\
             + create table orders (id bigint not null, status character varying(20) not null default 'new', total numeric(10,2), primary key (id))\n\
             + create index orders_status on orders (status)\n\
             + comment on table orders: 'one row per order'"
        );
        assert!(!plan.is_destructive());
        assert!(plan.sql().starts_with("CREATE SCHEMA IF NOT EXISTS \"shop\";\nCREATE TABLE \"shop\".\"orders\" (\"id\" bigint NOT NULL, \"status\" character varying(20) DEFAULT 'new' NOT NULL"), "{}", plan.sql());
    }

    #[test]
    fn the_same_schema_plans_nothing() {
        let mut observed = desired(orders());
        observed.exists = true;
        observed.tables.get_mut("orders").unwrap().primary_key_name = Some("orders_pkey".into());
        assert!(plan("shop", &desired(orders()), &observed).is_empty());
    }

    #[test]
    fn additive_changes_are_not_destructive_and_widening_is_a_change() {
        let mut observed = desired(orders());
        observed.exists = true;
        let mut tables = orders();
        tables[0]["columns"][1]["type"] = json!("text");
        tables[0]["columns"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "note", "type": "text", "comment": "free text"}));
        let p = plan("shop", &desired(tables), &observed);
        assert_eq!(
            p.to_string(),
            "~ widen column orders.status: character varying(20) -> text\n\
             + add column orders.note text\n\
             + comment on column orders.note: 'free text'"
        );
        assert!(!p.is_destructive());
    }

    #[test]
    fn dropping_and_narrowing_are_destructive() {
        let mut observed = desired(orders());
        observed.exists = true;
        let mut tables = orders();
        tables[0]["columns"][1]["type"] = json!("varchar(5)");
        tables[0]["columns"].as_array_mut().unwrap().remove(2);
        let mut observed_extra = observed.clone();
        observed_extra
            .tables
            .insert("legacy".into(), Table::default());
        let p = plan("shop", &desired(tables), &observed_extra);
        assert!(p.is_destructive());
        let destructive: Vec<_> = p
            .steps
            .iter()
            .filter(|s| s.risk == Risk::Destructive)
            .map(|s| s.summary.as_str())
            .collect();
        assert_eq!(
            destructive,
            [
                "convert column orders.status: character varying(20) -> character varying(5) (narrowing or incompatible: values may be cut or fail)",
                "drop column orders.total (numeric(10,2))",
                "drop table legacy",
            ]
        );
    }

    #[test]
    fn foreign_keys_come_after_the_tables_they_name() {
        let tables = json!([
            {"name": "lines", "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "order_id", "type": "bigint", "references": {"table": "orders", "column": "id"}},
            ], "primaryKey": ["id"]},
            {"name": "orders", "columns": [{"name": "id", "type": "bigint"}], "primaryKey": ["id"]},
        ]);
        let p = plan("shop", &desired(tables), &Schema::default());
        let summaries: Vec<_> = p.steps.iter().map(|s| s.summary.as_str()).collect();
        assert_eq!(summaries.len(), 4, "{p}");
        assert_eq!(summaries[3], "add foreign key lines.order_id -> orders.id");
    }

    #[test]
    fn defaults_and_nullability_changes_are_planned() {
        let mut observed = desired(orders());
        observed.exists = true;
        let mut tables = orders();
        tables[0]["columns"][1]["default"] = json!("'pending'");
        tables[0]["columns"][2]["nullable"] = json!(false);
        let p = plan("shop", &desired(tables), &observed);
        assert_eq!(
            p.to_string(),
            "~ set default of orders.status: 'new' -> 'pending'\n~ require values in orders.total"
        );
    }

    #[test]
    fn a_removed_or_changed_primary_key_is_dropped_before_its_columns_allow_null() {
        let mut observed = desired(orders());
        observed.exists = true;
        observed.tables.get_mut("orders").unwrap().primary_key_name = Some("orders_pkey".into());
        let mut tables = orders();
        tables[0]["primaryKey"] = json!([]);
        let p = plan("shop", &desired(tables), &observed);
        assert_eq!(
            p.to_string(),
            "~ drop primary key of orders (id)\n~ allow null in orders.id"
        );
        let mut tables = orders();
        tables[0]["primaryKey"] = json!(["status"]);
        let p = plan("shop", &desired(tables), &observed);
        assert_eq!(
            p.to_string(),
            "~ drop primary key of orders (id)\n~ allow null in orders.id\n+ add primary key of orders (status)"
        );
    }

    #[test]
    fn an_undeclared_index_is_reported_not_dropped() {
        let mut observed = desired(orders());
        observed.exists = true;
        observed.tables.get_mut("orders").unwrap().primary_key_name = Some("orders_pkey".into());
        let table = observed.tables.get_mut("orders").unwrap();
        table.indexes.insert(
            "by_hand".into(),
            super::super::model::Index {
                columns: vec!["total".into()],
                unique: false,
            },
        );
        table.unmanaged_indexes.insert("orders_lower_status".into());
        let d = desired(orders());
        assert!(plan("shop", &d, &observed).is_empty());
        assert_eq!(
            unmanaged_indexes(&d, &observed),
            ["orders.by_hand", "orders.orders_lower_status"]
        );
        // A declared index whose columns changed is still replaced.
        let mut tables = orders();
        tables[0]["indexes"][0]["columns"] = json!(["total"]);
        let p = plan("shop", &desired(tables), &observed);
        assert_eq!(
            p.to_string(),
            "~ drop index orders_status on orders\n+ create index orders_status on orders (total)"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A type and a default that fits it.
        fn column() -> impl Strategy<Value = (String, Option<String>, bool)> {
            let typed = prop_oneof![
                Just(("bigint", Some("0"))),
                Just(("int", None)),
                Just(("text", Some("'x'"))),
                Just(("varchar(10)", None)),
                Just(("boolean", Some("true"))),
                Just(("numeric(8,2)", Some("1.25"))),
                Just(("timestamptz", Some("now()"))),
                Just(("uuid", None)),
            ];
            (typed, any::<bool>()).prop_map(|((ty, default), nullable)| {
                (ty.to_owned(), default.map(str::to_owned), nullable)
            })
        }

        fn tables() -> impl Strategy<Value = serde_json::Value> {
            proptest::collection::vec(
                (proptest::collection::vec(column(), 1..5), any::<bool>()),
                1..4,
            )
            .prop_map(|tables| {
                let tables: Vec<_> = tables
                    .into_iter()
                    .enumerate()
                    .map(|(t, (columns, keyed))| {
                        let columns: Vec<_> = columns
                            .into_iter()
                            .enumerate()
                            .map(|(c, (ty, default, nullable))| {
                                json!({"name": format!("c{c}"), "type": ty,
                                       "default": default, "nullable": nullable})
                            })
                            .collect();
                        let key: Vec<&str> = if keyed { vec!["c0"] } else { vec![] };
                        json!({"name": format!("t{t}"), "columns": columns, "primaryKey": key})
                    })
                    .collect();
                json!(tables)
            })
        }

        proptest! {
            #[test]
            fn a_schema_matching_the_catalog_plans_nothing_and_a_new_one_loses_nothing(
                tables in tables()
            ) {
                let d = desired(tables.clone());
                let created = plan("s", &d, &Schema::default());
                prop_assert!(!created.is_destructive(), "{created}");
                prop_assert_eq!(created.steps[0].summary.as_str(), "create schema s");
                let mut observed = d.clone();
                for table in observed.tables.values_mut() {
                    if !table.primary_key.is_empty() {
                        table.primary_key_name = Some("k".into());
                    }
                }
                prop_assert!(plan("s", &d, &observed).is_empty());

                // Removing a column or a table from the declaration loses data.
                let mut fewer = tables.clone();
                let t0 = fewer[0]["columns"].as_array_mut().expect("columns");
                if t0.len() > 1 {
                    t0.pop();
                } else {
                    fewer.as_array_mut().expect("tables").remove(0);
                }
                let shrunk = plan("s", &desired(fewer), &observed);
                prop_assert!(shrunk.is_destructive(), "{shrunk}");
            }
        }
    }
}
