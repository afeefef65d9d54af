//! The real `postern` binary: `serve` on a temp data dir and free ports, and its CLI.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{Out, free_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_postern");

pub struct Postern {
    dir: TempDir,
    server: Option<Child>,
    lines: Option<Receiver<String>>,
    /// Everything `serve` printed on stdout so far.
    pub stdout: Vec<String>,
    pub ssh: SocketAddr,
    pub pg: SocketAddr,
    pub api: SocketAddr,
    /// The data dir is a tmpfs of its own, unmounted on drop.
    tmpfs: bool,
    /// The PostgreSQL store every command uses (`POSTERN_STORE_URL`); None: the embedded one.
    pub store_url: Option<String>,
    /// Environment every command gets (`serve` and the CLI): credentials of a bucket.
    pub env: Vec<(String, String)>,
}

/// A fresh database on the cluster `POSTERN_TEST_STORE` names (`postgres://USER:PW@HOST:PORT`),
/// when it is set: `script/test` runs part of the suite again that way, on the PostgreSQL store.
fn test_store() -> Option<String> {
    let base = std::env::var("POSTERN_TEST_STORE")
        .ok()
        .filter(|s| !s.is_empty())?;
    Some(create_store_database(&base))
}

/// Creates an empty database on the cluster at `base` and returns its URL.
pub fn create_store_database(base: &str) -> String {
    let name = format!("store_{}", super::postgres::uuid_like());
    let out: Out = Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql")
        .into();
    out.ok();
    format!("{base}/{name}")
}

impl Postern {
    /// A fresh, not yet created, data dir; nothing runs yet.
    pub fn new() -> Postern {
        let dir = tempfile::Builder::new()
            .prefix("postern-it")
            .tempdir()
            .expect("temp dir");
        Postern {
            dir,
            server: None,
            lines: None,
            stdout: Vec::new(),
            ssh: SocketAddr::from(([127, 0, 0, 1], free_port())),
            pg: SocketAddr::from(([127, 0, 0, 1], free_port())),
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            tmpfs: false,
            store_url: test_store(),
            env: Vec::new(),
        }
    }

    /// A fresh data dir whose store is the PostgreSQL database at `url`.
    pub fn on_store(url: &str) -> Postern {
        let mut p = Postern::new();
        p.store_url = Some(url.to_string());
        p
    }

    /// As this, with `pairs` in every command's environment.
    pub fn with_env(mut self, pairs: &[(&str, &str)]) -> Postern {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Points `cmd` at this postern's store, with the extra environment.
    fn with_store(&self, cmd: &mut Command) {
        match &self.store_url {
            Some(u) => cmd.env("POSTERN_STORE_URL", u),
            None => cmd.env_remove("POSTERN_STORE_URL"),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
    }

    /// As `new`, with the data dir on a tmpfs of `size` (`64m`) so a test can fill it.
    /// Mounting needs root, as the test machine runs.
    pub fn new_on_tmpfs(size: &str) -> Postern {
        let mut p = Postern::new();
        let dir = p.data_dir();
        std::fs::create_dir(&dir).expect("data dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs data dir needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p.tmpfs = true;
        p
    }

    /// Runs `serve`'s review clock this far ahead of the real one.
    pub fn set_clock_ahead(&self, by: std::time::Duration) {
        std::fs::write(
            self.root().join("clock-offset-ms"),
            by.as_millis().to_string(),
        )
        .expect("clock file");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `postern serve` with the listen addresses given as flags.
    pub fn serve_command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--ssh-listen")
            .arg(self.ssh.to_string())
            .arg("--pg-listen")
            .arg(self.pg.to_string())
            .arg("--api-listen")
            .arg(self.api.to_string())
            .env_remove("POSTERN_CONFIG")
            // The test clock (debug builds): `set_clock_ahead` moves due dates past.
            .env("POSTERN_TEST_CLOCK", self.root().join("clock-offset-ms"))
            .env("RUST_LOG", "info");
        if let Ok(l) = std::env::var("POSTERN_TEST_LOG") {
            c.env("RUST_LOG", l);
        }
        self.with_store(&mut c);
        c
    }

    /// Starts `serve` and waits for its ready line. Ports are picked before `serve` binds
    /// them, so another process may take one first: then it starts again on new ones.
    pub fn start(self) -> Postern {
        self.start_with(|_| {})
    }

    /// As `start`, with `more` adding to `serve`'s command (arguments, environment).
    pub fn start_with(mut self, more: impl Fn(&mut Command)) -> Postern {
        for _ in 0..3 {
            let mut cmd = self.serve_command();
            more(&mut cmd);
            match self.try_spawn(cmd) {
                Err(e) if e.contains("Address already in use") => {
                    self.ssh = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    self.pg = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    self.api = SocketAddr::from(([127, 0, 0, 1], free_port()));
                }
                Err(e) => panic!("{e}"),
                Ok(_) => return self,
            }
        }
        panic!(
            "postern serve found its ports taken three times; log:\n{}",
            self.log()
        );
    }

    pub fn spawn(&mut self, cmd: Command) {
        if let Err(e) = self.try_spawn(cmd) {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self, mut cmd: Command) -> Result<String, String> {
        let log = std::fs::File::create(self.dir.path().join("serve.log")).expect("log file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn postern serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.server = Some(child);
        self.lines = Some(rx);
        self.try_wait_for_line("postern ready:", Duration::from_secs(30))
    }

    /// Waits until `serve` prints a line containing `needle`.
    fn try_wait_for_line(&mut self, needle: &str, limit: Duration) -> Result<String, String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let Some(rx) = &self.lines else { break };
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self
                        .server
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        return Err(format!(
                            "postern serve exited with {status} before printing {needle:?}; log:\n{}",
                            self.log()
                        ));
                    }
                }
                Err(_) => break,
            }
        }
        Err(format!(
            "postern serve did not print {needle:?} within {limit:?}; stdout {:?}; log:\n{}",
            self.stdout,
            self.log()
        ))
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Sends `signal` and waits for `serve` to exit (at most `limit`).
    pub fn stop_with(&mut self, signal: i32, limit: Duration) -> ExitStatus {
        let mut child = self.server.take().expect("serve is running");
        // SAFETY: the pid is our child's.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                if let Some(rx) = self.lines.take() {
                    self.stdout.extend(rx.try_iter());
                }
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "postern serve did not exit within {limit:?} of signal {signal}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM, Duration::from_secs(15))
    }

    /// Stops `serve` cleanly and starts it again with the same flags (a key rotation
    /// takes effect at the next start).
    pub fn restart(&mut self) {
        assert_eq!(self.stop().code(), Some(0));
        let cmd = self.serve_command();
        self.spawn(cmd);
    }

    /// The `key:step` of every `keys.rotated` event, oldest first.
    pub fn rotation_steps(&self) -> Vec<String> {
        self.events("keys.rotated")
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["details"]["key"].as_str().unwrap_or_default(),
                    e["details"]["step"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Runs `postern --data-dir DIR ARGS…` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_stdin(args, "")
    }

    /// `cli` with `--config FILE`.
    pub fn cli_config(&self, args: &[&str], config: &Path) -> Out {
        let mut all = vec!["--config", config.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// The audit events whose type starts with `kind`, as `audit search --json` lists them.
    pub fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = self.cli(&["audit", "search", "--type", kind, "--json"]);
        match serde_json::from_str(out.ok()) {
            Ok(serde_json::Value::Array(events)) => events,
            other => panic!("audit search printed {other:?}"),
        }
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Out {
        self.cli_env(args, stdin, &[])
    }

    /// `cli_stdin` with extra environment variables (e.g. `HOME` for developer commands).
    pub fn cli_env(&self, args: &[&str], stdin: &str, env: &[(&str, &Path)]) -> Out {
        let mut cmd = Command::new(BIN);
        self.with_store(&mut cmd);
        let mut child = cmd
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("POSTERN_CONFIG")
            .env_remove("POSTERN_DATA_DIR")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postern");
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("postern output").into()
    }

    /// Every file under the data dir (store, keys, recordings) whose bytes contain `needle`.
    pub fn files_holding(&self, needle: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, needle: &[u8], hits: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, needle, hits);
                } else if std::fs::read(&p)
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                {
                    hits.push(p);
                }
            }
        }
        let mut hits = Vec::new();
        walk(&self.data_dir(), needle.as_bytes(), &mut hits);
        hits
    }

    /// Writes a file under the test's temp dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write test file");
        p
    }
}

impl Drop for Postern {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.tmpfs {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.data_dir())
                .output();
        }
    }
}

/// A second `serve` on the same data dir (a replica sharing the store), on its own ports;
/// killed when dropped.
pub struct Replica {
    pub child: Child,
    pub ssh: u16,
    pub pg: u16,
    pub api: u16,
}

impl Postern {
    /// Starts a replica of this postern: the same data dir and, when given, config file.
    pub fn replica(&self, config: Option<&Path>) -> Replica {
        let (ssh, pg, api) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--ssh-listen", &format!("127.0.0.1:{ssh}")])
            .args(["--pg-listen", &format!("127.0.0.1:{pg}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .env_remove("POSTERN_CONFIG")
            .env("POSTERN_TEST_CLOCK", self.root().join("clock-offset-ms"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        self.with_store(&mut cmd);
        let mut child = cmd.spawn().expect("spawn a replica");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("postern ready"));
        assert!(ready, "the replica did not start");
        // Whatever it prints later is read, so its stdout never fills or breaks.
        std::thread::spawn(move || lines.for_each(drop));
        Replica {
            child,
            ssh,
            pg,
            api,
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
