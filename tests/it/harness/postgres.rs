//! A throwaway PostgreSQL cluster: initdb in a temp dir (as the `postgres` OS user when
//! running as root), SCRAM-SHA-256 for TCP, socket in the temp dir, 127.0.0.1 only.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{Out, free_port, is_root, stop_pid};

pub struct Postgres {
    dir: TempDir,
    pub port: u16,
    /// The `postgres` superuser's password (SCRAM-SHA-256).
    pub password: String,
    /// For a TLS-only cluster: the CA (PEM) that signed its certificate.
    pub ca_file: Option<PathBuf>,
    /// `pg_ctl start`'s server options, to start it again after `stop`.
    options: String,
}

/// A fresh CA and a server certificate it signs for 127.0.0.1 and localhost, written to
/// `dir` as ca.crt, server.crt and server.key (0600).
pub fn make_certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(DnType::CommonName, "throwaway target CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("ca.crt");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("server.crt");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("server.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
}

/// The newest installed server's bin dir, e.g. /usr/lib/postgresql/15/bin.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("no PostgreSQL server under /usr/lib/postgresql; run script/bootstrap")
}

/// Runs a server binary, as `postgres` when we are root (initdb refuses root).
fn as_postgres(bin: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// A cluster that accepts TCP clients only over TLS (`hostssl` in pg_hba.conf), with
    /// a certificate from its own CA (`ca_file`).
    pub fn start_tls() -> Postgres {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("pg-it")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let password = format!("pw-{}", uuid_like());
        std::fs::write(d.join("pwfile"), &password).expect("pwfile");
        if tls {
            make_certificates(d);
        }
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(d);
                    c
                },
                "chown",
            );
        }
        let data = d.join("data");
        let mut initdb = as_postgres(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", d.join("pwfile").display()));
        run(initdb, "initdb");
        let mut options = String::new();
        if tls {
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            let text: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, text).expect("pg_hba.conf");
            options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                d.join("server.crt").display(),
                d.join("server.key").display()
            );
        }
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_prepared_transactions=10 -c password_encryption=scram-sha-256{options}",
            d.display()
        );
        let ca_file = tls.then(|| d.join("ca.crt"));
        let pg = Postgres {
            dir,
            port,
            password,
            ca_file,
            options,
        };
        pg.start_again();
        pg
    }

    /// `pg_ctl start` on the cluster's data dir and port (again, after `stop`).
    pub fn start_again(&self) {
        let d = self.dir.path();
        let mut pg_ctl = as_postgres(bin_dir().join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(d.join("data"))
            .arg("-l")
            .arg(d.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &self.options])
            .arg("start");
        run(pg_ctl, "pg_ctl start");
    }

    /// Stops the server (fast shutdown, by the PID in its pidfile); `start_again` restarts it.
    pub fn stop(&self) {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            // SIGINT: PostgreSQL's fast shutdown.
            stop_pid(pid, libc::SIGINT, Duration::from_secs(15));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// `psql` over TCP as `user` with `password`; returns what it printed.
    pub fn psql_as(&self, user: &str, password: &str, sql: &str) -> Out {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=prefer connect_timeout=10",
                self.port
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .output()
            .expect("psql")
            .into()
    }

    pub fn psql(&self, sql: &str) -> Out {
        self.psql_as("postgres", &self.password, sql)
    }
}

pub fn uuid_like() -> String {
    let mut b = [0u8; 12];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
