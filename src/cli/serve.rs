//! `postern serve`: prepare the data dir, bind the listeners, run until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, LogFormat};
use crate::credentials::{self, KeyStore};
use crate::server::{Server, Shared};

#[derive(clap::Args)]
pub struct Args {
    /// SSH listener address [default: 127.0.0.1:2222].
    #[arg(long, env = "POSTERN_SSH_LISTEN", value_name = "ADDR")]
    ssh_listen: Option<SocketAddr>,
    /// PostgreSQL listener address [default: 127.0.0.1:6432].
    #[arg(long, env = "POSTERN_PG_LISTEN", value_name = "ADDR")]
    pg_listen: Option<SocketAddr>,
    /// HTTPS API listener address [default: 127.0.0.1:8443].
    #[arg(long, env = "POSTERN_API_LISTEN", value_name = "ADDR")]
    api_listen: Option<SocketAddr>,
    /// Log lines as text or as one JSON object per line (for log shippers) [default: the
    /// config's log.format, text].
    #[arg(long, env = "POSTERN_LOG_FORMAT", value_enum)]
    log_format: Option<crate::config::LogFormat>,
}

fn init_logging(config: &Config) {
    // RUST_LOG, when set, overrides log.level (handy for one-off debugging).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| config.tracing_filter().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Every connection, upstream connection and open recording is a file descriptor: the
/// soft limit (often 1024) is raised to the hard one, so the listeners' budgets, not the
/// descriptor table, decide how many connections postern holds.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = lim.rlim_max;
            lim.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                warn!("cannot raise the open files limit; connections may be refused early");
            }
        }
    }
}

pub async fn run(mut config: Config, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(a) = args.ssh_listen {
        config.ssh.listen = a;
    }
    if let Some(a) = args.pg_listen {
        config.postgres.listen = a;
    }
    if let Some(a) = args.api_listen {
        config.api.listen = a;
    }
    if let Some(f) = args.log_format {
        config.log.format = f;
    }
    init_logging(&config);
    raise_open_files_limit();
    let dir = config.data_dir.clone();
    // Before the keys are read: a key rotated after this moment is not this process's.
    let started_ms = crate::audit::now_ms();
    super::shared_keys::master_from_env(&config)?;
    let mut loaded = KeyStore::load(&dir, &config.tls.hostnames, true)?;
    let first_start = !loaded.created.is_empty();
    for path in &loaded.created {
        info!(path = %path.display(), "created");
    }
    let store = super::shared_keys::open(&config, &mut loaded.keys, true).await?;
    if let Some(r) = &loaded.reissued {
        warn!(
            reason = r.reason,
            names = %r.after.join(", "),
            "TLS server certificate issued again by postern's TLS CA (clients that trust the CA need no change)"
        );
        let event = crate::audit::AuditEvent::new(
            "tls.certificate_reissued",
            &crate::audit::Actor::system(),
            crate::audit::Outcome::Success,
            serde_json::json!({ "reason": r.reason, "names_before": r.before, "names": r.after }),
        );
        store.append_audit(&event).await?;
    }
    let keys = loaded.keys;
    let host_fp = credentials::fingerprint(&keys.host_key);
    let ssh_config = crate::ssh::config(&keys);
    let tls = crate::api::tls::server_config(&config, &keys).map_err(anyhow::Error::msg)?;
    let tls = std::sync::Arc::new(tls);
    let ca_pem = keys
        .tls
        .trusted_pem()
        .with_context(|| format!("cannot read {}", keys.tls.ca_cert.display()))?;
    let api = crate::api::Api::new(tls.clone(), ca_pem);
    let pg_tls = crate::api::tls::for_postgres(&tls);
    let pg_end_point = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::pem_file_iter(&keys.tls.server_cert)
            .ok()
            .and_then(|mut certs| certs.next())
            .and_then(Result::ok)
            .and_then(|c| credentials::scram::end_point(&c))
    };
    let repeats = crate::audit::repeats::Repeats::new(config.audit.repeat_window.0);
    // Recordings must be writable before anyone is let in: a session that cannot be
    // recorded does not run.
    let recordings = crate::recording::RecordingStore::from_config(&config)?;
    recordings.probe().await.with_context(|| {
        format!(
            "recordings cannot be written to {}; fix the storage or [recordings] in the config, then start again",
            recordings.describe()
        )
    })?;
    let server = Server::bind(Shared {
        repeats,
        recordings,
        seals: Default::default(),
        config,
        ssh_config,
        keys,
        store,
        live: Default::default(),
        api,
        pg_tls,
        pg_end_point,
        pg_cancel: Default::default(),
        pg_backends: Default::default(),
        replica: Default::default(),
        lease_renewed_ms: Default::default(),
        started_ms,
    })
    .await?;
    // Signals are watched before the ready line: whoever waits for it may stop us at once.
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
        }
        trigger.cancel();
    });
    let bound = server.bound();
    if first_start {
        print_next_steps(&dir, &bound.ssh, &bound.api, &host_fp);
    }
    println!(
        "postern ready: ssh {} postgres {} api {} (data dir {})",
        bound.ssh,
        bound.postgres,
        bound.api,
        dir.display()
    );

    server.run(shutdown).await;
    Ok(ExitCode::SUCCESS)
}

fn print_next_steps(dir: &std::path::Path, ssh: &SocketAddr, api: &SocketAddr, host_fp: &str) {
    let d = dir.display();
    println!(
        "\
postern initialised its data dir {d}: host key, user CA, target CA, TLS CA and master key (0600).
SSH host key fingerprint: {host_fp}

Next steps (in another terminal):
  1. a role:    postern --data-dir {d} admin role add dev --allow 'env=dev' --logins ubuntu
  2. a user:    postern --data-dir {d} admin user add alice --role dev
                postern --data-dir {d} admin user add-key alice ~/.ssh/id_ed25519.pub
                (or, for short-lived certificates instead of a key:
                 postern --data-dir {d} admin user set-password alice --password-stdin)
  3. a target:  postern --data-dir {d} admin target add gpu-1 --ssh 10.0.0.5:22 --label env=dev --scan-host-key
                (shows the host key's fingerprint to confirm; or --host-key \"KEY\" as
                 `ssh-keyscan -t ed25519 10.0.0.5` prints it)
  4. on gpu-1:  let its sshd trust postern's target CA for logins:
                postern --data-dir {d} admin target-ca | sudo tee /etc/ssh/postern_target_ca.pub
                echo 'TrustedUserCAKeys /etc/ssh/postern_target_ca.pub' | sudo tee -a /etc/ssh/sshd_config
                sudo systemctl reload ssh
  5. check:     postern --data-dir {d} access check --user alice --target gpu-1 --login ubuntu
For PostgreSQL: a role with --databases DB --db-users USER, a target added with
--postgres HOST:PORT, and the password postern logs in with:
  postern --data-dir {d} admin target set-credential DB-TARGET --db-user USER --password-stdin
Or describe all of it in a file and run: postern --data-dir {d} apply -f config/policy.toml
Developers then connect with: ssh -p {port} ubuntu@gpu-1@{host}
  (after `postern login --server https://{api} --user alice` when using certificates)
",
        api = api,
        port = ssh.port(),
        host = ssh.ip(),
    );
}
