//! Loading into a target schema the application created
//! (`[target_tables] mode = "existing"`), through the CLI: a Prisma-style
//! SQLite file (text UUID ids, camelCase columns, epoch-millisecond
//! DateTimes, 0/1 booleans, JSON text) into PostgreSQL tables created
//! beforehand from DDL like Prisma's migration output (quoted camelCase,
//! `uuid`, `timestamp(3)`, `boolean`, `jsonb`, a foreign key), while the
//! application inserts, updates and deletes through the load and the
//! stream; then an exact comparison (every source value converted by the
//! test itself, independently of ferry) and a fenced cutover.
//!
//! `ferry plan` first refuses while a table is missing (naming it and the
//! fix), then passes and shows the conversions; `ferry run` refuses a
//! non-empty target table unless `existing_rows = "truncate"`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, target_options};
use ferry_e2e::sqlite_app::Writer;
use ferry_e2e::{Background, Ran, ferry, pgsync, run};
use ferry_testkit::PgServer;
use rusqlite::Connection;
use rusqlite::types::ValueRef;

/// The application's SQLite schema, as Prisma's SQLite migration writes
/// it; the post table was created by hand in lowercase (matched to the
/// target's `"Post"` case-insensitively), and so was its `viewcount`.
const SOURCE_DDL: &str = r#"
CREATE TABLE "User" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "email" TEXT NOT NULL,
    "displayName" TEXT,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL,
    "settings" TEXT,
    "legacyToken" TEXT
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE TABLE "post" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "authorId" TEXT NOT NULL,
    "title" TEXT NOT NULL,
    "published" BOOLEAN NOT NULL DEFAULT false,
    "viewcount" INTEGER NOT NULL DEFAULT 0,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "meta" TEXT,
    CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId") REFERENCES "User" ("id") ON DELETE RESTRICT ON UPDATE CASCADE
);
"#;

/// The target schema, as Prisma's PostgreSQL migration writes it; `Post`
/// has a `slug` the source never had (nullable).
const USER_DDL: &str = r#"
CREATE TABLE "User" (
    "id" UUID NOT NULL,
    "email" TEXT NOT NULL,
    "displayName" TEXT,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "settings" JSONB,
    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
"#;

const POST_DDL: &str = r#"
CREATE TABLE "Post" (
    "id" UUID NOT NULL,
    "authorId" UUID NOT NULL,
    "title" TEXT NOT NULL,
    "published" BOOLEAN NOT NULL DEFAULT false,
    "viewCount" INTEGER NOT NULL DEFAULT 0,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "meta" JSONB,
    "slug" TEXT,
    CONSTRAINT "Post_pkey" PRIMARY KEY ("id")
);
ALTER TABLE "Post" ADD CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId") REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
"#;

/// Base of the epoch-millisecond timestamps (2023-11-14 22:13:20 UTC).
const T0: i64 = 1_700_000_000_000;
const USERS: u64 = 300;
const POSTS: u64 = 2_000;

fn uuid(kind: u8, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

fn insert_user(conn: &Connection, n: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO \"User\" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            uuid(1, n),
            format!("u{n}@example.com"),
            (!n.is_multiple_of(3)).then(|| format!("User \"{n}\"\ttab")),
            (n % 2) as i64,
            T0 + n as i64 * 1_001,
            T0 + n as i64 * 2_003,
            (!n.is_multiple_of(4))
                .then(|| format!(r#"{{"theme": "dark", "n": {n}, "tags": ["a", "b"]}}"#)),
            format!("secret-{n}"),
        ],
    )
}

fn insert_post(conn: &Connection, n: u64, author: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO post VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            uuid(2, n),
            uuid(1, author),
            format!("post {n}"),
            n.is_multiple_of(5) as i64,
            (n * 7 % 1000) as i64,
            T0 + n as i64 * 60_000 + 123,
            n.is_multiple_of(2).then(|| format!(r#"{{"words": {n}}}"#)),
        ],
    )
}

/// Writer transaction `i`: a new user with a post, another post published
/// and viewed, an older post deleted, a user's settings and `updatedAt`
/// changed.
fn write_txn(conn: &mut Connection, i: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let user = USERS + i;
    insert_user(&tx, user)?;
    insert_post(&tx, POSTS + i, user)?;
    tx.execute(
        "UPDATE post SET published = 1, viewcount = viewcount + 1 WHERE id = ?1",
        [uuid(2, i % POSTS + 1)],
    )?;
    tx.execute(
        "DELETE FROM post WHERE id = ?1",
        [uuid(2, (i * 13) % POSTS + 1)],
    )?;
    tx.execute(
        "UPDATE \"User\" SET settings = ?1, \"updatedAt\" = ?2 WHERE id = ?3",
        (
            format!(r#"{{"edited": {i}}}"#),
            T0 + 86_400_000 + i as i64,
            uuid(1, i % USERS + 1),
        ),
    )?;
    tx.commit()
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    source_url: String,
    _target: PgServer,
    target_url: String,
    logs: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = wal", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(SOURCE_DDL).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        for n in 1..=USERS {
            insert_user(&conn, n).unwrap();
        }
        for n in 1..=POSTS {
            insert_post(&conn, n, n % USERS + 1).unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
        drop(conn);
        let target = PgServer::start(target_options()).expect("target");
        let db = target.create_database("app").unwrap();
        let target_url = target.url(&db);
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // The application's PostgreSQL schema dropped `legacyToken`.
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            "[tables.columns.'main.\"User\".legacyToken']\nexclude = true\n",
        )
        .unwrap();
        Setup {
            config,
            source_url: format!("sqlite://{}", path.display()),
            path,
            target_url,
            _target: target,
            logs,
            _dir: dir,
        }
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = ferry(&self.source_url, &self.target_url).unwrap();
        cmd.env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
            .env("FERRY_TARGET_TABLES_MODE", "existing")
            .env("FERRY_CONFIG", &self.config);
        cmd
    }

    fn ferry(&self, args: &[&str]) -> Ran {
        let mut cmd = self.cmd();
        cmd.args(args);
        run(&mut cmd).unwrap()
    }

    fn start(&self, name: &str, env: &[(&str, &str)]) -> Background {
        let mut cmd = self.cmd();
        cmd.env("FERRY_LOG", "info").arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Background::spawn(cmd, &self.logs.join(format!("{name}.log"))).expect("ferry run")
    }

    fn target_sql(&self, sql: &str) {
        let (url, sql) = (self.target_url.clone(), sql.to_owned());
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            c.batch_execute(&sql).await.unwrap();
        });
    }

    fn target_i64(&self, sql: &str) -> Option<i64> {
        let (url, sql) = (self.target_url.clone(), sql.to_owned());
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.ok()?;
            let row = c.query_opt(&sql, &[]).await.ok()??;
            Some(row.get::<_, i64>(0))
        })
    }

    fn phase(&self) -> Option<String> {
        let url = self.target_url.clone();
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.ok()?;
            let row = c
                .query_opt("SELECT phase FROM ferry.pipeline", &[])
                .await
                .ok()??;
            Some(row.get::<_, String>(0))
        })
    }

    fn wait(&self, ferry: &mut Background, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if let Some(code) = ferry.exited().unwrap() {
                panic!("ferry exited with {code:?} before {what}:\n{}", ferry.log());
            }
            if done() {
                return;
            }
            assert!(start.elapsed() < LONG, "never {what}:\n{}", ferry.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn source_head(&self) -> i64 {
        let conn = Connection::open(&self.path).unwrap();
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
    }

    fn wait_caught_up(&self, ferry: &mut Background) {
        let head = self.source_head();
        self.wait(ferry, &format!("applied change-log entry {head}"), || {
            self.target_i64("SELECT position::int8 FROM ferry.checkpoint")
                .is_some_and(|c| c >= head)
        });
    }

    /// The source table's rows, each value converted by the test's own rule
    /// for its column (`expr` over `$1`, a text array), as target text;
    /// sorted.
    fn expected_rows(&self, table: &str, columns: &[(&str, &str)]) -> Vec<Vec<Option<String>>> {
        let conn =
            Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let names: Vec<String> = columns.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let mut stmt = conn
            .prepare(&format!("SELECT {} FROM \"{table}\"", names.join(", ")))
            .unwrap();
        let mut values: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for (i, col) in values.iter_mut().enumerate() {
                col.push(match r.get_ref(i).unwrap() {
                    ValueRef::Null => None,
                    ValueRef::Integer(v) => Some(v.to_string()),
                    ValueRef::Text(t) => Some(String::from_utf8(t.to_vec()).unwrap()),
                    other => panic!("unexpected value {other:?} in {table}"),
                });
            }
        }
        let url = self.target_url.clone();
        let exprs: Vec<String> = columns.iter().map(|(_, e)| (*e).to_owned()).collect();
        let cast: Vec<Vec<Option<String>>> = pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            let mut out = Vec::new();
            for (expr, vals) in exprs.iter().zip(values) {
                let sql = format!(
                    "SELECT ({})::text FROM unnest($1::text[]) WITH ORDINALITY u(v, i) ORDER BY i",
                    expr.replace("$v", "v")
                );
                let rows = c.query(&sql, &[&vals]).await.unwrap();
                out.push(rows.iter().map(|r| r.get(0)).collect());
            }
            out
        });
        let n = cast.first().map_or(0, Vec::len);
        let mut out: Vec<Vec<Option<String>>> = (0..n)
            .map(|i| cast.iter().map(|c| c[i].clone()).collect())
            .collect();
        out.sort();
        out
    }

    fn target_rows(&self, table: &str, columns: &[&str]) -> Vec<Vec<Option<String>>> {
        let names: Vec<String> = columns.iter().map(|n| format!("\"{n}\"::text")).collect();
        let sql = format!("SELECT {} FROM public.\"{table}\"", names.join(", "));
        let url = self.target_url.clone();
        let mut out: Vec<Vec<Option<String>>> = pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
                .collect()
        });
        out.sort();
        out
    }

    /// Both tables equal, every value converted independently of ferry:
    /// epoch milliseconds to `timestamp(3)` in UTC, 0/1 to boolean, text to
    /// uuid and jsonb.
    fn compare(&self) {
        let ms = "(to_timestamp($v::bigint / 1000.0) AT TIME ZONE 'UTC')::timestamp(3)";
        let bool01 = "($v::int <> 0)";
        let user = [
            ("id", "$v::uuid"),
            ("email", "$v"),
            ("displayName", "$v"),
            ("isActive", bool01),
            ("createdAt", ms),
            ("updatedAt", ms),
            ("settings", "$v::jsonb"),
        ];
        let want = self.expected_rows("User", &user);
        let got = self.target_rows("User", &user.map(|(n, _)| n));
        assert_eq!(want.len(), got.len(), "row count of User");
        assert_eq!(want, got, "User rows differ");
        let post_source = [
            ("id", "$v::uuid"),
            ("authorId", "$v::uuid"),
            ("title", "$v"),
            ("published", bool01),
            ("viewcount", "$v::int"),
            ("createdAt", ms),
            ("meta", "$v::jsonb"),
        ];
        let want = self.expected_rows("post", &post_source);
        let got = self.target_rows(
            "Post",
            &[
                "id",
                "authorId",
                "title",
                "published",
                "viewCount",
                "createdAt",
                "meta",
            ],
        );
        assert_eq!(want.len(), got.len(), "row count of Post");
        assert_eq!(want, got, "Post rows differ");
        // A value the test can read without any conversion rule.
        assert_eq!(
            self.target_i64(&format!(
                "SELECT count(*) FROM public.\"User\" WHERE id = '{}' AND \"createdAt\" = '2023-11-14 22:13:21.001'",
                uuid(1, 1)
            )),
            Some(1),
            "user 1's createdAt is T0 + 1001 ms"
        );
    }
}

#[test]
fn prisma_file_into_an_existing_schema_under_writes_with_fenced_cutover() {
    let s = Setup::new();
    s.target_sql(USER_DDL);

    // 1. `ferry plan` refuses while the Post table is missing: it names the
    //    table and the fix; nothing is created on the target.
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    assert!(
        plan.stdout.contains("no target table public.post")
            && plan.stdout.contains("run the application's migrations"),
        "{}",
        plan.all()
    );
    assert_eq!(
        s.target_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        Some(1)
    );

    // 2. With the table there, the plan passes and shows the conversions.
    s.target_sql(POST_DDL);
    let plan = s.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    for needle in [
        r#"main."User".createdAt → timestamp(3): declared DATETIME, holds integers: read as Unix epoch milliseconds"#,
        r#"main.post."viewcount" (bigint) → public."Post"."viewCount" (integer)"#,
        r#""slug" has no source column: rows get NULL"#,
        r#"source column "legacyToken" is excluded (tables.columns): not carried"#,
        r#"→ public."User"."id" (uuid): text values that are not a UUID cannot be converted"#,
        "public.\"Post\"",
    ] {
        assert!(
            plan.stdout.contains(needle),
            "plan lacks {needle:?}:\n{}",
            plan.all()
        );
    }

    // 3. A non-empty target table is refused before anything is written.
    s.target_sql(&format!(
        "INSERT INTO \"User\" (id, email, \"updatedAt\") VALUES ('{}', 'x@y', now())",
        uuid(9, 9)
    ));
    let code = s.start("refused", &[]).wait(LONG).unwrap();
    let log = std::fs::read_to_string(s.logs.join("refused.log")).unwrap();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("target tables public.\"User\" are not empty")
            && log.contains(r#"existing_rows = "truncate""#),
        "{log}"
    );
    assert_eq!(
        s.target_i64("SELECT count(*) FROM public.\"User\""),
        Some(1),
        "nothing written"
    );

    // 4. Load (truncating the stray row) and stream while the
    //    application writes.
    let writer = Writer::start_with(&s.path, 1, write_txn);
    writer.wait_for(10);
    let mut ferry_run = s.start(
        "run",
        &[
            ("FERRY_TARGET_TABLES_EXISTING_ROWS", "truncate"),
            ("FERRY_LOAD_CHUNK_ROWS", "200"),
            ("FERRY_LOAD_PARALLELISM", "2"),
        ],
    );
    s.wait(&mut ferry_run, "streaming", || {
        s.phase().as_deref() == Some("stream")
    });
    let seen = writer.last();
    writer.wait_for(seen + 100);
    let last = writer.stop().last;
    assert!(last > 110, "the writer committed {last}");
    s.wait_caught_up(&mut ferry_run);
    s.compare();
    // The application's foreign key is held back until cutover.
    assert_eq!(
        s.target_i64("SELECT count(*) FROM pg_constraint WHERE conname = 'Post_authorId_fkey'"),
        Some(0),
        "the foreign key waits for the cutover"
    );

    // 5. Fenced cutover: the foreign key is back and valid; the target
    //    takes the application's own inserts with its defaults.
    let mut cut = s.cmd();
    cut.args(["cutover", "--fence", "--max-lag", "30", "--timeout", "120s"]);
    let cut: Ran = run(&mut cut).unwrap();
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry_run.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    let code = ferry_run.wait(Duration::from_secs(60)).unwrap();
    let log = std::fs::read_to_string(s.logs.join("run.log")).unwrap();
    assert_eq!(code, Some(0), "{log}");
    s.compare();
    let start = Instant::now();
    while s.target_i64(
        "SELECT count(*) FROM pg_constraint WHERE conname = 'Post_authorId_fkey' AND convalidated",
    ) != Some(1)
    {
        assert!(start.elapsed() < LONG, "the foreign key was not restored");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.target_i64(&format!(
            "WITH i AS (INSERT INTO \"Post\" (id, \"authorId\", title) VALUES ('{}', '{}', 'new') RETURNING \"viewCount\"::int8) SELECT * FROM i",
            uuid(3, 1),
            uuid(1, 1)
        )),
        Some(0)
    );
    assert!(!log.contains("ERROR"), "ferry logged an error:\n{log}");
}
