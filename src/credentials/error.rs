//! Errors about postern's own key files: always naming the file and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "refusing to start: private file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`",
        path = .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "refusing to start: directory {path} is open to group or others (mode {mode:04o}); run `chmod 700 {path}`",
        path = .path.display()
    )]
    DirPermissions { path: PathBuf, mode: u32 },
    #[error(
        "refusing to start: {path} belongs to uid {uid}, but postern runs as uid {euid}; run `chown -R {euid} {path}` or run postern as its owner",
        path = .path.display()
    )]
    Owner { path: PathBuf, uid: u32, euid: u32 },
    #[error(
        "refusing to start: private file {path} is a symbolic link; put the file itself there (mode 600)",
        path = .path.display()
    )]
    Symlink { path: PathBuf },
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
