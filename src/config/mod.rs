//! postern's configuration: one typed file (`postern.toml`), environment variables and flags.
//!
//! Precedence, highest first: command-line flag, environment variable, config file, default.
//! Unknown keys are errors, reported with file, line and column.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

mod storage;
pub use storage::{Recordings, S3, StoreConfig};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where keys, the embedded store and recordings live.
    pub data_dir: PathBuf,
    /// How long sessions get to end on their own after SIGTERM/SIGINT.
    pub shutdown_grace: Dur,
    /// Connections served at once by each listener (SSH, PostgreSQL, API); more are
    /// accepted and closed at once.
    pub max_connections: usize,
    /// Connections still logging in on each listener; when full, a new connection takes
    /// the place of the oldest that has waited at least two seconds.
    pub max_unauthenticated: usize,
    /// Connections still logging in from one source (an IPv4 address, an IPv6 /64) on
    /// each listener, like OpenSSH's PerSourceMaxStartups.
    pub max_unauthenticated_per_source: usize,
    pub ssh: Ssh,
    pub postgres: Postgres,
    pub api: Listener,
    pub tls: Tls,
    pub log: Log,
    pub audit: Audit,
    pub notify: Notify,
    pub review: Review,
    pub store: StoreConfig,
    pub recordings: Recordings,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default = "default_ssh_listen")]
    pub listen: SocketAddr,
    /// How long postern waits for a target's TCP connect and SSH handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// How long before `max_session_ttl` ends a session its user is warned.
    #[serde(default = "default_expiry_warning")]
    pub expiry_warning: Dur,
    /// End sessions when the `postern login` certificate that opened them expires.
    #[serde(default = "yes")]
    pub disconnect_on_credential_expiry: bool,
    /// Session channels (shells, commands, sftp) open at once on one client connection,
    /// like OpenSSH's MaxSessions; forwarded connections are not counted.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// How long a client has from connecting to being authenticated (OpenSSH's
    /// LoginGraceTime).
    #[serde(default = "default_login_grace_time")]
    pub login_grace_time: Dur,
}

fn default_login_grace_time() -> Dur {
    Dur::from_secs(120)
}

fn default_authentication_timeout() -> Dur {
    Dur::from_secs(15)
}

fn default_max_sessions() -> u32 {
    10
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    #[serde(default = "default_pg_listen")]
    pub listen: SocketAddr,
    /// Accept clients without TLS (development only: tokens would cross the network in clear).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How long postern waits for a target's TCP connect and authentication.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Threads serving PostgreSQL connections, each with its own event loop; 0 = one per two
    /// CPUs (at least one).
    #[serde(default)]
    pub threads: usize,
    /// CA certificates (PEM) for targets with `tls_mode = verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ca_file: Option<PathBuf>,
    /// How clients prove they hold a database token: `scram-sha-256` (the token never
    /// crosses the wire; bound to postern's certificate over TLS), or `password` (the token
    /// sent inside TLS, for clients without SCRAM).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How long a client has from connecting to being authenticated, TLS and the token
    /// proof included (PostgreSQL's authentication_timeout).
    #[serde(default = "default_authentication_timeout")]
    pub authentication_timeout: Dur,
    /// How long a target connection a user's session left cleanly (idle, no transaction)
    /// is kept, reset with `DISCARD ALL`, for that same user's next session with the same
    /// target, database, database user and settings; "0s" turns reuse off.
    #[serde(default = "default_backend_idle_timeout")]
    pub backend_idle_timeout: Dur,
}

fn default_backend_idle_timeout() -> Dur {
    Dur::from_secs(30)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    Password,
}

fn default_expiry_warning() -> Dur {
    Dur::from_secs(60)
}

fn default_connect_timeout() -> Dur {
    Dur::from_secs(10)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Names and addresses put in the generated server certificate.
    pub hostnames: Vec<String>,
    /// A certificate chain (PEM) to serve instead of the generated one; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Mirror every audit event as a JSON line for a SIEM: "" (off), "stdout", or a file path.
    pub mirror: String,
    /// Every signed checkpoint (the chain head) as a JSON line: "" (off), "stdout", or a
    /// file path outside the data dir (append-only storage, another machine's mount).
    pub witness: String,
    /// `audit prune` removing events younger than this asks for `--yes`.
    pub min_retention: Dur,
    /// Repeated identical failures (same type, actor and reason) within this window are one
    /// event followed by a summary with their count.
    pub repeat_window: Dur,
}

/// Notifications about access requests, by webhook.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notify {
    /// Where request notifications are POSTed as JSON (with a Slack-compatible `text`):
    /// "" (off), or an http:// or https:// URL.
    pub webhook: String,
    /// A CA certificate (PEM) an https webhook may chain to besides the public roots.
    pub ca_file: String,
    /// How long before a grant ends its requester's channel hears of it.
    pub grant_warning: Dur,
}

/// Periodic access reviews.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Review {
    /// Start a campaign over every standing grant this often (absent: only by hand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<Dur>,
    /// How long reviewers have, for campaigns started on schedule (and by default).
    pub due: Dur,
    /// What happens to items undecided at the due date: "revoke" or "report".
    pub on_due: OnDue,
    /// Grants unused for this long are flagged stale.
    pub stale_after: Dur,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnDue {
    Revoke,
    Report,
}

impl Default for Review {
    fn default() -> Self {
        Review {
            every: None,
            due: Dur::from_secs(14 * 86_400),
            on_due: OnDue::Revoke,
            stale_after: Dur::from_secs(90 * 86_400),
        }
    }
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            webhook: String::new(),
            ca_file: String::new(),
            grant_warning: Dur::from_secs(10 * 60),
        }
    }
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            mirror: String::new(),
            witness: String::new(),
            min_retention: Dur::from_secs(30 * 86_400),
            repeat_window: Dur::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter: `info`, `debug`, `postern=debug,sqlx=warn`.
    pub level: String,
    pub format: LogFormat,
}

fn listen(s: &str) -> Listener {
    Listener {
        listen: s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
    }
}

// A section that sets only some keys keeps the default address.
fn default_ssh_listen() -> SocketAddr {
    listen("127.0.0.1:2222").listen
}

fn default_pg_listen() -> SocketAddr {
    listen("127.0.0.1:6432").listen
}

fn default_api_listen() -> SocketAddr {
    listen("127.0.0.1:8443").listen
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            shutdown_grace: Dur::from_secs(10),
            max_connections: 1024,
            max_unauthenticated: 512,
            max_unauthenticated_per_source: 128,
            ssh: Ssh {
                listen: default_ssh_listen(),
                connect_timeout: default_connect_timeout(),
                expiry_warning: default_expiry_warning(),
                disconnect_on_credential_expiry: true,
                max_sessions: default_max_sessions(),
                login_grace_time: default_login_grace_time(),
            },
            postgres: Postgres {
                listen: default_pg_listen(),
                allow_plaintext: false,
                connect_timeout: default_connect_timeout(),
                threads: 0,
                target_ca_file: None,
                client_auth: ClientAuth::default(),
                authentication_timeout: default_authentication_timeout(),
                backend_idle_timeout: default_backend_idle_timeout(),
            },
            api: Listener {
                listen: default_api_listen(),
            },
            tls: Tls::default(),
            log: Log::default(),
            audit: Audit::default(),
            notify: Notify::default(),
            review: Review::default(),
            store: StoreConfig::default(),
            recordings: Recordings::default(),
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            cert_file: None,
            key_file: None,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// An error in a file a person wrote, located so they can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct LocatedError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl LocatedError {
    /// Locates byte `offset` of `src` as a 1-based line and column.
    pub fn new(path: &Path, src: &str, offset: usize, message: String) -> Self {
        let before = src.get(..offset.min(src.len())).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        LocatedError {
            path: path.display().to_string(),
            line,
            column,
            // toml messages may span lines; the first says what is wrong.
            message: message.trim().replace('\n', " "),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path given to --config")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] LocatedError),
    #[error("config: {0}")]
    Value(String),
}

impl Config {
    /// Reads a config file; keys it does not set keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &src)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| {
            LocatedError::new(
                path,
                src,
                e.span().map_or(0, |s| s.start),
                e.message().into(),
            )
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks values that each parse on their own but make no sense.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::Value(
                "max_connections must be at least 1".into(),
            ));
        }
        for (name, v) in [
            ("max_unauthenticated", self.max_unauthenticated),
            (
                "max_unauthenticated_per_source",
                self.max_unauthenticated_per_source,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Value(format!("{name} must be at least 1")));
            }
        }
        for (name, d) in [
            ("ssh.login_grace_time", self.ssh.login_grace_time),
            (
                "postgres.authentication_timeout",
                self.postgres.authentication_timeout,
            ),
            ("audit.repeat_window", self.audit.repeat_window),
        ] {
            if d.as_secs() == 0 {
                return Err(ConfigError::Value(format!("{name} must be at least 1s")));
            }
        }
        if !self.notify.webhook.is_empty() {
            crate::http::Endpoint::parse(&self.notify.webhook)
                .map_err(|e| ConfigError::Value(format!("notify.webhook: {e}")))?;
        }
        self.recordings.check()?;
        if self.ssh.connect_timeout.as_secs() == 0 {
            return Err(ConfigError::Value(
                "ssh.connect_timeout must be at least 1s".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Value("data_dir must not be empty".into()));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Value(
                "tls.cert_file and tls.key_file go together: set both or neither".into(),
            ));
        }
        if self.tracing_filter().is_err() {
            return Err(ConfigError::Value(format!(
                "log.level `{}` is not a valid filter; try `info` or `postern=debug`",
                self.log.level
            )));
        }
        Ok(())
    }

    /// The recordings dir: `[recordings] dir`, or `recordings/` in the data dir.
    pub fn recordings_dir(&self) -> PathBuf {
        if self.recordings.dir.is_empty() {
            self.data_dir.join("recordings")
        } else {
            PathBuf::from(&self.recordings.dir)
        }
    }

    pub fn tracing_filter(&self) -> Result<tracing_subscriber::EnvFilter, String> {
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| e.to_string())
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match toml::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_located() {
        let src = "data_dir = \"/tmp/x\"\n\n[ssh]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n";
        let e = Config::parse(Path::new("p.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.toml:5:1: unknown field `lisen`"), "{e}");
    }

    #[test]
    fn a_section_with_some_keys_keeps_the_other_defaults() {
        let src =
            "[postgres]\ntarget_ca_file = \"/etc/ca.pem\"\n[ssh]\nexpiry_warning = \"2m\"\n[api]\n";
        let cfg = Config::parse(Path::new("p.toml"), src).unwrap();
        assert_eq!(cfg.postgres.listen.to_string(), "127.0.0.1:6432");
        assert_eq!(cfg.ssh.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(cfg.api.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(cfg.ssh.connect_timeout.as_secs(), 10);
    }

    #[test]
    fn bad_duration_is_located() {
        let src = "shutdown_grace = \"2 parsecs\"\n";
        let e = Config::parse(Path::new("p.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.toml:1:18: invalid duration `2 parsecs`"),
            "{e}"
        );
    }

    #[test]
    fn the_example_file_is_complete_and_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/postern.toml");
        let src = std::fs::read_to_string(&path).unwrap();
        let cfg = Config::parse(&path, &src).unwrap();
        // Every key of the default config appears in the example.
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(src.contains(&format!("{key} = ")), "example lacks `{key}`");
        }
        assert_eq!(cfg.ssh.listen.port(), 2222);
    }
}
