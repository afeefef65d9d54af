//! The command line: one file per command; every command is a thin layer over the
//! library modules, printing for people by default and JSON with `--json`.

mod access;
mod admin;
mod apply;
mod audit;
mod check_config;
mod docs;
mod doctor;
mod login;
mod ls;
mod output;
mod policy_test;
mod request;
mod review;
mod serve;
mod sessions;
mod shared_keys;
mod store_cmd;
mod streams;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::credentials::KeyStore;
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Session-brokering bastion for SSH and PostgreSQL"
)]
pub struct Cli {
    /// Config file (TOML); without one, built-in defaults apply.
    #[arg(long, global = true, env = "POSTERN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data dir holding keys, the embedded store and recordings [default: ./data].
    #[arg(long, global = true, env = "POSTERN_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bastion.
    Serve(serve::Args),
    /// Validate the config file without starting.
    CheckConfig,
    /// Create, update (and with --prune remove) users, roles and targets from a policy file.
    Apply(apply::Args),
    /// Manage users, roles and targets one at a time.
    #[command(subcommand)]
    Admin(admin::Command),
    /// Ask the policy engine what it would decide.
    #[command(subcommand)]
    Access(access::Command),
    /// Check a policy file against expected decisions (no data dir, no server).
    #[command(subcommand)]
    Policy(policy_test::Command),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(audit::Command),
    /// List, show, export and search recorded sessions.
    #[command(subcommand)]
    Sessions(sessions::Command),
    /// Play a recorded SSH session in the terminal with its real timing.
    Replay(sessions::ReplayArgs),
    /// Log in: a short-lived SSH certificate in ~/.postern for a key made here.
    Login(login::LoginArgs),
    /// Who you are logged in as, your roles, and how long your credential lasts.
    Status,
    /// The targets you may reach now, with the logins or databases on each.
    Ls {
        /// Print the server's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Just-in-time access: ask for a role for a time; reviewers approve or deny.
    #[command(subcommand)]
    Request(request::Command),
    /// Periodic access reviews: campaigns, certify or revoke each grant, reports.
    #[command(subcommand)]
    Review(review::Command),
    /// Database credentials for PostgreSQL targets.
    #[command(subcommand)]
    Db(login::DbCommand),
    /// Check a target as a session would reach it, and say what to fix.
    Doctor(doctor::Args),
    /// The store itself: copy the embedded store into PostgreSQL.
    #[command(subcommand)]
    Store(store_cmd::Command),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the manual page, or write one for every command with --dir.
    Man(docs::ManArgs),
}

/// Exit codes: 0 success, 1 a negative answer (access denied), 2 an error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        quiet_on_closed_stdout();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postern: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A command whose reader went away (`postern audit search | head -1`) ends quietly, as
/// `cat` and `grep` do: SIGPIPE keeps its default action (exit status 141). Only `serve`
/// keeps Rust's default of ignoring it; sockets are written with MSG_NOSIGNAL either way.
fn quiet_on_closed_stdout() {
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Made from the command line's own definitions: no config needed, a broken one
    // does not stand in the way.
    match cli.command {
        Command::Completions(args) => return docs::completions(args),
        Command::Man(args) => return docs::man(args),
        Command::Policy(cmd) => return policy_test::run(cmd),
        _ => {}
    }
    let config = load_config(&cli)?;
    match cli.command {
        Command::Serve(args) => serve::run(config, args).await,
        Command::CheckConfig => check_config::run(&cli.config, &config),
        Command::Apply(args) => apply::run_with_exit_code(&config, args).await,
        Command::Admin(cmd) => admin::run(&config, cmd).await,
        Command::Access(cmd) => access::run(&config, cmd).await,
        Command::Audit(cmd) => audit::run(&config, cmd).await,
        Command::Sessions(cmd) => sessions::run(&config, cmd).await,
        Command::Replay(args) => sessions::replay(&config, args).await,
        Command::Login(args) => login::login(args).await,
        Command::Status => login::status().await,
        Command::Ls { json } => ls::run(json).await,
        Command::Db(cmd) => login::db(cmd).await,
        Command::Request(cmd) => request::run(cmd).await,
        Command::Review(cmd) => review::run(cmd).await,
        Command::Doctor(args) => doctor::run(&config, args).await,
        Command::Store(cmd) => store_cmd::run(&config, cmd).await,
        Command::Completions(_) | Command::Man(_) | Command::Policy(_) => Ok(ExitCode::SUCCESS),
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Ok(url) = std::env::var("POSTERN_STORE_URL")
        && !url.is_empty()
    {
        config.store.url = url;
    }
    config.check()?;
    Ok(config)
}

/// Opens the data dir for a local command, creating it on first use like `serve` does.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    shared_keys::master_from_env(config)?;
    let mut keys = KeyStore::load_or_create(&config.data_dir, &config.tls.hostnames)?.keys;
    let store = shared_keys::open(config, &mut keys, false).await?;
    crate::server::mirror::expect_witness(&store, &config.audit.witness).await;
    Ok(store)
}
