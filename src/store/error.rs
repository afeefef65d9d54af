//! Store errors: the database failed (internal) or refused a change (the caller's).

use crate::policy::PolicyError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {why}; {advice}")]
    Open {
        path: String,
        why: String,
        advice: &'static str,
    },
    #[error("cannot upgrade the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the store holds a row it cannot read ({what}): {why}")]
    Corrupt { what: String, why: String },
    #[error(
        "the audit log no longer holds event seq {seq} as it was signed: it was rewritten or cut outside postern, so postern will not sign it; run `postern audit verify` and restore the store from a backup"
    )]
    Rewritten { seq: i64 },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Opening the store failed: what the database said, and what to do about it.
pub fn open_failed(path: &std::path::Path, e: sqlx::Error) -> StoreError {
    let damaged = matches!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("11" | "26")
    );
    let why = match e.as_database_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    };
    StoreError::Open {
        path: path.display().to_string(),
        why,
        advice: if damaged {
            "the file is damaged or not a postern store: restore the data dir from a backup"
        } else {
            "check that the data dir exists and is writable by the user running postern"
        },
    }
}

pub fn corrupt(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> StoreError {
    let what = what.into();
    move |e| StoreError::Corrupt {
        what,
        why: e.to_string(),
    }
}
