//! Recording errors: the disk or the bucket refused (session must end) or the writer is gone.

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
    #[error(transparent)]
    Storage(#[from] super::s3::S3Error),
}
