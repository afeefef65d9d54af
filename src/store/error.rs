//! Store errors: the database failed (internal) or refused a change (the caller's).

use crate::policy::PolicyError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the store at {path}: {source}; check that the data dir exists and is writable"
    )]
    Open { path: String, source: sqlx::Error },
    #[error("cannot upgrade the store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the store holds a row it cannot read ({what}): {why}")]
    Corrupt { what: String, why: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

pub fn corrupt(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> StoreError {
    let what = what.into();
    move |e| StoreError::Corrupt {
        what,
        why: e.to_string(),
    }
}
