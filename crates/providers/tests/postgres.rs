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
}
