//! Recording errors: the disk refused (session must end) or the writer is gone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot {action} recording {path}: {source}", path = .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the recording stopped after an earlier write error")]
    Stopped,
}
