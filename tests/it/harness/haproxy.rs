//! A throwaway HAProxy (Debian's) in TCP mode in front of postern replicas: one frontend
//! per protocol on a free port, round robin, each server checked with `GET /v1/ready`
//! over TLS on its API port every 300 ms. Stopped by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, wait_for_port};

/// A replica as the balancer sees it: the port to forward to and its API port (checks).
#[derive(Clone, Copy)]
pub struct Server {
    pub port: u16,
    pub api: u16,
}

pub struct Haproxy {
    _dir: TempDir,
    child: Child,
    log: PathBuf,
    /// The frontend ports, in the order the frontends were given.
    pub ports: Vec<u16>,
}

impl Haproxy {
    pub fn start(frontends: &[(&str, Vec<Server>)]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("haproxy-it")
            .tempdir()
            .expect("temp dir");
        let mut cfg = String::from(
            "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n    retries 3\n    option redispatch\n",
        );
        let mut ports = Vec::new();
        for (name, servers) in frontends {
            let port = free_port();
            ports.push(port);
            cfg.push_str(&format!(
                "\nfrontend {name}\n    bind 127.0.0.1:{port}\n    default_backend {name}_servers\n\nbackend {name}_servers\n    balance roundrobin\n    option httpchk GET /v1/ready\n    http-check expect status 200\n    default-server inter 300ms fall 1 rise 1\n"
            ));
            for (i, s) in servers.iter().enumerate() {
                cfg.push_str(&format!(
                    "    server s{i} 127.0.0.1:{} check port {} check-ssl verify none\n",
                    s.port, s.api
                ));
            }
        }
        let conf = dir.path().join("haproxy.cfg");
        std::fs::write(&conf, cfg).expect("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).expect("err"))
            .spawn()
            .expect("haproxy (script/bootstrap installs it)");
        for p in &ports {
            wait_for_port(*p, Duration::from_secs(10), "haproxy", &log);
        }
        Haproxy {
            _dir: dir,
            child,
            log,
            ports,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..250 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
