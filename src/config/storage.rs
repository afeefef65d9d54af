//! Where postern keeps its state and its recordings: `[store]`, `[recordings]` and
//! `[recordings.s3]`.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::duration::Dur;

/// Where session recordings are written.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recordings {
    /// "" for `recordings/` in the data dir; a directory every replica mounts (NFS, a
    /// cluster file system) so each replays, searches and verifies the others' recordings.
    pub dir: String,
    /// S3-compatible object storage instead of a directory, when `bucket` is set.
    pub s3: S3,
}

/// `[recordings.s3]`: recordings in an S3-compatible bucket. Credentials come from the
/// environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3 {
    /// "" keeps recordings in `dir`.
    pub bucket: String,
    /// Prepended to every object name (`prod/`).
    pub prefix: String,
    /// `https://HOST[:PORT]` of an S3-compatible service (MinIO, Ceph, R2); "" for AWS
    /// (`https://BUCKET.s3.REGION.amazonaws.com`).
    pub endpoint: String,
    pub region: String,
    /// Bucket in the path (`ENDPOINT/BUCKET/KEY`) rather than the host name; the default
    /// when `endpoint` is set.
    pub path_style: Option<bool>,
    /// A PEM CA file the endpoint's certificate chains to, besides the public roots.
    pub ca_file: String,
    /// How often a recording's new bytes are uploaded (each upload is one object): what
    /// a replica that dies loses at most, and how far a live watch lags.
    pub flush: Dur,
}

impl Default for S3 {
    fn default() -> S3 {
        S3 {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            path_style: None,
            ca_file: String::new(),
            flush: Dur(std::time::Duration::from_secs(2)),
        }
    }
}

/// Where postern keeps its state.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// "" for the embedded SQLite store in the data dir; `postgres://…` for a PostgreSQL
    /// database several replicas share. `POSTERN_STORE_URL` overrides it. Shown with its
    /// password replaced.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    if url.is_empty() {
        return s.serialize_str("");
    }
    s.serialize_str(&crate::store::redacted(url))
}

impl Recordings {
    /// Values that each parse but make no sense together.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let s3 = &self.s3;
        if s3.bucket.is_empty() {
            return Ok(());
        }
        if !self.dir.is_empty() {
            return Err(ConfigError::Value(
                "recordings.dir and recordings.s3.bucket are both set: recordings go to one place; remove one".into(),
            ));
        }
        if !s3.endpoint.is_empty() {
            crate::http::Endpoint::parse(&s3.endpoint)
                .map_err(|e| ConfigError::Value(format!("recordings.s3.endpoint: {e}")))?;
        }
        if s3.flush.as_secs() == 0 || s3.flush.as_secs() > 60 {
            return Err(ConfigError::Value(
                "recordings.s3.flush must be between 1s and 60s".into(),
            ));
        }
        Ok(())
    }
}
