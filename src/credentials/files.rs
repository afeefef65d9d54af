//! Private files and directories: created 0600/0700, refused when others can read them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::CredentialError;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError {
    let path = path.to_path_buf();
    move |source| CredentialError::Io {
        action,
        path,
        source,
    }
}

/// Creates a directory (and parents) with mode 0700 when it does not exist.
pub fn create_dir_private(path: &Path) -> Result<(), CredentialError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("create directory", path))
}

/// Writes a new file with mode 0600 and syncs it; an existing file is an error.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CredentialError> {
    write_mode(path, data, 0o600)
}

/// Replaces a file atomically with a new 0600 one (a temporary file renamed over it), so
/// a reader sees the old content or the new, and the new is never briefly readable.
pub fn replace_private(path: &Path, data: &[u8]) -> Result<(), CredentialError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let _ = fs::remove_file(tmp);
    write_mode(tmp, data, 0o600)?;
    fs::rename(tmp, path).map_err(io("replace", path))
}

pub fn write_public(path: &Path, data: &[u8]) -> Result<(), CredentialError> {
    write_mode(path, data, 0o644)
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), CredentialError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// Fails when a private file can be read or written by group or others.
pub fn check_private(path: &Path) -> Result<(), CredentialError> {
    let mode = fs::metadata(path)
        .map_err(io("inspect", path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

pub fn read_private(path: &Path) -> Result<String, CredentialError> {
    check_private(path)?;
    fs::read_to_string(path).map_err(io("read", path))
}
