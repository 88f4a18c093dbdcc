//! The PostgreSQL provider against a real PostgreSQL 15 that each test starts on loopback
//! (`rorqual_testkit::postgres::LocalPostgres`), stopped when the test ends.

use rorqual_testkit::postgres::LocalPostgres;

/// Connects to `pg` as its superuser over TCP (SCRAM), to check what the provider did.
async fn superuser(pg: &LocalPostgres, dbname: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host(pg.host())
        .port(pg.port())
        .user(pg.user())
        .password(pg.password())
        .dbname(dbname)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {dbname}: {e}\n{}", pg.log_tail()));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn the_harness_starts_a_postgres_15_that_checks_passwords() {
    let Some(pg) = LocalPostgres::start_or_skip()
        .await
        .expect("postgres starts")
    else {
        return;
    };
    let client = superuser(&pg, "postgres").await;
    let row = client
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap();
    let version: String = row.get(0);
    assert!(version.starts_with("15"), "{version}");
    let wrong = tokio_postgres::Config::new()
        .host(pg.host())
        .port(pg.port())
        .user(pg.user())
        .password("not-the-password")
        .connect(tokio_postgres::NoTls)
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");

    // Stopping ends the server and its children: the port refuses and the process is gone.
    let (port, pid) = (pg.port(), pg.pid().expect("running"));
    let provider = PostgresProvider::database(endpoint(&pg));
    drop(client);
    pg.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postgres {pid} still runs"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "port {port} still answers"
    );
    // A server that is down is a retryable error, not a permanent one.
    let params = json!({});
    let err = provider
        .connect(&ExternalRef::new("db", "db", &params))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

use std::sync::Arc;

use rorqual_core::engine::MemoryStateStore;
use rorqual_providers::conformance::check;
use rorqual_providers::postgres::{Endpoint, PostgresProvider, SharedSecrets};
use rorqual_providers::provider::{ExternalRef, ProviderError};
use rorqual_providers::{ManagedReconciler, MemorySink, Provider, ResourceSpec, Secret};
use rorqual_runtime::{Context, Reconciler};
use serde_json::{Value, json};

/// The provider's view of `pg`: its superuser over TCP.
fn endpoint(pg: &LocalPostgres) -> Endpoint {
    Endpoint::new(pg.host(), pg.port(), pg.user(), Secret::new(pg.password()))
}

/// Logs in as `user` with `password` over TCP; the error text when refused.
async fn login(pg: &LocalPostgres, user: &str, password: &str) -> Result<(), String> {
    let connected = tokio_postgres::Config::new()
        .host(pg.host())
        .port(pg.port())
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await;
    match connected {
        Ok((client, connection)) => {
            drop(client);
            let _ = connection.await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn start() -> Option<LocalPostgres> {
    LocalPostgres::start_or_skip()
        .await
        .expect("postgres starts")
}

#[tokio::test]
async fn every_kind_passes_the_provider_conformance_checks() {
    let Some(pg) = start().await else { return };
    let secrets = SharedSecrets::new();
    secrets.insert("app", "password", "conformance-pw-1");
    let db = PostgresProvider::database(endpoint(&pg));
    check(
        &db,
        "conf_db",
        &json!({"connectionLimit": 5}),
        &json!({"connectionLimit": 10}),
    )
    .await
    .unwrap();
    let role = PostgresProvider::role(endpoint(&pg), Arc::new(secrets.clone()));
    check(
        &role,
        "conf_role",
        &json!({"passwordSecretRef": {"name": "app", "key": "password"}}),
        &json!({"passwordSecretRef": {"name": "app", "key": "password"}, "createDb": true, "connectionLimit": 3}),
    )
    .await
    .unwrap();

    // A grant needs its role and database.
    let admin = superuser(&pg, "postgres").await;
    // Separate statements: CREATE DATABASE cannot run in a multi-statement transaction.
    for sql in ["CREATE ROLE grantee LOGIN", "CREATE DATABASE granted"] {
        admin.batch_execute(sql).await.unwrap();
    }
    let grant = PostgresProvider::grant(endpoint(&pg));
    check(
        &grant,
        "conf_grant",
        &json!({"role": "grantee", "database": "granted", "privileges": ["CONNECT"]}),
        &json!({"role": "grantee", "database": "granted", "privileges": ["CONNECT", "TEMP"]}),
    )
    .await
    .unwrap();

    let schemas = PostgresProvider::table_schema(endpoint(&pg));
    let table = |columns: Value| {
        json!({"database": "granted", "allowDataLoss": true, "tables": [
            {"name": "t", "columns": columns, "primaryKey": ["id"]}
        ]})
    };
    check(
        &schemas,
        "conf_schema",
        &table(json!([{"name": "id", "type": "int"}])),
        &table(json!([{"name": "id", "type": "int"}, {"name": "note", "type": "text"}])),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_role_logs_in_with_its_secret_and_a_rotated_secret_is_applied() {
    let Some(pg) = start().await else { return };
    let secrets = SharedSecrets::new();
    secrets.insert("orders-db", "password", "first-Pa55word");
    // Every statement goes to the server's log: the passwords must not.
    let admin = superuser(&pg, "postgres").await;
    admin
        .batch_execute("ALTER SYSTEM SET log_statement = 'all'")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let provider = PostgresProvider::role(endpoint(&pg), Arc::new(secrets.clone()));
    let params = json!({"passwordSecretRef": {"name": "orders-db", "key": "password"}});
    let r = ExternalRef::new("orders", "orders", &params);
    let client = provider.connect(&r).await.unwrap();
    let created = client.create(&r).await.unwrap();
    let details = &created.connection_details;
    let get = |k: &str| details.get(k).map(|s| s.expose().to_owned());
    assert_eq!(get("host").as_deref(), Some("127.0.0.1"));
    assert_eq!(get("port"), Some(pg.port().to_string()));
    assert_eq!(get("user").as_deref(), Some("orders"));
    assert_eq!(get("password").as_deref(), Some("first-Pa55word"));
    login(&pg, "orders", "first-Pa55word").await.unwrap();
    assert!(login(&pg, "orders", "wrong").await.is_err());

    // The password is stored as a SCRAM verifier, never as the clear text.
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
    assert!(!stored.contains("first-Pa55word"));

    assert!(client.observe(&r).await.unwrap().up_to_date);
    secrets.insert("orders-db", "password", "second-Pa55word");
    let observed = client.observe(&r).await.unwrap();
    assert!(!observed.up_to_date);
    assert_eq!(
        observed.diff.as_deref(),
        Some("password: differs from the secret")
    );
    let shown = format!("{observed:?}");
    assert!(
        !shown.contains("first-Pa55word") && !shown.contains("second-Pa55word"),
        "{shown}"
    );
    client.update(&r).await.unwrap();
    login(&pg, "orders", "second-Pa55word").await.unwrap();
    assert!(login(&pg, "orders", "first-Pa55word").await.is_err());
    assert!(client.observe(&r).await.unwrap().up_to_date);

    // A reference to a secret that does not exist (yet) is a retryable error naming it.
    let missing = json!({"passwordSecretRef": {"name": "nope", "key": "password"}});
    let err = client
        .create(&ExternalRef::new("other", "other", &missing))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("`nope`"), "{err}");
    client.delete(&r).await.unwrap();
    assert!(login(&pg, "orders", "second-Pa55word").await.is_err());

    let log = pg.log();
    assert!(
        log.contains("ALTER ROLE \"orders\""),
        "statements are logged:\n{log}"
    );
    for password in ["first-Pa55word", "second-Pa55word"] {
        assert!(
            !log.contains(password),
            "{password} in the server log:\n{log}"
        );
    }
}

const SHOP_V1: &str = r#"
database: shop
tables:
  - name: customers
    comment: who orders
    columns:
      - {name: id, type: bigint}
      - {name: email, type: varchar(100), nullable: false}
    primaryKey: [id]
    indexes:
      - {name: customers_email, columns: [email], unique: true}
  - name: orders
    columns:
      - {name: id, type: bigint}
      - {name: customer_id, type: bigint, references: {table: customers, column: id}}
      - {name: status, type: varchar(20), nullable: false, default: "'new'", comment: lifecycle}
      - {name: total, type: "numeric(10,2)", default: "0"}
      - {name: paid, type: boolean, default: "false"}
      - {name: created_at, type: timestamptz, nullable: false, default: now()}
      - {name: attempts, type: int, default: "-1"}
    primaryKey: [id]
    indexes:
      - {name: orders_status, columns: [status, created_at]}
"#;

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).expect("yaml")
}

#[tokio::test]
async fn a_table_schema_is_created_migrated_additively_and_refuses_data_loss() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let v1 = yaml(SHOP_V1);
    provider.validate(&v1).unwrap();
    let r = ExternalRef::new("shop", "shop", &v1);
    let client = provider.connect(&r).await.unwrap();
    assert!(!client.observe(&r).await.unwrap().exists);
    client.create(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let observed = client.observe(&r).await.unwrap();
    assert!(
        observed.up_to_date,
        "the catalog reads back as declared: {:?}",
        observed.diff
    );

    let shop = superuser(&pg, "shop").await;
    shop.batch_execute(
        "INSERT INTO shop.customers (id, email) VALUES (1, 'a@example.org');
         INSERT INTO shop.orders (id, customer_id) VALUES (10, 1);",
    )
    .await
    .unwrap();
    let row = shop
        .query_one(
            "SELECT status, paid, attempts FROM shop.orders WHERE id = 10",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "new");
    assert!(!row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i32>(2), -1);
    let fk = shop
        .batch_execute("INSERT INTO shop.orders (id, customer_id) VALUES (11, 99)")
        .await
        .unwrap_err();
    assert!(
        fk.to_string().contains("foreign key") || format!("{fk:?}").contains("23503"),
        "{fk:?}"
    );

    // Additive: a new column, a widened type, a new table; data stays.
    let v2 = yaml(
        &(SHOP_V1
            .replace("type: varchar(20)", "type: varchar(40)")
            .replace(
                "      - {name: attempts, type: int, default: \"-1\"}\n",
                "      - {name: attempts, type: bigint, default: \"-1\"}\n      - {name: note, type: text, comment: free text}\n",
            )
            + "  - name: audit\n    columns: [{name: at, type: timestamptz}]\n"),
    );
    let r2 = ExternalRef::new("shop", "shop", &v2);
    let outdated = client.observe(&r2).await.unwrap();
    assert!(!outdated.up_to_date);
    assert_eq!(
        outdated.diff.as_deref(),
        Some(
            "+ create table audit (at timestamp with time zone)\n\
             ~ widen column orders.status: character varying(20) -> character varying(40)\n\
             ~ widen column orders.attempts: integer -> bigint\n\
             + add column orders.note text\n\
             + comment on column orders.note: 'free text'"
        )
    );
    client.update(&r2).await.unwrap();
    assert!(client.observe(&r2).await.unwrap().up_to_date);
    let count: i64 = shop
        .query_one("SELECT count(*) FROM shop.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the orders survive an additive migration");

    // Destructive: dropping a column and narrowing a type is refused with the plan.
    let v3_text = SHOP_V1.replace("type: varchar(20)", "type: varchar(5)");
    let v3 = yaml(&v3_text);
    let r3 = ExternalRef::new("shop", "shop", &v3);
    let refused = client.observe(&r3).await.unwrap();
    let diff = refused.diff.unwrap_or_default();
    assert!(diff.contains("allowDataLoss is not set"), "{diff}");
    assert!(diff.contains("- drop column orders.note (text)"), "{diff}");
    assert!(diff.contains("- drop table audit"), "{diff}");
    let err = client.update(&r3).await.unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    assert!(
        err.to_string().contains(
            "- convert column orders.status: character varying(40) -> character varying(5)"
        ),
        "{err}"
    );
    let still: i64 = shop
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'shop' AND table_name = 'orders' AND column_name = 'note'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, 1, "nothing ran");
    let deleted = client.delete(&r3).await.unwrap_err();
    assert!(deleted.to_string().contains("allowDataLoss"), "{deleted}");

    // With allowDataLoss the same plan runs.
    let v4 = yaml(&format!("{v3_text}allowDataLoss: true\n"));
    let r4 = ExternalRef::new("shop", "shop", &v4);
    client.update(&r4).await.unwrap();
    assert!(client.observe(&r4).await.unwrap().up_to_date);
    let status: String = shop
        .query_one("SELECT status FROM shop.orders WHERE id = 10", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "new");
    client.delete(&r4).await.unwrap();
    assert!(!client.observe(&r4).await.unwrap().exists);
}

#[tokio::test]
async fn a_failing_step_rolls_the_whole_migration_back() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let v1 = yaml(
        "database: shop\ntables:\n- name: t\n  columns: [{name: id, type: int}, {name: n, type: int}]\n",
    );
    let r = ExternalRef::new("s", "s", &v1);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let shop = superuser(&pg, "shop").await;
    shop.batch_execute("INSERT INTO s.t (id) VALUES (1)")
        .await
        .unwrap();
    // Adds a table (fine) and requires values in `n`, which holds a NULL: the step fails.
    let v2 = yaml(
        "database: shop\ntables:\n- name: t\n  columns: [{name: id, type: int}, {name: n, type: int, nullable: false}]\n- name: u\n  columns: [{name: id, type: int}]\n",
    );
    let r2 = ExternalRef::new("s", "s", &v2);
    let err = client.update(&r2).await.unwrap_err();
    assert!(
        err.to_string().contains("+ create table u"),
        "the error shows the plan: {err}"
    );
    let tables: i64 = shop
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 's'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 1,
        "the new table was rolled back with the failed step"
    );
}

#[tokio::test]
async fn an_invalid_schema_is_rejected_before_anything_runs() {
    let Some(pg) = start().await else { return };
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let bad = yaml(
        "database: postgres\ntables:\n- name: t\n  columns:\n  - {name: id, type: int}\n  - {name: id, type: integr, default: \"'x'\"}\n",
    );
    let problems = provider.validate(&bad).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["tables[0].columns[1].name", "tables[0].columns[1].type"]
    );
    let r = ExternalRef::new("bad", "bad", &bad);
    let err = provider.connect(&r).await.unwrap_err();
    assert!(matches!(err, ProviderError::Invalid(_)), "{err:?}");
    let admin = superuser(&pg, "postgres").await;
    let schemas: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0);
}

#[tokio::test]
async fn the_reconciler_makes_a_database_and_role_ready_and_publishes_the_role_details() {
    let Some(pg) = start().await else { return };
    let secrets = SharedSecrets::new();
    secrets.insert("app", "password", "reconciled-pw-42");
    let sink = Arc::new(MemorySink::new());
    let roles = ManagedReconciler::builder(
        Arc::new(PostgresProvider::role(endpoint(&pg), Arc::new(secrets))),
        Arc::new(MemoryStateStore::new()),
    )
    .sink(sink.clone())
    .build()
    .unwrap();
    let spec = ResourceSpec::load(
        "name: app\nforProvider: {passwordSecretRef: {name: app, key: password}}\nwriteConnectionSecretTo: app-db\n",
    )
    .unwrap();
    roles.resources().apply(spec).await.unwrap();
    let databases = ManagedReconciler::builder(
        Arc::new(PostgresProvider::database(endpoint(&pg))),
        Arc::new(MemoryStateStore::new()),
    )
    .build()
    .unwrap();
    databases
        .resources()
        .apply(ResourceSpec::new("appdb", json!({"owner": "app"})))
        .await
        .unwrap();
    let ctx = Context::new("postgres", 1);
    for _ in 0..2 {
        roles.reconcile("app".into(), ctx.clone()).await.unwrap();
        databases
            .reconcile("appdb".into(), ctx.clone())
            .await
            .unwrap();
    }
    for (reconciler, name) in [(&roles, "app"), (&databases, "appdb")] {
        let status = reconciler
            .resources()
            .get(name)
            .await
            .unwrap()
            .unwrap()
            .status;
        assert!(status.is_healthy(), "{name}: {status:?}");
    }
    let published = sink.get("app-db").expect("published");
    assert_eq!(
        published.get("password").map(Secret::expose),
        Some("reconciled-pw-42")
    );
    let admin = superuser(&pg, "postgres").await;
    let owner: String = admin
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'appdb'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "app");
    login(&pg, "app", "reconciled-pw-42").await.unwrap();
}

#[tokio::test]
async fn the_reconciler_reports_a_refused_destructive_plan_and_applies_it_once_allowed() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let schemas = ManagedReconciler::builder(
        Arc::new(PostgresProvider::table_schema(endpoint(&pg))),
        Arc::new(MemoryStateStore::new()),
    )
    .build()
    .unwrap();
    let spec = |extra: &str| {
        ResourceSpec::load(&format!(
            "name: shop\nforProvider:\n  database: shop\n{extra}  tables:\n  - name: t\n    columns: [{{name: id, type: bigint}}]\n"
        ))
        .unwrap()
    };
    let with_note = ResourceSpec::load(
        "name: shop\nforProvider:\n  database: shop\n  tables:\n  - name: t\n    columns: [{name: id, type: bigint}, {name: note, type: text}]\n",
    )
    .unwrap();
    let ctx = Context::new("schemas", 1);
    schemas.resources().apply(with_note).await.unwrap();
    for _ in 0..2 {
        schemas.reconcile("shop".into(), ctx.clone()).await.unwrap();
    }
    let status = schemas
        .resources()
        .get("shop")
        .await
        .unwrap()
        .unwrap()
        .status;
    assert!(status.is_healthy(), "{status:?}");

    // Dropping `note` is refused: Synced false with the plan; the column stays.
    schemas.resources().apply(spec("")).await.unwrap();
    let mut refused = None;
    for _ in 0..3 {
        if let Err(e) = schemas.reconcile("shop".into(), ctx.clone()).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("the destructive update is refused");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("- drop column t.note (text)"),
        "{err}"
    );
    let status = schemas
        .resources()
        .get("shop")
        .await
        .unwrap()
        .unwrap()
        .status;
    let synced = status
        .condition(rorqual_providers::ConditionType::Synced)
        .expect("synced");
    assert_eq!(synced.status, rorqual_providers::ConditionStatus::False);
    assert!(synced.message.contains("allowDataLoss"), "{synced:?}");
    let shop = superuser(&pg, "shop").await;
    let note: i64 = shop
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'shop' AND column_name = 'note'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, 1, "nothing ran");

    // Allowed: the next reconciles apply it and the resource is healthy again.
    schemas
        .resources()
        .apply(spec("  allowDataLoss: true\n"))
        .await
        .unwrap();
    for _ in 0..3 {
        let _ = schemas.reconcile("shop".into(), ctx.clone()).await;
    }
    let status = schemas
        .resources()
        .get("shop")
        .await
        .unwrap()
        .unwrap()
        .status;
    assert!(status.is_healthy(), "{status:?}");
    let note: i64 = shop
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'shop' AND column_name = 'note'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, 0, "the column was dropped once allowed");
}

/// Every supported type and default form reads back from the catalog as declared: a false
/// "not up to date" would make endless updates.
#[tokio::test]
async fn every_type_and_default_form_reads_back_up_to_date() {
    let Some(pg) = start().await else { return };
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let columns = [
        ("a", "smallint", Some("7")),
        ("b", "int4", Some("-3")),
        ("c", "int8", Some("'42'")),
        ("d", "bool", Some("TRUE")),
        ("e", "boolean", Some("'f'")),
        ("f", "text", Some("'it''s'")),
        ("g", "varchar(12)", Some("'x'::varchar")),
        ("h", "character varying", None),
        ("i", "decimal(8,3)", Some("1.5")),
        ("j", "numeric", Some("0")),
        ("k", "float4", Some("2.5")),
        ("l", "double precision", Some("-0.25")),
        ("m", "date", Some("CURRENT_DATE")),
        ("n", "timestamp", Some("LOCALTIMESTAMP")),
        ("o", "timestamptz", Some("CURRENT_TIMESTAMP")),
        ("p", "uuid", Some("gen_random_uuid()")),
        ("q", "json", Some("'{}'")),
        ("r", "jsonb", Some("'[1, 2]'")),
        ("s", "bytea", None),
        ("t", "text", Some("CURRENT_USER")),
        ("u", "timestamptz", Some("now()")),
        ("v", "int", Some("null")),
    ];
    let columns: Vec<Value> = columns
        .iter()
        .map(|(name, ty, default)| json!({"name": name, "type": ty, "default": default}))
        .collect();
    let params = json!({"database": "postgres", "tables": [
        {"name": "every", "columns": columns, "primaryKey": ["a", "b"],
         "indexes": [{"name": "every_f_g", "columns": ["g", "f"], "unique": true}],
         "comment": "all types"}
    ]});
    provider.validate(&params).unwrap();
    let r = ExternalRef::new("kinds", "kinds", &params);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let observed = client.observe(&r).await.unwrap();
    assert!(observed.up_to_date, "{:?}", observed.diff);

    // And a changed default is seen.
    let mut changed = params.clone();
    changed["tables"][0]["columns"][10]["default"] = json!("3.5");
    let diff = client
        .observe(&ExternalRef::new("kinds", "kinds", &changed))
        .await
        .unwrap()
        .diff;
    assert_eq!(
        diff.as_deref(),
        Some("~ set default of every.k: '2.5' -> '3.5'")
    );
}

#[tokio::test]
async fn a_primary_key_can_be_removed_and_changed() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let keyed = |key: &str| {
        yaml(&format!(
            "database: shop\ntables:\n- name: t\n  columns: [{{name: id, type: int}}, {{name: code, type: text, nullable: false}}]\n  primaryKey: [{key}]\n"
        ))
    };
    let v1 = keyed("id");
    let r = ExternalRef::new("k", "k", &v1);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    // Another key: the old one goes before `id` may hold NULL.
    let v2 = keyed("code");
    let r2 = ExternalRef::new("k", "k", &v2);
    client.update(&r2).await.unwrap();
    let o = client.observe(&r2).await.unwrap();
    assert!(o.up_to_date, "{:?}", o.diff);
    // No key at all.
    let v3 = yaml(
        "database: shop\ntables:\n- name: t\n  columns: [{name: id, type: int}, {name: code, type: text}]\n",
    );
    let r3 = ExternalRef::new("k", "k", &v3);
    client.update(&r3).await.unwrap();
    let o = client.observe(&r3).await.unwrap();
    assert!(o.up_to_date, "{:?}", o.diff);
}

#[tokio::test]
async fn resources_created_before_what_they_need_fail_retryably_then_succeed() {
    let Some(pg) = start().await else { return };
    let secrets = SharedSecrets::new();
    // A TableSchema before its Database: the database does not exist yet (3D000).
    let schemas = PostgresProvider::table_schema(endpoint(&pg));
    let spec = yaml("database: later\ntables:\n- name: t\n  columns: [{name: id, type: int}]\n");
    let r = ExternalRef::new("s", "s", &spec);
    let err = schemas.connect(&r).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // A Grant before its Role and Database (42704, 3D000).
    let grants = PostgresProvider::grant(endpoint(&pg));
    let g = json!({"role": "late_role", "database": "postgres", "privileges": ["CONNECT"]});
    let gr = ExternalRef::new("g", "g", &g);
    let grant_client = grants.connect(&gr).await.unwrap();
    let err = grant_client.create(&gr).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let gdb = json!({"role": "postgres", "database": "later", "privileges": ["CONNECT"]});
    let gdr = ExternalRef::new("g2", "g2", &gdb);
    let err = grant_client.create(&gdr).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // A Database whose owner does not exist yet (42704).
    let databases = PostgresProvider::database(endpoint(&pg));
    let d = json!({"owner": "late_role"});
    let dr = ExternalRef::new("later", "later", &d);
    let db_client = databases.connect(&dr).await.unwrap();
    let err = db_client.create(&dr).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // A Role whose password secret does not exist yet.
    let roles = PostgresProvider::role(endpoint(&pg), Arc::new(secrets.clone()));
    let p = json!({"passwordSecretRef": {"name": "late", "key": "password"}});
    let rr = ExternalRef::new("late_role", "late_role", &p);
    let role_client = roles.connect(&rr).await.unwrap();
    let err = role_client.create(&rr).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("`late`"), "{err}");
    // Once each dependency exists, the same calls succeed.
    secrets.insert("late", "password", "late-Pa55word");
    role_client.create(&rr).await.unwrap();
    db_client.create(&dr).await.unwrap();
    grant_client.create(&gr).await.unwrap();
    grant_client.create(&gdr).await.unwrap();
    let client = schemas.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    assert!(client.observe(&r).await.unwrap().up_to_date);
}

#[tokio::test]
async fn roles_are_managed_by_an_admin_that_is_not_a_superuser() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin
        .batch_execute("CREATE ROLE manager LOGIN CREATEROLE CREATEDB PASSWORD 'manager-Pa55word'")
        .await
        .unwrap();
    let secrets = SharedSecrets::new();
    secrets.insert("app", "password", "app-Pa55word-1");
    let manager = Endpoint::new(
        pg.host(),
        pg.port(),
        "manager",
        Secret::new("manager-Pa55word"),
    );
    let roles = PostgresProvider::role(manager, Arc::new(secrets.clone()));
    let p = json!({"passwordSecretRef": {"name": "app", "key": "password"}, "connectionLimit": 4});
    let r = ExternalRef::new("app", "app", &p);
    let client = roles.connect(&r).await.unwrap();
    assert!(!client.observe(&r).await.unwrap().exists);
    client.create(&r).await.unwrap();
    let o = client.observe(&r).await.unwrap();
    assert!(o.up_to_date, "{:?}", o.diff);
    login(&pg, "app", "app-Pa55word-1").await.unwrap();
    // A rotated secret is still seen (by logging in) and applied.
    secrets.insert("app", "password", "app-Pa55word-2");
    let o = client.observe(&r).await.unwrap();
    assert!(!o.up_to_date, "a rotated password is seen");
    client.update(&r).await.unwrap();
    assert!(client.observe(&r).await.unwrap().up_to_date);
    login(&pg, "app", "app-Pa55word-2").await.unwrap();
}

#[tokio::test]
async fn backslashes_mean_the_same_whatever_standard_conforming_strings_says() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE old").await.unwrap();
    admin
        .batch_execute("ALTER DATABASE old SET standard_conforming_strings = off")
        .await
        .unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let text = r"C:\temp\new 'x'";
    let params = json!({"database": "old", "tables": [
        {"name": "t", "comment": text, "columns": [
            {"name": "s", "type": "text", "default": format!("'{}'", text.replace('\'', "''"))},
        ]}
    ]});
    provider.validate(&params).unwrap();
    let r = ExternalRef::new("s", "s", &params);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let observed = client.observe(&r).await.unwrap();
    assert!(observed.up_to_date, "{:?}", observed.diff);
    let old = superuser(&pg, "old").await;
    let comment: String = old
        .query_one("SELECT obj_description('s.t'::regclass, 'pg_class')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment, text);
    old.batch_execute("INSERT INTO s.t DEFAULT VALUES")
        .await
        .unwrap();
    let stored: String = old
        .query_one("SELECT s FROM s.t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, text);
}

#[tokio::test]
async fn a_database_name_longer_than_63_bytes_is_refused_not_cut() {
    let Some(pg) = start().await else { return };
    let databases = PostgresProvider::database(endpoint(&pg));
    let long = "d".repeat(64);
    let params = json!({});
    let r = ExternalRef::new("long", &long, &params);
    let client = databases.connect(&r).await.unwrap();
    for err in [
        client.create(&r).await.unwrap_err(),
        client.observe(&r).await.unwrap_err(),
    ] {
        assert!(matches!(err, ProviderError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("externalName"), "{err}");
    }
    let admin = superuser(&pg, "postgres").await;
    let cut: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'ddd%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 0, "no database with the cut name");
}

#[tokio::test]
async fn system_and_admin_objects_are_never_adopted() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin
        .batch_execute("CREATE ROLE boss SUPERUSER LOGIN PASSWORD 'boss-Pa55word'")
        .await
        .unwrap();
    let secrets = SharedSecrets::new();
    let roles = PostgresProvider::role(endpoint(&pg), Arc::new(secrets));
    let params = json!({"login": false});
    for name in [pg.user(), "boss", "pg_monitor"] {
        let r = ExternalRef::new("r", name, &params);
        let client = roles.connect(&r).await.unwrap();
        for err in [
            client.observe(&r).await.unwrap_err(),
            client.update(&r).await.unwrap_err(),
            client.delete(&r).await.unwrap_err(),
        ] {
            assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
            assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
        }
    }
    login(&pg, "boss", "boss-Pa55word").await.unwrap();
    let databases = PostgresProvider::database(endpoint(&pg));
    let none = json!({});
    for name in ["postgres", "template0", "template1"] {
        let r = ExternalRef::new("d", name, &none);
        let client = databases.connect(&r).await.unwrap();
        for err in [
            client.observe(&r).await.unwrap_err(),
            client.delete(&r).await.unwrap_err(),
        ] {
            assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
            assert!(err.to_string().contains("system database"), "{err}");
        }
    }
    let databases: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname IN ('postgres', 'template0', 'template1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(databases, 3);
    let schemas = PostgresProvider::table_schema(endpoint(&pg));
    let spec = yaml("database: postgres\nallowDataLoss: true\ntables: []\n");
    for name in ["public", "information_schema", "pg_catalog"] {
        let r = ExternalRef::new("s", name, &spec);
        let client = schemas.connect(&r).await.unwrap();
        for err in [
            client.observe(&r).await.unwrap_err(),
            client.create(&r).await.unwrap_err(),
            client.delete(&r).await.unwrap_err(),
        ] {
            assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
            assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
        }
    }
    let public: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(public, 1);
}

#[tokio::test]
async fn deleting_a_schema_without_allow_data_loss_drops_nothing_it_holds() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let empty = yaml("database: shop\ntables: []\n");
    let r = ExternalRef::new("s", "s", &empty);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    // Something that is not a declared table: the server's RESTRICT check sees it.
    let shop = superuser(&pg, "shop").await;
    shop.batch_execute("CREATE SEQUENCE s.counter")
        .await
        .unwrap();
    let err = client.delete(&r).await.unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("allowDataLoss"), "{err}");
    let kept: i64 = shop
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 's' AND c.relname = 'counter'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the sequence is kept");
    // With allowDataLoss the schema goes with what it holds; an empty one goes either way.
    let allowed = yaml("database: shop\nallowDataLoss: true\ntables: []\n");
    let ra = ExternalRef::new("s", "s", &allowed);
    client.delete(&ra).await.unwrap();
    assert!(!client.observe(&ra).await.unwrap().exists);
    client.create(&r).await.unwrap();
    client.delete(&r).await.unwrap();
    assert!(!client.observe(&r).await.unwrap().exists);
}

#[tokio::test]
async fn indexes_that_are_not_declared_are_reported_and_kept() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let spec = yaml(
        "database: shop\ntables:\n- name: t\n  columns: [{name: id, type: int}, {name: n, type: int}, {name: c, type: text}]\n  primaryKey: [id]\n  indexes: [{name: t_c, columns: [c]}]\n",
    );
    let r = ExternalRef::new("s", "s", &spec);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let shop = superuser(&pg, "shop").await;
    shop.batch_execute(
        "CREATE INDEX by_hand ON s.t (n);
         ALTER TABLE s.t ADD CONSTRAINT t_n_key UNIQUE (n);
         CREATE INDEX t_lower ON s.t (lower(c));
         CREATE INDEX t_partial ON s.t (c) WHERE n > 0;",
    )
    .await
    .unwrap();
    let o = client.observe(&r).await.unwrap();
    assert!(o.up_to_date, "{:?}", o.diff);
    let state = o.at_provider.expect("atProvider");
    assert_eq!(
        state["unmanagedIndexes"],
        json!(["t.by_hand", "t.t_lower", "t.t_n_key", "t.t_partial"])
    );
    client.update(&r).await.unwrap();
    let kept: i64 = shop
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 's'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 6, "primary key, t_c and the four undeclared indexes");
}

#[tokio::test]
async fn defaults_spelled_differently_from_the_catalog_read_back_up_to_date() {
    let Some(pg) = start().await else { return };
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let params = json!({"database": "postgres", "tables": [
        {"name": "spelled", "comment": "", "columns": [
            {"name": "i", "type": "int", "default": "007"},
            {"name": "big", "type": "bigint", "default": "'0042'"},
            {"name": "f", "type": "float8", "default": "1.50"},
            {"name": "r", "type": "real", "default": "02.50"},
            {"name": "n", "type": "numeric(10,2)", "default": "0010.5"},
            {"name": "u", "type": "uuid", "default": "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"},
            {"name": "b", "type": "bool", "default": "'on'"},
            {"name": "s", "type": "text", "default": "'a\\b'", "comment": ""},
        ]}
    ]});
    provider.validate(&params).unwrap();
    let r = ExternalRef::new("spelled", "spelled", &params);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let observed = client.observe(&r).await.unwrap();
    assert!(observed.up_to_date, "{:?}", observed.diff);
}

#[tokio::test]
async fn a_unique_index_over_duplicate_rows_is_a_permanent_error() {
    let Some(pg) = start().await else { return };
    let admin = superuser(&pg, "postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let provider = PostgresProvider::table_schema(endpoint(&pg));
    let v1 = yaml("database: shop\ntables:\n- name: t\n  columns: [{name: n, type: int}]\n");
    let r = ExternalRef::new("u", "u", &v1);
    let client = provider.connect(&r).await.unwrap();
    client.create(&r).await.unwrap();
    let shop = superuser(&pg, "shop").await;
    shop.batch_execute("INSERT INTO u.t VALUES (1), (1)")
        .await
        .unwrap();
    let v2 = yaml(
        "database: shop\ntables:\n- name: t\n  columns: [{name: n, type: int}]\n  indexes: [{name: t_n, columns: [n], unique: true}]\n",
    );
    let r2 = ExternalRef::new("u", "u", &v2);
    let err = client.update(&r2).await.unwrap_err();
    assert!(err.to_string().contains("23505"), "{err}");
    assert!(
        !err.is_retryable(),
        "duplicate rows stay until changed: {err}"
    );
}
