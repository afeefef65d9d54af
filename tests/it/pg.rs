//! PostgreSQL through postern with real clients (psql, pgbench), a throwaway cluster with
//! SCRAM authentication, and the database tokens of `postern db login`.

use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Out;
use crate::harness::postern::Postern;
use crate::harness::postgres::Postgres;
use crate::login::{Dev, set_password};
use crate::ssh::wait_child;

/// The target database user's password: postern holds it, developers never see it.
pub const APP_PASSWORD: &str = "app-secret-4c1d9e77";

pub struct PgBastion {
    pub postern: Postern,
    pub pg: Postgres,
    pub dev: Dev,
}

impl PgBastion {
    /// postern with user `alice` (role `dev`: database `features` as `app` on env=test),
    /// target `pg1` (a throwaway cluster), alice logged in and holding a database token.
    pub fn start() -> PgBastion {
        Self::start_with_role(&[])
    }

    pub fn start_with_role(extra: &[&str]) -> PgBastion {
        Self::build(Postgres::start(), extra, "", &[])
    }

    /// As `start`, with `config` (TOML) for `serve` and `env` for every command.
    pub fn start_with_config(config: &str, env: &[(&str, &str)]) -> PgBastion {
        Self::build(Postgres::start(), &[], config, env)
    }

    /// As `start`, with a TLS-only cluster that `pg1` reaches with `tls_mode =
    /// verify-full` against the cluster's CA (`[postgres] target_ca_file`).
    pub fn start_tls() -> PgBastion {
        Self::build(Postgres::start_tls(), &[], "", &[])
    }

    fn build(pg: Postgres, extra: &[&str], config: &str, env: &[(&str, &str)]) -> PgBastion {
        pg.psql(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"))
            .ok();
        pg.psql("CREATE DATABASE features OWNER app").ok();
        let p = Postern::new().with_env(env);
        let mut role = vec![
            "admin",
            "role",
            "add",
            "dev",
            "--allow",
            "env=test",
            "--databases",
            "features,postgres",
            "--db-users",
            "app",
        ];
        role.extend_from_slice(extra);
        p.cli(&role).ok();
        p.cli(&["admin", "user", "add", "alice", "--role", "dev"])
            .ok();
        set_password(&p);
        p.cli(&[
            "admin",
            "target",
            "add",
            "pg1",
            "--postgres",
            &format!("127.0.0.1:{}", pg.port),
            "--tls-mode",
            if pg.ca_file.is_some() {
                "verify-full"
            } else {
                "disable"
            },
            "--label",
            "env=test",
        ])
        .ok();
        p.cli_stdin(
            &[
                "admin",
                "target",
                "set-credential",
                "pg1",
                "--db-user",
                "app",
                "--password-stdin",
            ],
            &format!("{APP_PASSWORD}\n"),
        )
        .ok();
        let mut text = config.to_string();
        if let Some(ca) = &pg.ca_file {
            text.push_str(&format!(
                "[postgres]\ntarget_ca_file = {:?}\n",
                ca.display().to_string()
            ));
        }
        let p = if text.is_empty() {
            p.start()
        } else {
            let cfg = p.write("postern.toml", &text);
            let mut p = p;
            let mut cmd = p.serve_command();
            cmd.arg("--config").arg(cfg);
            p.spawn(cmd);
            p
        };
        let dev = Dev::new();
        let ca = p.write("tls-ca.pem", p.cli(&["admin", "tls-ca"]).ok());
        dev.login(
            &p,
            &["--ca-file", ca.to_str().unwrap()],
            crate::login::PASSWORD,
        )
        .ok();
        dev.run(&p, &["db", "login", "pg1"], "").ok();
        PgBastion {
            postern: p,
            pg,
            dev,
        }
    }

    fn libpq_env(&self, c: &mut Command) {
        let home = self.dev.home();
        c.env("HOME", home)
            .env("PGSERVICEFILE", home.join(".pg_service.conf"))
            .env("PGPASSFILE", home.join(".pgpass"))
            .env("PGCONNECT_TIMEOUT", "15")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSWORD");
    }

    /// `psql "service=pg1" ARGS…`, as the developer runs it after `postern db login`.
    pub fn psql_command(&self, conn: &str) -> Command {
        let mut c = Command::new("psql");
        c.arg(conn)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        self.libpq_env(&mut c);
        c
    }

    pub fn psql(&self, args: &[&str]) -> Out {
        self.psql_command("service=pg1")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    pub fn pgbench(&self, args: &[&str]) -> Out {
        let mut c = Command::new("pgbench");
        c.args(args).arg("service=pg1");
        self.libpq_env(&mut c);
        c.stdin(Stdio::null()).output().unwrap().into()
    }

    /// Logs in again and gets a fresh database token (for roles with second-long TTLs).
    pub fn refresh(&self) {
        self.dev
            .login(&self.postern, &[], crate::login::PASSWORD)
            .ok();
        self.dev
            .run(&self.postern, &["db", "login", "pg1"], "")
            .ok();
    }

    /// A rustls client trusting postern's CA (the `ca.crt` login saved), aws-lc-rs.
    pub fn tls_client(&self) -> rustls::ClientConfig {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(self.dev.home().join(".postern/ca.crt")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// The token `postern db login` wrote into ~/.pgpass.
    pub fn token(&self) -> String {
        let pgpass = std::fs::read_to_string(self.dev.home().join(".pgpass")).unwrap();
        pgpass.trim_end().rsplit(':').next().unwrap().to_string()
    }

    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.postern.cli(&["sessions", "list", "--json"]);
        serde_json::from_str::<serde_json::Value>(out.ok())
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The newest session once it has ended.
    pub fn ended(&self) -> serde_json::Value {
        for _ in 0..100 {
            if let Some(s) = self.sessions().last()
                && !s["end_reason"].is_null()
            {
                return s.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no session ended; log:\n{}", self.postern.log());
    }

    /// The entries of a session's transcript (each statement joined with its result), in
    /// order, as `replay --json` prints them.
    pub fn transcript(&self, session: &serde_json::Value) -> Vec<serde_json::Value> {
        let path = PathBuf::from(session["recordings"][0]["path"].as_str().unwrap());
        postern::recording::transcript::read(&path)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }
}

#[test]
fn psql_runs_statements_through_postern_and_every_one_is_recorded() {
    let b = PgBastion::start();
    let out = b.psql(&["-c", "select current_user, current_database()"]);
    assert_eq!(out.ok(), "app|features\n");

    // A script with a transaction.
    let script = b.postern.write(
        "script.sql",
        "BEGIN;\nCREATE TABLE models (id int primary key, name text);\nINSERT INTO models VALUES (1, 'llama'), (2, 'mistral');\nUPDATE models SET name = upper(name) WHERE id = 2;\nCOMMIT;\nSELECT name FROM models ORDER BY id;\n",
    );
    let out = b.psql(&["-f", script.to_str().unwrap()]);
    assert!(out.ok().ends_with("llama\nMISTRAL\n"), "{}", out.stdout);
    let s = b.ended();
    assert_eq!(s["kind"], "postgres");
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "pg1");
    assert_eq!(s["login"], "app/features");
    assert_eq!(s["end_reason"], "client exit");
    let mut lines = b.transcript(&s);
    // psql ended at rest: the connection was reset and kept for alice's next session.
    let reset = lines.pop().unwrap();
    assert_eq!(reset["type"], "reset", "{lines:?}");
    assert_eq!(reset["connection"], "kept", "{reset}");
    let sql: Vec<&str> = lines
        .iter()
        .map(|l| l["sql"].as_str().unwrap_or(""))
        .collect();
    let want = [
        "BEGIN;",
        "CREATE TABLE models (id int primary key, name text);",
        "INSERT INTO models VALUES (1, 'llama'), (2, 'mistral');",
        "UPDATE models SET name = upper(name) WHERE id = 2;",
        "COMMIT;",
        "SELECT name FROM models ORDER BY id;",
    ];
    assert_eq!(sql, want, "{lines:?}");
    assert_eq!(lines[2]["tag"], "INSERT 0 2");
    assert_eq!(lines[2]["rows"], 2);
    assert_eq!(lines[3]["rows"], 1);
    assert_eq!(lines[5]["rows"], 2);

    // An error is recorded with its SQLSTATE.
    let out = b.psql(&["-c", "select * from no_such_table"]);
    assert!(
        out.fails(1)
            .contains("relation \"no_such_table\" does not exist"),
        "{}",
        out.stderr
    );
    let failed = b.transcript(&b.ended());
    assert_eq!(failed[0]["error"]["code"], "42P01");

    // Auditors: replay prints the timeline, grep finds statements.
    let id = s["id"].as_str().unwrap();
    let replay = b.postern.cli(&["replay", id]);
    let text = replay.ok();
    assert!(
        text.contains("INSERT INTO models VALUES (1, 'llama'), (2, 'mistral');"),
        "{text}"
    );
    assert!(text.contains("INSERT 0 2"), "{text}");
    let grep = b.postern.cli(&["sessions", "grep", "upper(name)"]);
    assert!(grep.ok().contains(id), "{}", grep.stdout);

    // The target's password is nowhere: store, recordings, audit log, server log.
    assert_eq!(b.postern.files_holding(APP_PASSWORD), Vec::<PathBuf>::new());
    assert!(
        !b.postern
            .cli(&["audit", "export"])
            .ok()
            .contains(APP_PASSWORD)
    );
    assert!(!b.postern.log().contains(APP_PASSWORD));
    let events = b
        .postern
        .cli(&["audit", "search", "--session", id, "--json"]);
    let kinds: Vec<String> = serde_json::from_str::<serde_json::Value>(events.ok())
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["session.start", "session.end", "session.replay"]);
    b.postern.cli(&["audit", "verify"]).ok();
}

fn checksum(b: &PgBastion, table: &str) -> String {
    b.psql(&[
        "-c",
        &format!(
            "select count(*), sum(id), md5(string_agg(payload, ',' order by id)) from {table}"
        ),
    ])
    .ok()
    .to_string()
}

#[test]
fn copy_of_100000_rows_in_and_out_and_pgbench() {
    let b = PgBastion::start();
    b.psql(&["-c", "create table src as select g as id, md5(g::text) as payload from generate_series(1, 100000) g"]).ok();
    b.psql(&["-c", "create table dst (id int, payload text)"])
        .ok();
    let file = b.postern.root().join("rows.csv");
    let out = b.psql(&["-c", &format!("\\copy src to '{}' csv", file.display())]);
    assert_eq!(out.ok().trim(), "COPY 100000");
    let out = b.psql(&["-c", &format!("\\copy dst from '{}' csv", file.display())]);
    assert_eq!(out.ok().trim(), "COPY 100000");
    assert_eq!(checksum(&b, "src"), checksum(&b, "dst"));
    b.ended();
    let copies: Vec<serde_json::Value> = b
        .sessions()
        .iter()
        .flat_map(|s| b.transcript(s))
        .filter(|l| l["sql"].as_str().unwrap_or("").starts_with("COPY"))
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(copies.iter().all(|c| c["rows"] == 100000), "{copies:?}");

    // pgbench initialises and runs through postern, simple and prepared.
    let out = b.pgbench(&["-i", "-s", "1", "-q"]);
    assert_eq!(out.code, 0, "{out:?}");
    for mode in ["simple", "prepared"] {
        let out = b.pgbench(&["-M", mode, "-c", "4", "-j", "2", "-t", "50", "-n"]);
        let text = out.ok();
        assert!(
            text.contains("number of transactions actually processed: 200/200"),
            "{text}"
        );
        assert!(text.contains("number of failed transactions: 0"), "{text}");
    }
}

#[test]
fn ctrl_c_cancels_a_running_query_through_postern() {
    let b = PgBastion::start();
    let mut child = b
        .psql_command("service=pg1")
        .args(["-c", "select pg_sleep(30)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the query runs on the target.
    for _ in 0..100 {
        if b.pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'").ok().trim() == "1" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = Instant::now();
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = sent.elapsed();
    let _ = child.kill();
    let out: Out = child.wait_with_output().unwrap().into();
    assert!(
        status.is_some(),
        "psql still running {waited:?} after Ctrl-C: {out:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(
        out.stderr
            .contains("canceling statement due to user request"),
        "{out:?}"
    );
    let t = b.transcript(&b.ended());
    assert_eq!(t[0]["error"]["code"], "57014");
}

#[test]
fn listen_receives_notify_from_another_connection() {
    let b = PgBastion::start();
    let listener = b
        .psql_command("service=pg1")
        .args([
            "-c",
            "LISTEN jobs",
            "-c",
            "select pg_sleep(3)",
            "-c",
            "select 'after'",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    b.psql(&["-c", "NOTIFY jobs, 'train-42'"]).ok();
    let out: Out = listener.wait_with_output().unwrap().into();
    assert!(
        out.ok()
            .contains("Asynchronous notification \"jobs\" with payload \"train-42\" received"),
        "{out:?}"
    );
}

#[test]
fn refusals_are_postgres_errors_with_the_right_sqlstate() {
    let b = PgBastion::start();
    let port = b.postern.pg.port();
    let ca = b.dev.home().join(".postern/ca.crt");
    let token = b.token();
    let conn = |db: &str, sslmode: &str| {
        format!(
            "host=127.0.0.1 port={port} user=alice dbname={db} sslmode={sslmode} sslrootcert={}",
            ca.display()
        )
    };
    let run = |c: &str, password: &str| -> Out {
        let mut cmd = Command::new("psql");
        cmd.arg(c)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                "select 1",
            ])
            .env("PGPASSWORD", password)
            .env("PGPASSFILE", "/dev/null")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null());
        cmd.output().unwrap().into()
    };
    // verify-full against postern's CA works.
    assert_eq!(
        run(&conn("pg1/features", "verify-full"), &token).ok(),
        "1\n"
    );
    // No TLS: refused.
    let out = run(&conn("pg1/features", "disable"), &token);
    assert!(out.fails(2).contains("over TLS only"), "{}", out.stderr);
    // A token for another database.
    let out = run(&conn("pg1/postgres", "require"), &token);
    assert!(
        out.fails(2)
            .contains("password authentication failed for user \"alice\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("run postern db login pg1"),
        "{}",
        out.stderr
    );
    // Unknown target: the token says which target it is for, as for any other target.
    let out = run(&conn("nope/features", "require"), &token);
    assert!(
        out.fails(2).contains("this token is for `pg1/features`"),
        "{}",
        out.stderr
    );
    for guess in ["pgt_guessed", "pgt_guessed_again", "pgt_guessed_once_more"] {
        let out = run(&conn("pg1/features", "require"), guess);
        assert!(
            out.fails(2).contains("password authentication failed"),
            "{}",
            out.stderr
        );
    }
    // Three failures in a row: the next attempt waits, whatever its password.
    let out = run(&conn("pg1/features", "require"), &token);
    assert!(
        out.fails(2)
            .contains("too many failed logins; try again in"),
        "{}",
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(1200));
    // A database the role does not allow cannot even get a token.
    let out = b.dev.run(
        &b.postern,
        &["db", "login", "pg1", "--database", "secrets"],
        "",
    );
    assert!(
        out.fails(1).contains("denied: no role allows it"),
        "{}",
        out.stderr
    );
    // Policy changes after the token was issued apply at connection time.
    b.postern
        .cli(&["admin", "user", "revoke", "alice", "dev"])
        .ok();
    let out = run(&conn("pg1/features", "require"), &token);
    assert!(
        out.fails(2)
            .contains("access to database `features` as `app` on `pg1` denied: no role allows it"),
        "{}",
        out.stderr
    );
    b.postern
        .cli(&["admin", "user", "grant", "alice", "dev"])
        .ok();
    // An expired token.
    let db = b.postern.data_dir().join("postern.db");
    let done = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE db_tokens SET expires_ms = (strftime('%s', 'now') - 60) * 1000")
        .status()
        .unwrap();
    assert!(done.success());
    let out = run(&conn("pg1/features", "require"), &token);
    let err = out.fails(2);
    assert!(
        err.contains("token expired at") && err.contains("run postern db login pg1"),
        "{err}"
    );
    // Garbage instead of a startup packet, and a target that is down.
    let mut s = std::net::TcpStream::connect(b.postern.pg).unwrap();
    std::io::Write::write_all(&mut s, b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut reply);
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    // The target goes down: a clear error naming it.
    b.dev.run(&b.postern, &["db", "login", "pg1"], "").ok();
    let token = b.token();
    let PgBastion { postern, pg, dev } = b;
    drop(pg);
    let out = run(&conn("pg1/features", "require"), &token);
    assert!(
        out.fails(2).contains("cannot reach target `pg1`"),
        "{}",
        out.stderr
    );
    drop((postern, dev));
}

/// A load balancer hands the cancel connection to another replica than the session's:
/// the query is cancelled all the same (the key found through the store).
#[test]
fn a_cancel_request_at_another_replica_cancels_the_query() {
    let b = PgBastion::start();
    let replica = b.postern.replica(None);
    let token = b.token();
    let port = b.postern.pg.port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(b.tls_client());
    rt.block_on(async {
        let conn_str = format!(
            "host=127.0.0.1 port={port} user=alice password={token} dbname=pg1/features sslmode=require"
        );
        let (client, conn) = tokio_postgres::connect(&conn_str, tls).await.unwrap();
        tokio::spawn(conn);
        let cancel = client.cancel_token();
        let started = Instant::now();
        let query = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
        // Past the replica's publishing interval, then Ctrl-C through the other replica.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let other = tokio::net::TcpStream::connect(("127.0.0.1", replica.pg))
            .await
            .unwrap();
        use tokio_postgres::tls::MakeTlsConnect;
        let mut make = tokio_postgres_rustls::MakeRustlsConnect::new(b.tls_client());
        let tls = <_ as MakeTlsConnect<tokio::net::TcpStream>>::make_tls_connect(
            &mut make,
            "127.0.0.1",
        )
        .unwrap();
        cancel.cancel_query_raw(other, tls).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the query was not cancelled")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
    });
    // A made-up key at the other replica cancels nothing and breaks nothing.
    {
        use std::io::Write;
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", replica.pg)).unwrap();
        let mut msg = 16i32.to_be_bytes().to_vec();
        msg.extend_from_slice(&80_877_102i32.to_be_bytes());
        msg.extend_from_slice(&4242i32.to_be_bytes());
        msg.extend_from_slice(&(-7i32).to_be_bytes());
        raw.write_all(&msg).unwrap();
    }
    let again = b.psql(&["-c", "select 41 + 1"]);
    assert_eq!(again.ok().trim(), "42");
}

#[test]
fn drivers_work_through_postern_and_see_real_sqlstates() {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
    use tokio_postgres::error::SqlState;

    let b = PgBastion::start();
    b.psql(&[
        "-c",
        "create table features (id int primary key, v float8[], blob bytea)",
    ])
    .ok();
    let token = b.token();
    let port = b.postern.pg.port();
    let ca = b.dev.home().join(".postern/ca.crt");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = || tokio_postgres_rustls::MakeRustlsConnect::new(b.tls_client());
    let conn_str = |db: &str, password: &str| {
        format!(
            "host=127.0.0.1 port={port} user=alice password={password} dbname={db} sslmode=require"
        )
    };
    rt.block_on(async {
        // tokio-postgres: prepared statements with binary parameters.
        let (client, conn) = tokio_postgres::connect(&conn_str("pg1/features", &token), tls())
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let insert = client
            .prepare("insert into features values ($1, $2, $3)")
            .await
            .unwrap();
        for i in 0..3i32 {
            let v = vec![f64::from(i), 0.5];
            client
                .execute(&insert, &[&i, &v, &vec![0u8, 1, 255]])
                .await
                .unwrap();
        }
        let row = client
            .query_one(
                "select count(*), sum(v[1]), (array_agg(blob))[1] from features where id >= $1",
                &[&0i32],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 3);
        assert_eq!(row.get::<_, f64>(1), 3.0);
        assert_eq!(row.get::<_, Vec<u8>>(2), vec![0u8, 1, 255]);
        // A pipeline of queries at once.
        let (a, c) = tokio::join!(
            client.query_one("select 1::int4", &[]),
            client.query_one("select 2::int4", &[])
        );
        assert_eq!(a.unwrap().get::<_, i32>(0) + c.unwrap().get::<_, i32>(0), 3);
        drop(client);
        let _ = task.await;

        // SQLSTATEs a driver can act on.
        let code = |r: Result<_, tokio_postgres::Error>| r.err().and_then(|e| e.code().cloned());
        // A token for pg1 used for another name: refused the same way whether that name
        // is a target or not (a name alone does not tell what exists).
        let nope = tokio_postgres::connect(&conn_str("nope/features", &token), tls()).await;
        assert_eq!(code(nope.map(|_| ())), Some(SqlState::INVALID_PASSWORD));
        let wrong = tokio_postgres::connect(&conn_str("pg1/features", "pgt_wrong"), tls()).await;
        assert_eq!(code(wrong.map(|_| ())), Some(SqlState::INVALID_PASSWORD));

        // sqlx, verifying postern's certificate.
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("alice")
            .password(&token)
            .database("pg1/features")
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert(&ca);
        let mut conn = PgConnection::connect_with(&opts).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("select count(*) from features where id < $1")
            .bind(2i32)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 2);
        conn.close().await.unwrap();
    });

    // psycopg 3.
    let script = format!(
        "import psycopg\nwith psycopg.connect(host='127.0.0.1', port={port}, user='alice', password='{token}', dbname='pg1/features', sslmode='verify-full', sslrootcert='{}') as c:\n    c.execute('insert into features (id) values (%s)', (10,))\n    print(c.execute('select count(*) from features').fetchone()[0])\n",
        ca.display()
    );
    let out = python(&script);
    assert_eq!(out.ok(), "4\n");

    // The transcripts hold the prepared statement with its parameters.
    let lines: Vec<serde_json::Value> = b.sessions().iter().flat_map(|s| b.transcript(s)).collect();
    let inserts: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["type"] == "statement" && l["sql"] == "insert into features values ($1, $2, $3)"
        })
        .collect();
    assert_eq!(inserts.len(), 3, "{lines:?}");
    assert_eq!(inserts[2]["protocol"], "extended");
    assert_eq!(inserts[2]["rows"], 1);
    assert_eq!(inserts[2]["params"][2], "\\x0001ff", "{}", inserts[2]);
    assert!(
        lines
            .iter()
            .any(|l| l["sql"] == "insert into features (id) values ($1)"
                && l["params"][0] == "\\x000a"),
        "{lines:?}"
    );
}

/// `python3 -c SCRIPT` (psycopg 3 is installed by script/bootstrap).
pub fn python(script: &str) -> Out {
    Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap()
        .into()
}

/// Starts `psql -c SQL` in the background and waits until its query runs on the target.
pub fn running(b: &PgBastion, sql: &str) -> std::process::Child {
    let mut child = b
        .psql_command("service=pg1")
        .args(["-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        let q = format!(
            "select count(*) from pg_stat_activity where query = '{sql}' and state = 'active'"
        );
        if b.pg.psql(&q).ok().trim() == "1" {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("query never ran; log:\n{}", b.postern.log());
}

#[test]
fn kill_lock_and_session_ttl_end_postgres_sessions_with_a_fatal_error() {
    let b = PgBastion::start_with_role(&["--max-session-ttl", "4s"]);
    // The TTL: a long query is cut at the deadline, and the target stops running it.
    let out = wait_child(running(&b, "select pg_sleep(20)"));
    // The warning arrives first, as a NoticeResponse psql prints while the query runs.
    assert!(
        out.stderr
            .contains("WARNING:  postern: this session ends in"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("FATAL:  postern: this session reached its time limit (4s, max_session_ttl)"),
        "{out:?}"
    );
    assert_eq!(b.ended()["end_reason"], "expired");
    for _ in 0..50 {
        let n = b.pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'");
        if n.ok().trim() == "0" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        b.pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(20)' and state = 'active'").ok().trim(),
        "0"
    );

    // An admin kill (the 4 s credentials are renewed first).
    b.refresh();
    let child = running(&b, "select pg_sleep(3.5)");
    let id = b.sessions().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.postern.cli(&["sessions", "kill", &id]).ok();
    let out = wait_child(child);
    assert!(
        out.stderr
            .contains("FATAL:  postern: an admin ended this session"),
        "{out:?}"
    );

    // A lock.
    b.refresh();
    let child = running(&b, "select pg_sleep(3.6)");
    b.postern.cli(&["admin", "user", "lock", "alice"]).ok();
    let out = wait_child(child);
    assert!(
        out.stderr
            .contains("access was withdrawn: the user is locked"),
        "{out:?}"
    );
    assert!(!b.postern.events("session.revoked").is_empty());
}

#[test]
fn bad_input_gets_errors_and_the_listener_keeps_serving() {
    use std::io::{Read, Write};
    let b = PgBastion::start();
    let addr = b.postern.pg;
    let answer = |bytes: &[u8]| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(bytes).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply
    };
    let fatal = |reply: &[u8]| String::from_utf8_lossy(reply).to_string();
    // A truncated startup packet: closed at the startup timeout, with nothing said.
    let truncated = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply
    });
    // A negative length, an oversized length, an unknown protocol version.
    for bad in [
        &(-8i32).to_be_bytes()[..],
        &(1i32 << 30).to_be_bytes()[..],
        &[0, 0, 0, 8, 0, 9, 0, 0][..],
    ] {
        let reply = answer(bad);
        assert_eq!(reply.first(), Some(&b'E'), "{bad:?}: {reply:?}");
        assert!(fatal(&reply).contains("08P01"), "{}", fatal(&reply));
    }
    assert!(
        fatal(&answer(&[0, 0, 0, 8, 0, 9, 0, 0])).contains("unsupported frontend protocol 9.0")
    );

    // 1,000 connections that send nothing do not stop the listener.
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Once they had two seconds to log in, they make room for one that does.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        b.psql(&["-c", "select 'still serving'"]).ok(),
        "still serving\n"
    );
    drop(idle);
    assert!(truncated.join().unwrap().is_empty());
}

#[test]
fn a_role_can_keep_statement_parameters_out_of_transcripts() {
    let b = PgBastion::start_with_role(&["--redact-parameters", "true"]);
    let port = b.postern.pg.port();
    let script = format!(
        "import psycopg\nwith psycopg.connect(host='127.0.0.1', port={port}, user='alice', password='{}', dbname='pg1/features', sslmode='require') as c:\n    print(c.execute('select %s::text', ('card-4242-secret',)).fetchone()[0])\n",
        b.token()
    );
    let out = python(&script);
    assert_eq!(out.ok(), "card-4242-secret\n");
    let s = b.ended();
    let lines = b.transcript(&s);
    let stmt = lines
        .iter()
        .find(|l| l["sql"] == "select $1::text")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(stmt["params"], "redacted");
    let raw = std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap();
    assert!(!raw.contains("card-4242"), "{raw}");
}

#[test]
fn a_session_that_cannot_be_recorded_does_not_run_and_large_rows_pass() {
    let b = PgBastion::start();
    // A 20 MB value in one row, both ways.
    let out = b.psql(&[
        "-c",
        "select length(repeat('ab', 10000000)), md5(repeat('ab', 10000000))",
    ]);
    let direct =
        b.pg.psql("select length(repeat('ab', 10000000)), md5(repeat('ab', 10000000))");
    assert_eq!(out.ok(), direct.ok());
    let out = b.psql(&["-c", "select repeat('x', 20000000)"]);
    assert_eq!(out.ok().trim_end().len(), 20_000_000);

    // Something that is not a directory where recordings go: the session never starts.
    let rec = b.postern.data_dir().join("recordings");
    std::fs::rename(&rec, b.postern.root().join("recordings.moved")).unwrap();
    std::fs::write(&rec, "not a directory").unwrap();
    let out = b.psql(&["-c", "select 'should not run'"]);
    assert!(
        out.fails(2)
            .contains("cannot record this session right now, so it is not allowed to run"),
        "{}",
        out.stderr
    );
    assert!(!b.postern.events("session.recording_failed").is_empty());
}

#[test]
fn postgres_17_direct_tls_with_alpn_is_accepted() {
    use std::io::{Read, Write};
    let b = PgBastion::start();
    let mut cfg = b.tls_client();
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(b.postern.pg).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    // A startup message straight after the handshake, no SSLRequest.
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    for kv in ["user", "alice", "database", "pg1/features"] {
        startup.extend_from_slice(kv.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut msg = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    tls.write_all(&msg).unwrap();
    let mut reply = [0u8; 9];
    tls.read_exact(&mut reply).unwrap();
    // AuthenticationSASL: the token is proven with SCRAM, bound to this TLS channel.
    assert_eq!(reply, [b'R', 0, 0, 0, 42, 0, 0, 0, 10]);
    let mut mechanisms = [0u8; 34];
    tls.read_exact(&mut mechanisms).unwrap();
    assert_eq!(&mechanisms, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"postgresql"[..]));
}

#[test]
fn targets_that_require_tls_are_reached_over_tls_and_verified() {
    let b = PgBastion::start_tls();
    // The cluster itself turns away clients without TLS.
    let plain: Out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=app dbname=features sslmode=disable connect_timeout=10",
            b.pg.port
        ))
        .args(["-X", "-c", "select 1"])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/dev/null")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert!(
        plain.code != 0 && plain.stderr.contains("no encryption"),
        "{plain:?}"
    );

    // verify-full against the cluster's CA: the backend sees an encrypted connection.
    let ssl = "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()";
    assert_eq!(b.psql(&["-c", ssl]).ok().trim(), "t|TLSv1.3");

    // require: encrypted, the certificate not checked (as libpq's sslmode=require).
    let add = |name: &str, port: u16, mode: &str| {
        b.postern
            .cli(&[
                "admin",
                "target",
                "add",
                name,
                "--postgres",
                &format!("127.0.0.1:{port}"),
                "--tls-mode",
                mode,
                "--label",
                "env=test",
            ])
            .ok();
        b.postern
            .cli_stdin(
                &[
                    "admin",
                    "target",
                    "set-credential",
                    name,
                    "--db-user",
                    "app",
                    "--password-stdin",
                ],
                &format!("{APP_PASSWORD}\n"),
            )
            .ok();
        b.dev.run(&b.postern, &["db", "login", name], "").ok();
    };
    let psql_to = |service: &str| -> Out {
        b.psql_command(&format!("service={service}"))
            .args(["-c", ssl])
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    add("pg2", b.pg.port, "require");
    assert_eq!(psql_to("pg2").ok().trim(), "t|TLSv1.3");

    // disable: the cluster refuses postern, and the developer is told why.
    add("pg3", b.pg.port, "disable");
    let out = psql_to("pg3");
    assert!(
        out.code != 0
            && out.stderr.contains("target `pg3` refused postern")
            && out.stderr.contains("no encryption"),
        "{out:?}"
    );

    // verify-full against a CA that did not sign the target's certificate: refused.
    let other = Postgres::start_tls();
    add("pg4", other.port, "verify-full");
    let out = psql_to("pg4");
    assert!(
        out.code != 0
            && out
                .stderr
                .contains("TLS with target `pg4` failed: invalid peer certificate")
            && out.stderr.contains("target_ca_file"),
        "{out:?}"
    );
}

#[test]
fn a_connection_left_at_rest_serves_the_same_users_next_session_reset() {
    let b = PgBastion::start();
    let pid = |out: Out| -> String { out.ok().trim().to_string() };
    // A session leaves state behind of every kind DISCARD ALL resets, and ends at rest.
    let out = b.psql(&[
        "-c",
        "SET search_path TO pg_catalog",
        "-c",
        "PREPARE p AS SELECT 1",
        "-c",
        "CREATE TEMP TABLE scratch (x int)",
        "-c",
        "LISTEN jobs",
        "-c",
        "SELECT pg_advisory_lock(42)",
        "-c",
        "SELECT pg_backend_pid()",
    ]);
    let first = out.ok().lines().last().unwrap_or("").to_string();
    let ended = b.ended();
    let lines = b.transcript(&ended);
    let reset = lines.last().unwrap();
    assert_eq!(
        (reset["type"].as_str(), reset["connection"].as_str()),
        (Some("reset"), Some("kept")),
        "{lines:?}"
    );
    // The next session gets the same backend, with none of that state.
    let out = b.psql(&[
        "-c",
        "SELECT pg_backend_pid(), current_setting('search_path'), (SELECT count(*) FROM pg_prepared_statements), to_regclass('pg_temp.scratch') IS NULL, (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')",
    ]);
    assert_eq!(out.ok(), format!("{first}|\"$user\", public|0|t|0|0\n"));
    let s = b.ended();
    let file = std::fs::read_to_string(s["recordings"][0]["path"].as_str().unwrap()).unwrap();
    let header: serde_json::Value = serde_json::from_str(file.lines().next().unwrap()).unwrap();
    assert_eq!(header["reused_backend"], true, "{header}");
    assert_eq!(header["backend_pid"].to_string(), first);

    // A session that ends inside a transaction is not kept: the target hears the
    // Terminate and rolls back; the next session has a new backend.
    b.psql(&["-c", "CREATE TABLE kept_or_not (x int)"]).ok();
    let open = pid(b.psql(&[
        "-c",
        "BEGIN; INSERT INTO kept_or_not VALUES (1); SELECT pg_backend_pid();",
    ]));
    let next = pid(b.psql(&[
        "-c",
        "SELECT pg_backend_pid() || '/' || (SELECT count(*) FROM kept_or_not)",
    ]));
    let (next_pid, rows) = next.split_once('/').unwrap();
    assert_ne!(
        next_pid, open,
        "a connection left in a transaction was reused"
    );
    assert_eq!(rows, "0", "the open transaction was rolled back");

    // A kept connection that died while it waited is noticed when taken: the session
    // runs on a new one.
    b.pg.psql(&format!("SELECT pg_terminate_backend({next_pid})"))
        .ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = pid(b.psql(&["-c", "SELECT pg_backend_pid()"]));
    assert_ne!(after, next_pid);
    // Every session is its own: its own row, recording and audit events.
    let starts = b.postern.events("session.start");
    assert!(starts.len() >= 6, "{starts:?}");
    assert!(
        starts
            .iter()
            .any(|e| e["details"]["reused_backend"] == true)
    );
}

/// `/metrics` read as Prometheus would: each sample's name, labels and value.
fn scrape(b: &PgBastion) -> Vec<(String, serde_json::Value, f64)> {
    let mut parse = Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom prometheus_client.parser import text_string_to_metric_families\nprint(json.dumps([[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = parse.stdin.take().unwrap();
        stdin.write_all(scrape_text(b).as_bytes()).unwrap();
    }
    let out: Out = parse.wait_with_output().unwrap().into();
    serde_json::from_str(out.ok()).unwrap()
}

/// `/metrics` as text.
fn scrape_text(b: &PgBastion) -> String {
    let ca = b.postern.root().join("tls-ca.pem");
    let script = format!(
        r#"
import ssl, urllib.request
ctx = ssl.create_default_context(cafile={ca:?})
print(urllib.request.urlopen("https://127.0.0.1:{port}/metrics", context=ctx).read().decode())
"#,
        ca = ca.display().to_string(),
        port = b.postern.api.port()
    );
    python(&script).ok().to_string()
}

fn sample(
    samples: &[(String, serde_json::Value, f64)],
    name: &str,
    labels: serde_json::Value,
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| l.get(k) == Some(v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn metrics_count_what_the_audit_log_records() {
    let b = PgBastion::start();
    b.psql(&["-c", "select 1"]).ok();
    b.psql(&["-c", "select repeat('x', 1000)"]).ok();
    // A wrong token: one failed login.
    let out: Out = b
        .psql_command("host=127.0.0.1 dbname=pg1/features user=alice sslmode=require")
        .env("PGPORT", b.postern.pg.port().to_string())
        .env("PGPASSWORD", "pgt_not-a-token")
        .env_remove("PGSERVICEFILE")
        .args(["-c", "select 1"])
        .output()
        .unwrap()
        .into();
    assert_ne!(out.code, 0);
    let live = running(&b, "select pg_sleep(3)");
    let m = scrape(&b);
    assert_eq!(
        sample(
            &m,
            "postern_sessions_live",
            json!({ "protocol": "postgres" })
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "postern_sessions_live", json!({ "protocol": "ssh" })),
        0.0
    );
    let out = live.wait_with_output().unwrap();
    assert!(out.status.success());
    b.ended();
    let m = scrape(&b);
    let starts = b.postern.events("session.start").len() as f64;
    assert_eq!(starts, 3.0);
    assert_eq!(
        sample(
            &m,
            "postern_sessions_started_total",
            json!({ "protocol": "postgres" })
        ),
        starts
    );
    assert_eq!(
        sample(
            &m,
            "postern_access_decisions_total",
            json!({ "result": "allow" })
        ),
        starts
    );
    assert_eq!(
        sample(
            &m,
            "postern_sessions_ended_total",
            json!({ "protocol": "postgres", "reason": "client exit" })
        ),
        b.postern.events("session.end").len() as f64
    );
    assert_eq!(
        sample(
            &m,
            "postern_sessions_live",
            json!({ "protocol": "postgres" })
        ),
        0.0
    );
    assert_eq!(
        sample(
            &m,
            "postern_auth_total",
            json!({ "method": "db_token", "result": "failure" })
        ),
        b.postern
            .events("auth.failure")
            .iter()
            .filter(|e| e["details"]["method"] == "db_token")
            .count() as f64
    );
    assert!(
        sample(
            &m,
            "postern_auth_total",
            json!({ "method": "db_token", "result": "failure" })
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            "postern_auth_total",
            json!({ "method": "password", "result": "success" })
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            "postern_relayed_bytes_total",
            json!({ "protocol": "postgres", "direction": "out" })
        ) > 1000.0
    );
    assert!(sample(&m, "postern_audit_append_seconds_count", json!({})) >= starts);
    assert!(sample(&m, "postern_recording_write_seconds_count", json!({})) >= 1.0);
    // The dashboard in dist/ asks only for metrics postern serves (a family without a
    // sample yet, such as store errors, is still declared in the scrape).
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dist/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let text = scrape_text(&b);
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("postern_"))
            {
                let family = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    text.contains(&format!("# HELP {family} ")),
                    "dashboard panel {} asks for {name}, which postern does not serve",
                    panel["title"]
                );
            }
        }
    }
    // No label names a user, a target or an address.
    for (name, labels, _) in &m {
        for v in labels.as_object().unwrap().values() {
            let v = v.as_str().unwrap_or("");
            assert!(
                !v.contains("alice") && !v.contains("pg1") && !v.contains("127.0.0.1"),
                "{name} {labels}"
            );
        }
    }
}

#[test]
fn doctor_logs_in_to_a_postgres_target_with_each_credential() {
    let b = PgBastion::start();
    let out = b.postern.cli(&["doctor", "pg1"]);
    assert!(
        out.ok().contains("ok    login to `features` as `app`"),
        "{out:?}"
    );
    // A database user the roles allow but postern holds no password for.
    b.postern
        .cli(&[
            "admin",
            "role",
            "add",
            "ro",
            "--allow",
            "env=test",
            "--databases",
            "features",
            "--db-users",
            "reader",
        ])
        .ok();
    let out = b.postern.cli(&["doctor", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("FAIL  a credential for database user `reader`"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("set-credential pg1 --db-user reader"),
        "{out:?}"
    );
    // A wrong password: the target's own refusal.
    b.postern
        .cli_stdin(
            &[
                "admin",
                "target",
                "set-credential",
                "pg1",
                "--db-user",
                "reader",
                "--password-stdin",
            ],
            "wrong\n",
        )
        .ok();
    let out = b.postern.cli(&["doctor", "pg1", "--db-user", "reader"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("FAIL  login to `features` as `reader`"),
        "{out:?}"
    );
}
