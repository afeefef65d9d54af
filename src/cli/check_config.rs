//! `postern check-config`: validate the configuration without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

pub fn run(path: &Option<PathBuf>, config: &Config) -> anyhow::Result<ExitCode> {
    // Loading already validated it; say what was checked and what results.
    match path {
        Some(p) => println!("{}: OK", p.display()),
        None => println!("no config file given: built-in defaults"),
    }
    println!(
        "data dir {}; ssh {}; postgres {}; api {}",
        config.data_dir.display(),
        config.ssh.listen,
        config.postgres.listen,
        config.api.listen
    );
    Ok(ExitCode::SUCCESS)
}
