//! A throwaway OpenSSH server: its own host key, config and port; no system files used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{Out, free_port, wait_for_port};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    dir: TempDir,
    child: Option<Child>,
    pub port: u16,
    /// `ssh-ed25519 AAAA…` of this server's host key.
    pub host_key: String,
    /// A client key listed in authorized_keys (empty when started without one).
    pub client_key: PathBuf,
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Options<'a> {
    /// Install a client key in authorized_keys.
    pub authorized_key: bool,
    /// Lines for TrustedUserCAKeys (postern's target CA).
    pub trusted_ca: Option<&'a str>,
    /// More sshd_config lines (a first match wins in sshd_config: these come first).
    pub config: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            authorized_key: true,
            trusted_ca: None,
            config: "",
        }
    }
}

impl Sshd {
    pub fn start() -> Sshd {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Sshd {
        // sshd's privilege separation needs this directory; it is created, never removed.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("sshd-it")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        keygen(&d.join("host_key"), "throwaway-sshd");
        let host_key = std::fs::read_to_string(d.join("host_key.pub")).expect("host pub");
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let client_key = d.join("client_key");
        let authorized = d.join("authorized_keys");
        if opts.authorized_key {
            keygen(&client_key, "test-client");
            std::fs::copy(d.join("client_key.pub"), &authorized).expect("authorized_keys");
        } else {
            std::fs::write(&authorized, "").expect("authorized_keys");
        }
        std::fs::write(d.join("trusted_ca.pub"), opts.trusted_ca.unwrap_or("")).expect("ca file");
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:PORT {host_key}\n"),
        )
        .expect("known_hosts");
        let port = free_port();
        let known = std::fs::read_to_string(d.join("known_hosts")).unwrap_or_default();
        std::fs::write(
            d.join("known_hosts"),
            known.replace("PORT", &port.to_string()),
        )
        .expect("known_hosts");
        let config = format!(
            "{extra}ListenAddress 127.0.0.1:{port}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
TrustedUserCAKeys {d}/trusted_ca.pub
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
Subsystem sftp internal-sftp
AcceptEnv LANG LC_* TERM POSTERN_TEST_*
MaxStartups 200
SetEnv HOME={d}/home
",
            d = d.display(),
            extra = opts.config,
        );
        // Sessions get a home of their own: the login shell reads no startup files of the
        // machine's account (whose tools may stall a shell's start).
        std::fs::create_dir_all(d.join("home")).expect("home");
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {SSHD}: {e}; run script/bootstrap (openssh-server)")
            });
        wait_for_port(port, Duration::from_secs(15), "sshd", &d.join("sshd.log"));
        Sshd {
            dir,
            child: Some(child),
            port,
            host_key,
            client_key,
        }
    }

    /// Where its files are (host_key.pub among them).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The processes this sshd runs for connections (its direct children).
    pub fn children(&self) -> usize {
        let Some(pid) = self.child.as_ref().map(|c| c.id().to_string()) else {
            return 0;
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                // pid (comm) state ppid …: the command may hold spaces, so read after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    == Some(pid.as_str())
            })
            .count()
    }

    /// `ssh` straight to this server with its client key, verifying the host key.
    pub fn ssh(&self, login: &str, command: &str) -> Out {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"])
            .arg(&self.client_key)
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg(format!("{login}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("ssh")
            .into()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: the pid is our child's, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
