//! Private files and directories: created 0600/0700, refused when others can read them.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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

/// As `replace_private`, for a file anyone may read (a public key, a CA certificate).
pub fn replace_public(path: &Path, data: &[u8]) -> Result<(), CredentialError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let _ = fs::remove_file(tmp);
    write_mode(tmp, data, 0o644)?;
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

/// Fails when a private file is a symbolic link, belongs to another user, or can be read
/// or written by group or others.
pub fn check_private(path: &Path) -> Result<(), CredentialError> {
    let meta = fs::symlink_metadata(path).map_err(io("inspect", path))?;
    if meta.file_type().is_symlink() {
        return Err(CredentialError::Symlink {
            path: path.to_path_buf(),
        });
    }
    check_meta(path, &meta, 0o077, false)
}

/// Fails when a directory postern keeps private (the data dir, `keys`, `tls`,
/// `recordings`) belongs to another user or is open to group or others. The directory
/// may be reached through a symbolic link (a data dir on another disk); what it points
/// at is checked.
pub fn check_dir_private(path: &Path) -> Result<(), CredentialError> {
    let meta = fs::metadata(path).map_err(io("inspect", path))?;
    if !meta.is_dir() {
        return Err(CredentialError::Io {
            action: "use",
            path: path.to_path_buf(),
            source: std::io::Error::other("it is not a directory"),
        });
    }
    check_meta(path, &meta, 0o077, true)
}

fn check_meta(
    path: &Path,
    meta: &fs::Metadata,
    forbidden: u32,
    dir: bool,
) -> Result<(), CredentialError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(CredentialError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            euid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(if dir {
            CredentialError::DirPermissions {
                path: path.to_path_buf(),
                mode,
            }
        } else {
            CredentialError::Permissions {
                path: path.to_path_buf(),
                mode,
            }
        });
    }
    Ok(())
}

/// Reads a private file without following a symbolic link (O_NOFOLLOW), checking the
/// file it opened, so nothing can be swapped in between the check and the read.
pub fn read_private(path: &Path) -> Result<String, CredentialError> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                CredentialError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io("open", path)(e)
            }
        })?;
    let meta = f.metadata().map_err(io("inspect", path))?;
    check_meta(path, &meta, 0o077, false)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io("read", path))?;
    Ok(text)
}

/// Creates (or appends to) a file only its owner may read, without following a symbolic
/// link at its name: the audit mirror, exports.
pub fn open_private_append(path: &Path, truncate: bool) -> std::io::Result<fs::File> {
    let mut o = OpenOptions::new();
    o.create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    let f = o.open(path)?;
    // What was opened must be ours alone: a regular file of this user with one name (not
    // a FIFO, nor a file someone else planted or linked to).
    let meta = f.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != euid || meta.nlink() != 1 {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of this user with a single name; remove it or choose another path",
            path.display()
        )));
    }
    // An existing file keeps its mode on open: make it private too.
    if meta.permissions().mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}
