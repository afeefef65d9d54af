//! Errors about postern's own key files: always naming the file and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "refusing to start: private key file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`",
        path = .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot {action} {path}: {source}", path = .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}); restore it from backup", path = .path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{path} is missing: is this a postern data dir? run `postern serve --data-dir DIR` once to create one", path = .path.display())]
    Missing { path: PathBuf },
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot encode a key: {0}")]
    Encode(String),
    #[error("cannot create the TLS certificate: {0}")]
    Tls(String),
    #[error("the password is too short: use at least {0} characters")]
    WeakPassword(usize),
    #[error("cannot decrypt a stored secret: {0}")]
    Decrypt(&'static str),
}
