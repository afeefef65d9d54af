//! The tamper-evident audit log: every event stores the SHA-256 of the previous event's
//! canonical form, and signed checkpoints vouch for the chain up to a point.
//!
//! Canonical form: a compact JSON object with sorted keys (`actor`, `details`, `id`,
//! `prev_hash`, `result`, `seq`, `session_id`, `source`, `target`, `time_ms`, `type`);
//! `details` keeps its own keys sorted. The hash of an event is the hex SHA-256 of it.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use russh::keys::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AuditEvent;

/// The `prev_hash` of the first event ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn canonical(seq: i64, e: &AuditEvent, prev_hash: &str) -> String {
    canonical_with(seq, e, prev_hash, &e.details.to_string())
}

/// The canonical form with `details` already encoded (the store reuses that text).
/// Keys in sorted order, compact, as `serde_json` prints a map; strings JSON-escaped.
pub fn canonical_with(seq: i64, e: &AuditEvent, prev_hash: &str, details: &str) -> String {
    fn s(v: &str) -> String {
        serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into())
    }
    fn o(v: &Option<String>) -> String {
        v.as_deref().map(s).unwrap_or_else(|| "null".into())
    }
    format!(
        "{{\"actor\":{},\"details\":{},\"id\":\"{}\",\"prev_hash\":{},\"result\":\"{}\",\"seq\":{},\"session_id\":{},\"source\":{},\"target\":{},\"time_ms\":{},\"type\":{}}}",
        s(&e.actor.0),
        details,
        e.id,
        s(prev_hash),
        e.result.as_str(),
        seq,
        o(&e.session_id),
        o(&e.source),
        o(&e.target),
        e.time_ms,
        s(&e.kind),
    )
}

pub fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn event_hash(seq: i64, e: &AuditEvent, prev_hash: &str) -> String {
    sha256_hex(canonical(seq, e, prev_hash).as_bytes())
}

pub fn event_hash_with(seq: i64, e: &AuditEvent, prev_hash: &str, details: &str) -> String {
    sha256_hex(canonical_with(seq, e, prev_hash, details).as_bytes())
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: i64, hash: &str) -> String {
    format!("postern-audit-checkpoint v1 seq={seq} hash={hash}")
}

/// Signs checkpoints with the audit key.
pub struct Signer {
    pair: Ed25519KeyPair,
}

#[derive(Debug, thiserror::Error)]
#[error("the audit key cannot sign: {0}")]
pub struct SignerError(String);

impl Signer {
    pub fn new(key: &PrivateKey) -> Result<Signer, SignerError> {
        let kp = key
            .key_data()
            .ed25519()
            .ok_or_else(|| SignerError("not an Ed25519 key".into()))?;
        let pair =
            Ed25519KeyPair::from_seed_and_public_key(&kp.private.to_bytes(), kp.public.as_ref())
                .map_err(|e| SignerError(e.to_string()))?;
        Ok(Signer { pair })
    }

    pub fn sign(&self, seq: i64, hash: &str) -> String {
        self.sign_message(&checkpoint_message(seq, hash))
    }

    pub fn sign_message(&self, message: &str) -> String {
        B64.encode(self.pair.sign(message.as_bytes()).as_ref())
    }

    pub fn public_key_bytes(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

/// Checks a checkpoint signature against the audit public key.
pub fn verify_checkpoint(public: &PublicKey, seq: i64, hash: &str, signature: &str) -> bool {
    verify_message(public, &checkpoint_message(seq, hash), signature)
}

pub fn verify_message(public: &PublicKey, message: &str, signature: &str) -> bool {
    let Some(pk) = public.key_data().ed25519() else {
        return false;
    };
    let Ok(sig) = B64.decode(signature) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, pk.as_ref())
        .verify(message.as_bytes(), &sig)
        .is_ok()
}

/// The last line of an export: what it holds, signed, so a cut head or tail, a dropped
/// checkpoint line or a line from elsewhere is caught.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    pub events: u64,
    pub checkpoints: u64,
    /// The first and last event's seq (0 when there are none).
    pub first_seq: i64,
    pub last_seq: i64,
    pub last_hash: String,
    pub signature: String,
}

impl Trailer {
    pub fn message(&self) -> String {
        format!(
            "postern-audit-export v1 events={} checkpoints={} first={} last={} hash={}",
            self.events, self.checkpoints, self.first_seq, self.last_seq, self.last_hash
        )
    }
}

/// An event as exported: the event, its position and its links.
pub fn export_line(seq: i64, e: &AuditEvent, prev_hash: &str, hash: &str) -> Value {
    json!({
        "seq": seq,
        "id": e.id.to_string(),
        "time_ms": e.time_ms,
        "type": e.kind,
        "actor": e.actor.0,
        "source": e.source,
        "target": e.target,
        "session_id": e.session_id,
        "result": e.result.as_str(),
        "details": e.details,
        "prev_hash": prev_hash,
        "hash": hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Outcome};

    #[test]
    fn hashes_are_stable_and_sensitive() {
        let mut e = AuditEvent::new(
            "user.create",
            &Actor::os(),
            Outcome::Success,
            json!({"b": 1, "a": [1, 2]}),
        );
        e.time_ms = 1;
        let h1 = event_hash(1, &e, GENESIS);
        assert_eq!(h1, event_hash(1, &e, GENESIS));
        assert!(canonical(1, &e, GENESIS).contains(r#""details":{"a":[1,2],"b":1}"#));
        assert_ne!(h1, event_hash(2, &e, GENESIS), "position matters");
        e.details = json!({"b": 2, "a": [1, 2]});
        assert_ne!(h1, event_hash(1, &e, GENESIS), "content matters");
    }

    #[test]
    fn canonical_form_is_the_sorted_json_object() {
        let mut e = AuditEvent::new(
            "session.end",
            &Actor("user:a\"b".into()),
            Outcome::Deny,
            json!({"z": "é\n", "a": null}),
        );
        e.session_id = Some("s1".into());
        let expected = json!({
            "seq": 9, "id": e.id.to_string(), "time_ms": e.time_ms, "type": e.kind, "actor": e.actor.0,
            "source": e.source, "target": e.target, "session_id": e.session_id, "result": "deny",
            "details": e.details, "prev_hash": GENESIS,
        })
        .to_string();
        assert_eq!(canonical(9, &e, GENESIS), expected);
    }

    #[test]
    fn checkpoints_sign_and_verify() {
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[7u8; 32],
        ));
        let signer = Signer::new(&key).unwrap();
        let sig = signer.sign(10, "abc");
        assert!(verify_checkpoint(key.public_key(), 10, "abc", &sig));
        assert!(!verify_checkpoint(key.public_key(), 11, "abc", &sig));
        assert!(!verify_checkpoint(key.public_key(), 10, "abd", &sig));
    }
}
