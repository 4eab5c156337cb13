//! The PostgreSQL schema (store/postgres_schema.sql) against a real PostgreSQL 15: it applies,
//! it has the SQLite catalogue's tables, columns and indexes, its buckets are core's, and every
//! write marks in `dirty_buckets` exactly the buckets the same write marks on SQLite.

// Test helpers may unwrap and panic: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::postgres_server;
use rusqlite_migration::{Migrations, M};
use tollgate_core::keydir::bucket_of;
use tollgate_core::keys::{key_digest, key_hash_hex};
use tollgate_core::token::subject_digest;

const POSTGRES_SCHEMA: &str = include_str!("../src/store/postgres_schema.sql");
const OWN_ISSUER: &str = "http://tollgate.test";
const EXTERNAL_ISSUER: &str = "https://id.example";

/// A fresh database `name` on the shared cluster, with the schema applied.
fn postgres(name: &str) -> postgres::Client {
    let url = postgres_server::shared().create_database(name);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.batch_execute(POSTGRES_SCHEMA).unwrap();
    client
}

/// A SQLite catalogue in memory, migrated as the store migrates it, with the SQL function its
/// triggers call registered as the store registers it.
fn sqlite() -> rusqlite::Connection {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.create_scalar_function(
        "tollgate_subject_bucket",
        2,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8
            | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let issuer: Option<String> = ctx.get(0)?;
            let value: String = ctx.get(1)?;
            Ok(issuer.map(|issuer| i64::from(subject_bucket(&issuer, &value))))
        },
    )
    .unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    Migrations::new(vec![
        M::up(include_str!("../src/store/schema.sql")),
        M::up(include_str!("../src/store/schema_tokens.sql")),
        M::up(include_str!("../src/store/schema_token_lifetime.sql")),
        M::up(include_str!("../src/store/schema_buckets.sql")),
        M::up(include_str!("../src/store/schema_fleet.sql")),
    ])
    .to_latest(&mut conn)
    .unwrap();
    conn
}

fn subject_bucket(issuer: &str, value: &str) -> u16 {
    bucket_of(&subject_digest(issuer, value))
}

fn key_bucket(key: &str) -> u16 {
    bucket_of(&key_digest(key))
}

#[test]
fn schema_applies_with_the_initial_rows() {
    let mut pg = postgres("schema_applies");
    let revision = pg
        .query_one("SELECT id, revision FROM gateway_revision", &[])
        .unwrap();
    assert_eq!(
        (revision.get::<_, i64>(0), revision.get::<_, i64>(1)),
        (1, 1)
    );
    let state = pg
        .query_one("SELECT id, revision FROM snapshot_state", &[])
        .unwrap();
    assert_eq!(
        (state.get::<_, i64>(0), state.get::<_, Option<i64>>(1)),
        (1, None)
    );
    assert_eq!(
        pg.query_one("SELECT count(*) FROM fleet_settings", &[])
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}

/// SQLite's tables, leaving out its own.
const LITE_TABLES: &str = "SELECT name FROM sqlite_master
    WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_rusqlite_migration'";

fn lite_rows(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pg_rows(client: &mut postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn tables_columns_keys_and_indexes_are_sqlites() {
    let mut pg = postgres("same_shape");
    let lite = sqlite();

    // table_xinfo: table_info leaves out generated columns (`api_keys.bucket`). A primary key
    // column is NOT NULL on PostgreSQL; SQLite lets a TEXT one hold NULL, which no write does.
    let lite_columns = lite_rows(
        &lite,
        &format!(
            "SELECT t.name || '.' || c.name || ' '
                 || CASE c.type WHEN 'INTEGER' THEN 'bigint' WHEN 'TEXT' THEN 'text'
                                WHEN 'BLOB' THEN 'bytea' ELSE c.type END
                 || CASE WHEN c.\"notnull\" OR c.pk > 0 THEN ' not null' ELSE '' END
             FROM ({LITE_TABLES}) t, pragma_table_xinfo(t.name) c ORDER BY t.name, c.cid"
        ),
    );
    let pg_columns = pg_rows(
        &mut pg,
        "SELECT table_name || '.' || column_name || ' ' || data_type
             || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
         FROM information_schema.columns
         WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    );
    assert_eq!(pg_columns, lite_columns);

    let lite_keys: BTreeSet<String> = lite_rows(
        &lite,
        &format!(
            "SELECT t.name || ' primary key (' || (SELECT group_concat(name, ', ') FROM
                 (SELECT name FROM pragma_table_xinfo(t.name) WHERE pk > 0 ORDER BY pk)) || ')'
             FROM ({LITE_TABLES}) t
             WHERE EXISTS (SELECT 1 FROM pragma_table_xinfo(t.name) WHERE pk > 0)
             UNION ALL
             SELECT t.name || ' unique (' || (SELECT group_concat(name, ', ') FROM
                 (SELECT name FROM pragma_index_info(l.name) ORDER BY seqno)) || ')'
             FROM ({LITE_TABLES}) t, pragma_index_list(t.name) l WHERE l.origin = 'u'
             UNION ALL
             SELECT t.name || ' foreign key (' || group_concat(f.\"from\", ', ')
                 || ') references ' || f.\"table\" || ' (' || group_concat(f.\"to\", ', ') || ')'
             FROM ({LITE_TABLES}) t, pragma_foreign_key_list(t.name) f GROUP BY t.name, f.id"
        ),
    )
    .into_iter()
    .collect();
    let pg_keys: BTreeSet<String> = pg_rows(
        &mut pg,
        "SELECT c.conrelid::regclass::text
             || CASE c.contype WHEN 'p' THEN ' primary key (' WHEN 'u' THEN ' unique ('
                               ELSE ' foreign key (' END
             || (SELECT string_agg(a.attname, ', ' ORDER BY k.n)
                 FROM unnest(c.conkey) WITH ORDINALITY AS k (attnum, n)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) || ')'
             || CASE WHEN c.contype <> 'f' THEN '' ELSE
                 ' references ' || c.confrelid::regclass::text || ' ('
                 || (SELECT string_agg(a.attname, ', ' ORDER BY k.n)
                     FROM unnest(c.confkey) WITH ORDINALITY AS k (attnum, n)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum)
                 || ')' END
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f')",
    )
    .into_iter()
    .collect();
    assert_eq!(pg_keys, lite_keys);
    for key in [
        "api_keys primary key (id)",
        "api_keys unique (sha256)",
        "contracts foreign key (plan_org, plan, plan_version) \
         references plan_versions (org, plan, version)",
        "snapshot_changes primary key (revision, bucket)",
    ] {
        assert!(pg_keys.contains(key), "{key} in {pg_keys:#?}");
    }

    // Named indexes, with their partial-index conditions; those of primary keys and UNIQUE
    // constraints are named by each database and compared above.
    let lite_indexes: BTreeSet<String> = lite_rows(
        &lite,
        "SELECT tbl_name || ' ' || name || ' ' || (sql LIKE '% WHERE %') FROM sqlite_master
         WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%'",
    )
    .into_iter()
    .collect();
    let pg_indexes: BTreeSet<String> = pg_rows(
        &mut pg,
        "SELECT i.tablename || ' ' || i.indexname || ' ' || (i.indexdef LIKE '% WHERE %')::int
         FROM pg_indexes i
         WHERE i.schemaname = 'public' AND NOT EXISTS (
             SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
    )
    .into_iter()
    .collect();
    assert_eq!(pg_indexes, lite_indexes);
    assert!(pg_indexes.contains("snapshot_buckets snapshot_buckets_emptied 1"));
    assert!(pg_indexes.contains("api_keys api_keys_bucket 0"));
}

#[test]
fn subject_bucket_function_is_cores() {
    let mut pg = postgres("subject_bucket");
    let long = "x".repeat(70_000);
    let mut pairs: Vec<(String, String)> = vec![
        (String::new(), String::new()),
        (String::new(), "acme/mobile/1".into()),
        (OWN_ISSUER.into(), String::new()),
        (OWN_ISSUER.into(), "tgc_AbCdEf012345".into()),
        // The length prefixes keep these apart.
        ("ab".into(), "c".into()),
        ("a".into(), "bc".into()),
        (
            "https://login.exämple.de/tenant".into(),
            "ключ-клиента".into(),
        ),
        (
            "https://idp.example/日本".into(),
            "🔑 service account".into(),
        ),
        (long.clone(), "short".into()),
        ("short".into(), long),
    ];
    pairs.extend((0..200).map(|i| {
        (
            format!("https://issuer-{}.example/{}", i % 7, "p".repeat(i)),
            format!("svc-{i}-{}", "é".repeat(i % 13)),
        )
    }));
    let issuers: Vec<&str> = pairs.iter().map(|(i, _)| i.as_str()).collect();
    let values: Vec<&str> = pairs.iter().map(|(_, v)| v.as_str()).collect();
    let computed: Vec<i64> = pg
        .query(
            "SELECT tollgate_subject_bucket(i, v)
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS pair (i, v, n) ORDER BY n",
            &[&issuers, &values],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = pairs
        .iter()
        .map(|(i, v)| i64::from(subject_bucket(i, v)))
        .collect();
    assert_eq!(computed, expected);

    // A length that needs all four low bytes of the little-endian prefix (18 MB of UTF-8).
    let huge: i64 = pg
        .query_one(
            "SELECT tollgate_subject_bucket(repeat('é', 9000000), 'v')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(huge, i64::from(subject_bucket(&"é".repeat(9_000_000), "v")));

    let without_issuer: Option<i64> = pg
        .query_one("SELECT tollgate_subject_bucket(NULL, 'v')", &[])
        .unwrap()
        .get(0);
    assert_eq!(without_issuer, None);
}

#[test]
fn key_bucket_is_the_first_two_bytes_of_its_digest() {
    let mut pg = postgres("key_bucket");
    pg.batch_execute(&seed()).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("tg_key_{i}")).collect();
    for key in &keys {
        pg.execute(
            "INSERT INTO api_keys (org, client, version, sha256, created_at)
             VALUES ('acme', 'c0', '1', $1, 0)",
            &[&key_hash_hex(key)],
        )
        .unwrap();
    }
    for key in &keys {
        let bucket: i64 = pg
            .query_one(
                "SELECT bucket FROM api_keys WHERE sha256 = $1",
                &[&key_hash_hex(key)],
            )
            .unwrap()
            .get(0);
        assert_eq!(bucket, i64::from(key_bucket(key)), "key {key}");
    }
    // The extremes, by hand.
    for (hex, bucket) in [("0000", 0), ("00ff", 255), ("ff00", 65280), ("ffff", 65535)] {
        let digest = format!("{hex}{}", "0".repeat(60));
        let stored: i64 = pg
            .query_one(
                "INSERT INTO api_keys (org, client, version, sha256, created_at)
                 VALUES ('acme', 'c0', '1', $1, 0) RETURNING bucket",
                &[&digest],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored, bucket, "digest {digest}");
    }
}

#[test]
fn a_key_digest_that_is_not_hex_is_refused() {
    let mut pg = postgres("key_not_hex");
    pg.batch_execute(&seed()).unwrap();
    let refused = pg.execute(
        "INSERT INTO api_keys (org, client, version, sha256, created_at)
         VALUES ('acme', 'c0', '1', 'not a digest', 0)",
        &[],
    );
    assert!(refused.is_err(), "a digest that is not hex got a bucket");
}

/// Org `acme` with a locked plan, a published API offering it, an external issuer, a service
/// account and client versions `c0`…`c3`: what the writes below act on. Valid on both.
fn seed() -> String {
    let mut sql = format!(
        "INSERT INTO orgs VALUES ('acme', 'Acme', 0);
         INSERT INTO plans VALUES ('acme', 'gold', 'Gold', 0);
         INSERT INTO plan_versions (org, plan, version, created_at, locked_at)
             VALUES ('acme', 'gold', '1', 0, 0);
         INSERT INTO plan_limits VALUES ('acme', 'gold', '1', 'second', 10);
         INSERT INTO apis VALUES ('acme', 'orders', 'Orders', 0);
         INSERT INTO api_versions (org, api, version, status, public, path_prefix, hosts,
                                   forward_api_key, created_at, published_at)
             VALUES ('acme', 'orders', '1', 'published', 0, '/orders', '[]', 0, 0, 0);
         INSERT INTO api_version_plans VALUES ('acme', 'orders', '1', 'acme', 'gold', '1');
         INSERT INTO issuers (issuer, audiences, jwks, client_claim, created_at, updated_at)
             VALUES ('{EXTERNAL_ISSUER}', '[\"orders\"]', '{{\"keys\": []}}', 'azp', 0, 0);
         INSERT INTO service_accounts VALUES ('ci', '[\"catalogue:write\"]', 0);"
    );
    for i in 0..4 {
        sql += &format!(
            "INSERT INTO clients VALUES ('acme', 'c{i}', 'C{i}', 0);
             INSERT INTO client_versions (org, client, version, created_at)
                 VALUES ('acme', 'c{i}', '1', 0);"
        );
    }
    sql
}

/// One write, in SQL both databases accept, and the buckets it must mark.
struct Write {
    what: &'static str,
    sql: String,
    marks: Vec<u16>,
}

fn write(what: &'static str, sql: impl Into<String>, marks: &[u16]) -> Write {
    Write {
        what,
        sql: sql.into(),
        marks: marks.to_vec(),
    }
}

fn insert_key(client: &str, key: &str) -> String {
    format!(
        "INSERT INTO api_keys (org, client, version, sha256, created_at)
         VALUES ('acme', '{client}', '1', '{}', 0)",
        key_hash_hex(key)
    )
}

fn insert_credential(client: &str, client_id: &str) -> String {
    format!(
        "INSERT INTO oauth_credentials (client_id, secret_sha256, client_org, client,
                                        client_version, created_at)
         VALUES ('{client_id}', '\\x00', 'acme', '{client}', '1', 0)"
    )
}

fn insert_contract(client: &str) -> String {
    format!(
        "INSERT INTO contracts (client_org, client, client_version, api_org, api, api_version,
                                plan_org, plan, plan_version, created_at)
         VALUES ('acme', '{client}', '1', 'acme', 'orders', '1', 'acme', 'gold', '1', 0)"
    )
}

/// The own issuer configured as `tollgate serve` does it (store/tokens.rs).
fn configure_own_issuer(issuer: &str, audience: &str) -> String {
    format!(
        "INSERT INTO own_issuer (id, issuer, audience) VALUES (1, '{issuer}', '{audience}')
         ON CONFLICT (id) DO UPDATE SET issuer = excluded.issuer, audience = excluded.audience"
    )
}

/// The writes the store makes, in an order that reaches every trigger: keys issued, rotated
/// out and swept; credentials before and after the own issuer exists, and across its rename;
/// token subjects; contracts signed, moved and revoked.
fn writes() -> Vec<Write> {
    let renamed = "http://tollgate-2.test";
    let subject = "svc-ä/orders";
    vec![
        write("a key issued", insert_key("c0", "k0"), &[key_bucket("k0")]),
        write(
            "two keys in one statement",
            format!(
                "{}, ('acme', 'c1', '1', '{}', 0)",
                insert_key("c0", "k1"),
                key_hash_hex("k2")
            ),
            &[key_bucket("k1"), key_bucket("k2")],
        ),
        write(
            "a key rotated out",
            format!(
                "UPDATE api_keys SET expires_at = 100 WHERE sha256 = '{}'",
                key_hash_hex("k0")
            ),
            &[key_bucket("k0")],
        ),
        write(
            "the expiry sweep",
            "DELETE FROM api_keys WHERE expires_at IS NOT NULL AND expires_at <= 100",
            &[key_bucket("k0")],
        ),
        write(
            "a credential while there is no own issuer",
            insert_credential("c0", "tgc_0"),
            &[],
        ),
        write(
            "a service account's credential",
            "INSERT INTO oauth_credentials (client_id, secret_sha256, service_account, created_at)
             VALUES ('tgs_ci', '\\x00', 'ci', 0)",
            &[],
        ),
        write(
            "the own issuer configured",
            configure_own_issuer(OWN_ISSUER, "gateway"),
            &[subject_bucket(OWN_ISSUER, "tgc_0")],
        ),
        write(
            "a credential issued",
            insert_credential("c1", "tgc_1"),
            &[subject_bucket(OWN_ISSUER, "tgc_1")],
        ),
        write(
            "a credential replaced",
            "UPDATE oauth_credentials SET expires_at = 50 WHERE client_id = 'tgc_1'",
            &[subject_bucket(OWN_ISSUER, "tgc_1")],
        ),
        write(
            "the own issuer's audience changed",
            configure_own_issuer(OWN_ISSUER, "gateways"),
            &[],
        ),
        write(
            "the own issuer renamed",
            configure_own_issuer(renamed, "gateways"),
            &[
                subject_bucket(OWN_ISSUER, "tgc_0"),
                subject_bucket(OWN_ISSUER, "tgc_1"),
                subject_bucket(renamed, "tgc_0"),
                subject_bucket(renamed, "tgc_1"),
            ],
        ),
        write(
            "a token subject added",
            format!(
                "INSERT INTO token_subjects (issuer, value, org, client, version, created_at)
                 VALUES ('{EXTERNAL_ISSUER}', '{subject}', 'acme', 'c2', '1', 0)"
            ),
            &[subject_bucket(EXTERNAL_ISSUER, subject)],
        ),
        write(
            "a token subject updated in place",
            "UPDATE token_subjects SET created_at = 5",
            &[subject_bucket(EXTERNAL_ISSUER, subject)],
        ),
        write(
            "a contract of a client version with keys and a credential",
            insert_contract("c0"),
            &[key_bucket("k1"), subject_bucket(renamed, "tgc_0")],
        ),
        write(
            "a contract of a client version with a token subject",
            insert_contract("c2"),
            &[subject_bucket(EXTERNAL_ISSUER, subject)],
        ),
        write(
            "a contract of a client version without records",
            insert_contract("c3"),
            &[],
        ),
        write(
            "a contract moved to another client version",
            "UPDATE contracts SET client = 'c1' WHERE client = 'c0'",
            &[
                key_bucket("k1"),
                subject_bucket(renamed, "tgc_0"),
                key_bucket("k2"),
                subject_bucket(renamed, "tgc_1"),
            ],
        ),
        write(
            "a contract revoked",
            "DELETE FROM contracts WHERE client = 'c2'",
            &[subject_bucket(EXTERNAL_ISSUER, subject)],
        ),
        write(
            "a token subject deleted",
            "DELETE FROM token_subjects",
            &[subject_bucket(EXTERNAL_ISSUER, subject)],
        ),
        write(
            "a credential deleted",
            "DELETE FROM oauth_credentials WHERE client_id = 'tgc_0'",
            &[subject_bucket(renamed, "tgc_0")],
        ),
        write(
            "a service account's credential deleted",
            "DELETE FROM oauth_credentials WHERE service_account = 'ci'",
            &[],
        ),
    ]
}

/// Every record's bucket, as `<table> <record> <bucket>`.
const RECORD_BUCKETS: &str = "SELECT 'api_keys ' || sha256 || ' ' || bucket FROM api_keys
    UNION ALL SELECT 'token_subjects ' || issuer || ' ' || value || ' '
        || coalesce(CAST(bucket AS TEXT), 'NULL') FROM token_subjects
    UNION ALL SELECT 'oauth_credentials ' || client_id || ' '
        || coalesce(CAST(bucket AS TEXT), 'NULL') FROM oauth_credentials";

fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

#[test]
fn writes_mark_the_buckets_sqlite_marks() {
    let mut pg = postgres("dirty_buckets");
    let mut lite = sqlite();
    pg.batch_execute(&seed()).unwrap();
    lite.execute_batch(&seed()).unwrap();
    for write in writes() {
        let expected: BTreeSet<i64> = write.marks.iter().map(|&b| i64::from(b)).collect();

        let mut tx = pg.transaction().unwrap();
        tx.batch_execute(&write.sql)
            .unwrap_or_else(|e| panic!("{} on PostgreSQL: {e}", write.what));
        let pg_marked: BTreeSet<i64> = tx
            .query("SELECT bucket FROM dirty_buckets", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let pg_records = sorted(
            tx.query(RECORD_BUCKETS, &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
        );
        tx.batch_execute("DELETE FROM dirty_buckets").unwrap();
        tx.commit().unwrap();

        let tx = lite.transaction().unwrap();
        tx.execute_batch(&write.sql)
            .unwrap_or_else(|e| panic!("{} on SQLite: {e}", write.what));
        let lite_marked: BTreeSet<i64> = tx
            .prepare("SELECT bucket FROM dirty_buckets")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let lite_records = sorted(
            tx.prepare(RECORD_BUCKETS)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
        );
        tx.execute_batch("DELETE FROM dirty_buckets").unwrap();
        tx.commit().unwrap();

        assert_eq!(lite_marked, expected, "{} on SQLite", write.what);
        assert_eq!(pg_marked, expected, "{} on PostgreSQL", write.what);
        assert_eq!(
            pg_records, lite_records,
            "record buckets after {}",
            write.what
        );
    }
}

#[test]
fn renaming_the_own_issuer_moves_client_credentials_only() {
    let mut pg = postgres("own_issuer_rename");
    pg.batch_execute(&seed()).unwrap();
    pg.batch_execute(&configure_own_issuer(OWN_ISSUER, "gateway"))
        .unwrap();
    for i in 0..20 {
        pg.batch_execute(&insert_credential(
            &format!("c{}", i % 4),
            &format!("tgc_{i}"),
        ))
        .unwrap();
    }
    pg.batch_execute(
        "INSERT INTO oauth_credentials (client_id, secret_sha256, service_account, created_at)
         VALUES ('tgs_ci', '\\x00', 'ci', 0)",
    )
    .unwrap();
    let renamed = "https://tollgate.example/ä";
    pg.batch_execute("DELETE FROM dirty_buckets").unwrap();
    pg.batch_execute(&configure_own_issuer(renamed, "gateway"))
        .unwrap();

    for row in pg
        .query("SELECT client_id, bucket FROM oauth_credentials", &[])
        .unwrap()
    {
        let (client_id, bucket): (String, Option<i64>) = (row.get(0), row.get(1));
        let expected =
            (client_id != "tgs_ci").then(|| i64::from(subject_bucket(renamed, &client_id)));
        assert_eq!(bucket, expected, "credential {client_id}");
    }
    let marked: BTreeSet<i64> = pg
        .query("SELECT bucket FROM dirty_buckets", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let moved: BTreeSet<i64> = (0..20)
        .flat_map(|i| {
            let client_id = format!("tgc_{i}");
            [OWN_ISSUER, renamed].map(|issuer| i64::from(subject_bucket(issuer, &client_id)))
        })
        .collect();
    assert_eq!(marked, moved);
}

#[test]
fn changing_a_token_subjects_value_moves_its_bucket() {
    // PostgreSQL only: SQLite sets the bucket on insert alone (the store never changes a
    // subject's issuer or value); here the bucket follows them.
    let mut pg = postgres("subject_value_changed");
    pg.batch_execute(&seed()).unwrap();
    pg.batch_execute(&format!(
        "INSERT INTO token_subjects (issuer, value, org, client, version, created_at)
         VALUES ('{EXTERNAL_ISSUER}', 'before', 'acme', 'c0', '1', 0);
         DELETE FROM dirty_buckets;
         UPDATE token_subjects SET value = 'after';"
    ))
    .unwrap();
    let bucket: i64 = pg
        .query_one("SELECT bucket FROM token_subjects", &[])
        .unwrap()
        .get(0);
    assert_eq!(bucket, i64::from(subject_bucket(EXTERNAL_ISSUER, "after")));
    let marked: BTreeSet<i64> = pg
        .query("SELECT bucket FROM dirty_buckets", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        marked,
        BTreeSet::from([
            i64::from(subject_bucket(EXTERNAL_ISSUER, "before")),
            i64::from(subject_bucket(EXTERNAL_ISSUER, "after")),
        ])
    );
}

#[test]
fn a_private_cluster_keeps_its_commits_across_stop_kill_and_restart() {
    let mut server = postgres_server::PostgresServer::start();
    let url = server.create_database("kept");
    let port = server.port;
    let count = |url: &str| -> i64 {
        let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
        client
            .query_one("SELECT count(*) FROM kept", &[])
            .unwrap()
            .get(0)
    };
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE kept (n BIGINT); INSERT INTO kept VALUES (1);")
        .unwrap();

    server.restart();
    assert_eq!(server.port, port);
    assert!(
        client.execute("INSERT INTO kept VALUES (2)", &[]).is_err(),
        "a session survived the restart"
    );
    assert_eq!(count(&url), 1);

    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.execute("INSERT INTO kept VALUES (2)", &[]).unwrap();
    server.kill();
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    server.restart();
    assert_eq!(count(&url), 2);

    server.stop();
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    server.restart();
    assert_eq!(count(&url), 2);
    let other = server.create_database("after_restart");
    assert!(postgres::Client::connect(&other, postgres::NoTls).is_ok());
}
