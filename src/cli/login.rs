//! The developer's commands: `postern login`, `postern status`, `postern db login`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use russh::keys::ssh_key::LineEnding;
use serde_json::{Value, json};

use crate::audit::format_clock;
use crate::client::https::{Client, Reply, ServerUrl, Trust};
use crate::client::{Home, Profile, pgpass_upsert, service_upsert};
use crate::credentials::ssh_cert::now_secs;
use crate::duration::Dur;

/// Log in to postern: get a short-lived SSH certificate (and an API token) for a new key.
#[derive(ClapArgs)]
pub struct LoginArgs {
    /// The API, e.g. https://bastion:8443 (default: the server of the last login).
    #[arg(long, env = "POSTERN_SERVER")]
    server: Option<String>,
    /// Your postern user name (default: the user of the last login).
    #[arg(long, conflicts_with = "bot")]
    user: Option<String>,
    /// Log in as this bot (a pipeline or agent), with its join token from --token-stdin.
    #[arg(long, requires = "token_stdin")]
    bot: Option<String>,
    /// Read the bot's join token from the first line of standard input.
    #[arg(long, requires = "bot", conflicts_with_all = ["password_stdin", "totp"])]
    token_stdin: bool,
    /// Read the password from the first line of standard input (scripts, service accounts).
    #[arg(long)]
    password_stdin: bool,
    /// The current one-time code, for users enrolled in TOTP.
    #[arg(long, value_name = "CODE")]
    totp: Option<String>,
    /// Verify the server against this CA (PEM; `postern admin tls-ca` prints it) instead of
    /// trusting its certificate on first use.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Get a short-lived database credential: writes ~/.pgpass and ~/.pg_service.conf.
    Login(DbLoginArgs),
}

#[derive(ClapArgs)]
pub struct DbLoginArgs {
    /// The postgres target.
    target: String,
    /// The database (default: the first one your roles list for the target).
    #[arg(long)]
    database: Option<String>,
    /// The database user (default: the first one your roles list for the target).
    #[arg(long)]
    db_user: Option<String>,
}

/// A refusal the user can act on: printed as one line, exit status 1.
pub(super) fn refused(cmd: &str, message: &str) -> ExitCode {
    eprintln!("postern {cmd}: {}", crate::printable::cell(message));
    ExitCode::from(1)
}

/// The server's `message` for an error reply.
pub(super) fn message(r: &Reply) -> String {
    r.body["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the server answered HTTP {}", r.status))
}

fn ask(prompt: &str, hidden: bool) -> Result<String, String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "no terminal to ask for the {prompt}; use --password-stdin and --totp CODE"
        ));
    }
    if hidden {
        rpassword::prompt_password(format!("{prompt}: ")).map_err(|e| e.to_string())
    } else {
        eprint!("{prompt}: ");
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    }
}

pub(super) fn left(secs: u64) -> String {
    Dur::from_secs(secs).to_string()
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let home = Home::locate().map_err(anyhow::Error::msg)?;
    let previous = home.profile().ok();
    let Some(server) = args
        .server
        .clone()
        .or_else(|| previous.as_ref().map(|p| p.server.clone()))
    else {
        return Ok(refused(
            "login",
            "which server? pass --server https://HOST:8443",
        ));
    };
    let url = match ServerUrl::parse(&server) {
        Ok(u) => u,
        Err(e) => return Ok(refused("login", &e)),
    };
    let Some(user) = args
        .bot
        .clone()
        .or_else(|| args.user.clone())
        .or_else(|| previous.as_ref().map(|p| p.user.clone()))
    else {
        return Ok(refused("login", "which user? pass --user NAME"));
    };
    let same_server = previous
        .as_ref()
        .is_some_and(|p| p.server == url.to_string());
    let ca_pem = match &args.ca_file {
        Some(f) => Some(
            std::fs::read(f)
                .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", f.display()))?,
        ),
        None if same_server && previous.as_ref().is_some_and(|p| p.trust == "ca") => {
            std::fs::read(home.path("ca.crt")).ok()
        }
        None => None,
    };
    let trust = match (&ca_pem, home.pinned(&url.authority())) {
        (Some(pem), _) => Trust::Ca(pem.clone()),
        (None, Some(fp)) => Trust::Pinned(fp),
        (None, None) => Trust::FirstUse,
    };
    let client = match Client::new(url.clone(), &trust) {
        Ok(c) => c,
        Err(e) => return Ok(refused("login", &e)),
    };

    let password = if args.password_stdin || args.token_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        match ask(&format!("password for {user} at {url}"), true) {
            Ok(p) => p,
            Err(e) => return Ok(refused("login", &e)),
        }
    };
    let key = crate::credentials::new_ed25519(&format!("postern {user}"))?;
    let public = key.public_key().to_openssh()?;
    let mut totp = args.totp.clone();
    let reply = loop {
        let (path, mut req) = if args.bot.is_some() {
            (
                "/v1/login/bot",
                json!({ "bot": user, "token": password, "public_key": public }),
            )
        } else {
            (
                "/v1/login",
                json!({ "user": user, "password": password, "public_key": public }),
            )
        };
        if let Some(code) = &totp {
            req["totp"] = json!(code);
        }
        let reply = match client.call("POST", path, None, Some(&req)).await {
            Ok(r) => r,
            Err(e) => return Ok(refused("login", &e)),
        };
        if reply.status == 401 && reply.body["code"] == "totp_required" && totp.is_none() {
            match ask("one-time code", false) {
                Ok(c) => {
                    totp = Some(c);
                    continue;
                }
                Err(_) => {
                    return Ok(refused(
                        "login",
                        "this account needs a one-time code: pass --totp CODE",
                    ));
                }
            }
        }
        break reply;
    };
    if reply.status != 200 {
        return Ok(refused("login", &message(&reply)));
    }
    let b = &reply.body;
    let field = |k: &str| b[k].as_str().unwrap_or_default().to_string();

    home.create().map_err(anyhow::Error::msg)?;
    let trust_kind = if let Some(pem) = &ca_pem {
        // The server, verified by a CA the user trusts, names the CAs of a rotation: the
        // next one is kept beside the user's file, so the rotation does not lock this
        // client out; when the trust came from the copy kept here, the server's bundle
        // replaces it, so a retired CA is dropped too.
        let offered = field("tls_ca");
        let kept = if args.ca_file.is_none() && !offered.trim().is_empty() {
            offered.into_bytes()
        } else {
            with_new_cas(pem, &offered)
        };
        home.write("ca.crt", &kept).map_err(anyhow::Error::msg)?;
        "ca"
    } else {
        if let (Trust::FirstUse, Some(fp)) = (&trust, client.seen()) {
            home.pin(&url.authority(), &fp)
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "trusting {url} on first use: its TLS certificate is {fp} (saved in {})",
                home.path("known_servers").display()
            );
        }
        let ca = field("tls_ca");
        if !ca.is_empty() {
            home.write("ca.crt", ca.as_bytes())
                .map_err(anyhow::Error::msg)?;
        }
        "pin"
    };
    let private = key.to_openssh(LineEnding::LF)?;
    let key_path = home
        .write("id_ed25519", private.as_bytes())
        .map_err(anyhow::Error::msg)?;
    home.write("id_ed25519.pub", format!("{public}\n").as_bytes())
        .map_err(anyhow::Error::msg)?;
    let cert_path = home
        .write(
            "id_ed25519-cert.pub",
            format!("{}\n", field("certificate")).as_bytes(),
        )
        .map_err(anyhow::Error::msg)?;
    let roles: Vec<String> = b["roles"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let valid_before = b["valid_before"].as_u64().unwrap_or(0);
    let profile = Profile {
        server: url.to_string(),
        user: user.clone(),
        roles: roles.clone(),
        token: field("token"),
        valid_before,
        serial: field("serial"),
        ssh_port: b["ssh_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(2222),
        postgres_port: b["postgres_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(6432),
        trust: trust_kind.into(),
    };
    home.save_profile(&profile).map_err(anyhow::Error::msg)?;

    let until_ms = crate::audit::secs_to_ms(valid_before);
    println!("logged in to {url} as {user} (roles: {})", roles.join(", "));
    println!(
        "certificate serial {}, valid until {} ({})",
        profile.serial,
        format_clock(until_ms),
        field("ttl")
    );
    println!("  key:         {}", key_path.display());
    println!("  certificate: {}", cert_path.display());
    println!();
    println!("Add this to ~/.ssh/config so plain ssh uses the certificate:");
    println!();
    println!("Host {}", url.host);
    println!("    Port {}", profile.ssh_port);
    println!("    IdentityFile {}", key_path.display());
    println!("    CertificateFile {}", cert_path.display());
    println!();
    println!("then: ssh LOGIN@TARGET@{}", url.host);
    Ok(ExitCode::SUCCESS)
}

/// Reads the certificate's serial and end from `id_ed25519-cert.pub`.
fn local_cert(home: &Home) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(home.path("id_ed25519-cert.pub")).ok()?;
    let cert = russh::keys::Certificate::from_openssh(text.trim()).ok()?;
    Some((cert.serial(), cert.valid_before()))
}

/// Who you are as the server sees it now (a revoked credential, a lock or changed roles
/// show as they are); the local copy only when the server cannot be asked, and then said.
pub async fn status() -> anyhow::Result<ExitCode> {
    let home = Home::locate().map_err(anyhow::Error::msg)?;
    let (profile, _, client) = match session(&home) {
        Ok(s) => s,
        Err(e) => return Ok(refused("status", &e)),
    };
    let c = crate::printable::cell;
    println!("server:       {}", c(&profile.server));
    let reply = client
        .call("GET", "/v1/whoami", Some(&profile.token), None)
        .await;
    let now = now_secs();
    match reply {
        Ok(r) if r.status == 200 => {
            let b = &r.body;
            let roles: Vec<String> = b["roles"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r.as_str()).map(c).collect())
                .unwrap_or_default();
            let serial = b["cert_serial"]
                .as_str()
                .map(str::to_string)
                .or_else(|| b["cert_serial"].as_u64().map(|s| s.to_string()))
                .unwrap_or_default();
            let until = b["expires"].as_u64().unwrap_or(0);
            println!("user:         {}", c(b["user"].as_str().unwrap_or("")));
            println!("roles:        {}", roles.join(", "));
            println!(
                "certificate:  {} (serial {serial})",
                home.path("id_ed25519-cert.pub").display()
            );
            let at = format_clock(crate::audit::secs_to_ms(until));
            println!(
                "valid until:  {at} ({} left)",
                left(until.saturating_sub(now))
            );
            Ok(ExitCode::SUCCESS)
        }
        // The server refused the credential: revoked, expired, the user locked or gone.
        Ok(r) => {
            println!("user:         {}", c(&profile.user));
            Ok(refused("status", &message(&r)))
        }
        Err(e) => {
            let (serial, until) = local_cert(&home)
                .map(|(s, u)| (s.to_string(), u))
                .unwrap_or((profile.serial.clone(), profile.valid_before));
            println!("user:         {} (local copy)", c(&profile.user));
            println!("roles:        {} (local copy)", profile.roles.join(", "));
            println!(
                "certificate:  serial {serial}, valid until {}",
                format_clock(crate::audit::secs_to_ms(until))
            );
            eprintln!(
                "postern status: {}; what is shown is the copy in ~/.postern from the last login, which the server may have revoked since",
                c(&e)
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// A client for the server of the last login, trusting it the same way.
pub(super) fn session(home: &Home) -> Result<(Profile, ServerUrl, Client), String> {
    let profile = home.profile()?;
    let url = ServerUrl::parse(&profile.server)?;
    let trust =
        if profile.trust == "ca" {
            Trust::Ca(std::fs::read(home.path("ca.crt")).map_err(|e| {
                format!(
                    "cannot read {}: {e}; run postern login --ca-file FILE",
                    home.path("ca.crt").display()
                )
            })?)
        } else {
            Trust::Pinned(home.pinned(&url.authority()).ok_or(
                "~/.postern/known_servers does not pin the server; run postern login again",
            )?)
        };
    let client = Client::new(url.clone(), &trust)?;
    Ok((profile, url, client))
}

pub async fn db(cmd: DbCommand) -> anyhow::Result<ExitCode> {
    let DbCommand::Login(args) = cmd;
    let home = Home::locate().map_err(anyhow::Error::msg)?;
    let (profile, url, client) = match session(&home) {
        Ok(s) => s,
        Err(e) => return Ok(refused("db login", &e)),
    };
    if profile.valid_before <= now_secs() {
        return Ok(refused(
            "db login",
            &crate::credentials::expired_message(crate::audit::secs_to_ms(profile.valid_before)),
        ));
    }
    let mut req = json!({ "target": args.target });
    if let Some(d) = &args.database {
        req["database"] = json!(d);
    }
    if let Some(u) = &args.db_user {
        req["db_user"] = json!(u);
    }
    let reply = match client
        .call("POST", "/v1/db/login", Some(&profile.token), Some(&req))
        .await
    {
        Ok(r) => r,
        Err(e) => return Ok(refused("db login", &e)),
    };
    if reply.status != 200 {
        return Ok(refused("db login", &message(&reply)));
    }
    let b: &Value = &reply.body;
    let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
    let (dbname, token, target) = (s("dbname"), s("token"), s("target"));
    let port = b["postgres_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(profile.postgres_port);
    let user_home = home
        .dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));

    let pgpass = user_home.join(".pgpass");
    let old = std::fs::read_to_string(&pgpass).unwrap_or_default();
    let new = pgpass_upsert(&old, &url.host, port, &dbname, &profile.user, &token);
    crate::credentials::replace_private(&pgpass, new.as_bytes())?;

    let service_file = user_home.join(".pg_service.conf");
    let old = std::fs::read_to_string(&service_file).unwrap_or_default();
    let ca = home.path("ca.crt");
    let mut body = vec![
        ("host", url.host.clone()),
        ("port", port.to_string()),
        ("dbname", dbname.clone()),
        ("user", profile.user.clone()),
    ];
    if ca.exists() {
        body.push(("sslmode", "verify-full".into()));
        body.push(("sslrootcert", ca.display().to_string()));
    } else {
        body.push(("sslmode", "require".into()));
    }
    let new = service_upsert(&old, &target, &body);
    crate::credentials::replace_private(&service_file, new.as_bytes())?;

    let until = format_clock(b["expires"].as_i64().unwrap_or(0).saturating_mul(1000));
    let c = crate::printable::cell;
    println!(
        "database credential for {} on {target} ({} as {}), valid until {until} ({})",
        c(&profile.user),
        c(&s("database")),
        c(&s("db_user")),
        c(&s("ttl"))
    );
    println!("  password in {}", pgpass.display());
    println!("  service [{target}] in {}", service_file.display());
    println!();
    println!("psql \"service={target}\"");
    Ok(ExitCode::SUCCESS)
}

/// `pem` and, after it, the certificates in `offered` it does not hold.
fn with_new_cas(pem: &[u8], offered: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut held: Vec<CertificateDer> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    let mut out = pem.to_vec();
    for block in offered.split_inclusive("-----END CERTIFICATE-----") {
        let Ok(c) = CertificateDer::from_pem_slice(block.as_bytes()) else {
            continue;
        };
        if held.contains(&c) {
            continue;
        }
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(block.trim().as_bytes());
        out.push(b'\n');
        held.push(c);
    }
    out
}
