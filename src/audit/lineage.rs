//! The audit key's lineage. The key that signs checkpoints can be rotated; the log carries
//! the rotation itself, so a verifier holding any one key of the lineage can check all
//! of it.
//!
//! - `audit.key_rotated` hands over from the signing key to a new one. Both keys sign the
//!   handover: the old one vouches for the new, the new one for the old, so neither a
//!   stolen old key nor a key made up later can be grafted onto the lineage. From that
//!   event on both keys sign (replicas pick the new one up as they restart).
//! - `audit.key_retired` ends the overlap: from that event on, a checkpoint signed by
//!   the retired key is refused, so a leaked old key cannot vouch for anything newer.
//!
//! [`Lineage`] collects the keys a walk meets and settles, at the end, that every
//! checkpoint was signed by a key in effect at its seq.

use std::collections::BTreeMap;

use russh::keys::{HashAlg, PrivateKey, PublicKey};
use serde_json::{Value, json};

use super::chain::{self, Signer, SignerError};
use super::verify::Broken;

pub const ROTATED: &str = "audit.key_rotated";
pub const RETIRED: &str = "audit.key_retired";
/// Keys read ahead of a walk, at most.
const MAX_EXPECTED: usize = 64;

fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}

fn line(k: &PublicKey) -> String {
    let mut bare = k.clone();
    bare.set_comment("");
    bare.to_openssh().unwrap_or_default()
}

/// What both keys of a handover sign.
pub fn handover_message(from: &PublicKey, to: &PublicKey) -> String {
    format!(
        "postern-audit-key-handover v1 from={} to={}",
        fingerprint(from),
        fingerprint(to)
    )
}

/// The details of an `audit.key_rotated` event handing over from `from` to `to`.
pub fn handover(from: &PrivateKey, to: &PrivateKey) -> Result<Value, SignerError> {
    let message = handover_message(from.public_key(), to.public_key());
    Ok(json!({
        "from": line(from.public_key()),
        "to": line(to.public_key()),
        "fingerprint": fingerprint(to.public_key()),
        "from_signature": Signer::new(from)?.sign_message(&message),
        "to_signature": Signer::new(to)?.sign_message(&message),
    }))
}

/// The details of an `audit.key_retired` event.
pub fn retirement(key: &PublicKey) -> Value {
    json!({ "key": line(key), "fingerprint": fingerprint(key) })
}

fn key_in(details: &Value, field: &str) -> Option<PublicKey> {
    PublicKey::from_openssh(details.get(field)?.as_str()?).ok()
}

/// The keys a handover names, unchecked: what a verifier should be ready to meet.
pub fn named_keys(details: &Value) -> Vec<PublicKey> {
    ["from", "to"]
        .iter()
        .filter_map(|f| key_in(details, f))
        .collect()
}

/// The keys of a handover whose two signatures hold.
fn checked_handover(details: &Value) -> Option<(PublicKey, PublicKey)> {
    let (from, to) = (key_in(details, "from")?, key_in(details, "to")?);
    let message = handover_message(&from, &to);
    let sig = |f: &str| details.get(f).and_then(Value::as_str).unwrap_or_default();
    (chain::verify_message(&from, &message, sig("from_signature"))
        && chain::verify_message(&to, &message, sig("to_signature"))
        && from.key_data() != to.key_data())
    .then_some((from, to))
}

/// Every key a walk has met, what each signed, and the handovers and retirements.
#[derive(Default)]
pub struct Lineage {
    keys: Vec<PublicKey>,
    /// Given by whoever verifies.
    trusted: Vec<usize>,
    /// (seq, from, to) and (seq, key), in log order.
    handovers: Vec<(i64, usize, usize)>,
    retired: Vec<(i64, usize)>,
    /// The lowest and highest checkpoint seq each key signed.
    checkpoints: BTreeMap<usize, (i64, i64)>,
    /// Keys that signed statements about the log up to a seq rather than at it (a prune
    /// anchor, a saved head, an export's trailer), with the highest such seq: any key of
    /// the lineage not retired by then may.
    statements: BTreeMap<usize, i64>,
    /// The key that signed an export's trailer (at export time: the newest key).
    trailer: Option<usize>,
}

impl Lineage {
    pub fn new(trusted: PublicKey) -> Lineage {
        let mut l = Lineage::default();
        let i = l.index(&trusted);
        l.trusted.push(i);
        l
    }

    fn index(&mut self, k: &PublicKey) -> usize {
        if let Some(i) = self.keys.iter().position(|x| x.key_data() == k.key_data()) {
            return i;
        }
        self.keys.push(k.clone());
        self.keys.len() - 1
    }

    /// Keys the log names in its handovers, read ahead of the walk, so checkpoints met
    /// before their key's handover can be checked as they come (the handover itself is
    /// checked when the walk reaches it).
    /// At most `MAX_EXPECTED` keys are taken: every checkpoint is tried against each, and
    /// a log with more handovers than that was written by something other than postern.
    pub fn expect(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        for k in keys {
            if self.keys.len() >= MAX_EXPECTED {
                break;
            }
            self.index(&k);
        }
    }

    /// The key that made `signature` over `message`, among the keys met so far.
    pub fn signer(&self, message: &str, signature: &str) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| chain::verify_message(k, message, signature))
    }

    pub fn signed_checkpoint(&mut self, key: usize, seq: i64) {
        let range = self.checkpoints.entry(key).or_insert((seq, seq));
        range.0 = range.0.min(seq);
        range.1 = range.1.max(seq);
    }

    pub fn signed_trailer(&mut self, key: usize, seq: i64) {
        self.trailer = Some(key);
        self.signed_statement(key, seq);
    }

    pub fn signed_statement(&mut self, key: usize, seq: i64) {
        let highest = self.statements.entry(key).or_insert(seq);
        *highest = (*highest).max(seq);
    }

    /// An `audit.key_rotated` or `audit.key_retired` event met in the walk.
    pub fn event(&mut self, seq: i64, kind: &str, details: &Value) -> Result<(), Broken> {
        match kind {
            ROTATED => {
                let (from, to) = checked_handover(details).ok_or_else(|| Broken {
                    seq,
                    what: format!(
                        "event seq {seq} hands the audit key over without valid signatures of both keys: it was forged"
                    ),
                })?;
                let (from, to) = (self.index(&from), self.index(&to));
                // Named both ahead of an export's events and in its range: once.
                if !self.handovers.contains(&(seq, from, to)) {
                    self.handovers.push((seq, from, to));
                }
            }
            RETIRED => {
                let key = key_in(details, "key").ok_or_else(|| Broken {
                    seq,
                    what: format!("event seq {seq} retires an audit key it does not name"),
                })?;
                let key = self.index(&key);
                if !self.retired.contains(&(seq, key)) {
                    self.retired.push((seq, key));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Settles the walk: the handovers form one line (each from the key the one before
    /// handed over to, which ends every older key), the verifier's key belongs to it, and
    /// every checkpoint was signed by a key in effect at its seq.
    pub fn settle(&self) -> Result<(), Broken> {
        let fp = |i: usize| fingerprint(&self.keys[i]);
        // When each key signs: from its handover (or the start) to before its retirement.
        let mut span: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
        let lineage = !self.handovers.is_empty();
        if let Some(&(_, first, _)) = self.handovers.first() {
            span.insert(first, (i64::MIN, i64::MAX));
        } else {
            for &t in &self.trusted {
                span.insert(t, (i64::MIN, i64::MAX));
            }
        }
        enum Step {
            Handover(usize, usize),
            Retired(usize),
        }
        let mut steps: Vec<(i64, Step)> = self
            .handovers
            .iter()
            .map(|&(s, f, t)| (s, Step::Handover(f, t)))
            .chain(self.retired.iter().map(|&(s, k)| (s, Step::Retired(k))))
            .collect();
        steps.sort_by_key(|s| s.0);
        let mut tip = self.handovers.first().map(|h| h.1);
        for (seq, step) in steps {
            let before = seq.saturating_sub(1);
            if let Step::Handover(from, to) = step {
                let live = span.get(&from).is_some_and(|&(a, b)| a <= seq && seq <= b);
                if !live {
                    return Err(Broken {
                        seq,
                        what: format!(
                            "event seq {seq} hands the audit key over from {}, which was not signing then",
                            fp(from)
                        ),
                    });
                }
                if tip != Some(from) {
                    return Err(Broken {
                        seq,
                        what: format!(
                            "event seq {seq} hands the audit key over from {}, but the last handover before it was to {}: the lineage forks",
                            fp(from),
                            tip.map(fp).unwrap_or_default()
                        ),
                    });
                }
                // One overlap at a time: keys older than `from` sign nothing from here.
                for (&k, s) in span.iter_mut() {
                    if k != from && k != to {
                        s.1 = s.1.min(before);
                    }
                }
                span.entry(to).or_insert((seq, i64::MAX));
                tip = Some(to);
            }
            if let Step::Retired(k) = step
                && let Some(s) = span.get_mut(&k)
            {
                s.1 = s.1.min(before);
            }
        }
        let vouched = !lineage || self.trusted.iter().any(|t| span.contains_key(t));
        let known = |k: usize| vouched && span.contains_key(&k) || self.trusted.contains(&k);
        let foreign = |k: usize, seq: i64, what: &str| Broken {
            seq,
            what: format!(
                "{what} is signed by audit key {}, which is neither the key given to verify with nor one the log hands over to from it",
                fp(k)
            ),
        };
        for (&k, &(low, high)) in &self.checkpoints {
            if !known(k) {
                return Err(foreign(k, low, &format!("the checkpoint at seq {low}")));
            }
            let Some(&(start, end)) = span.get(&k) else {
                continue;
            };
            if low < start {
                return Err(Broken {
                    seq: low,
                    what: format!(
                        "the checkpoint at seq {low} is signed by audit key {}, which signs only from its handover at seq {start}",
                        fp(k)
                    ),
                });
            }
            if high > end {
                return Err(Broken {
                    seq: high,
                    what: format!(
                        "the checkpoint at seq {high} is signed by audit key {}, which was retired at seq {}: a retired key vouches for nothing newer",
                        fp(k),
                        end.saturating_add(1)
                    ),
                });
            }
        }
        if let (Some(t), Some(newest)) = (self.trailer, tip)
            && t != newest
        {
            return Err(Broken {
                seq: self.statements.get(&t).copied().unwrap_or(0),
                what: format!(
                    "the export's trailer is signed by audit key {}, not by the newest key the log hands over to ({}): it was signed again with an older key",
                    fp(t),
                    fp(newest)
                ),
            });
        }
        for (&k, &seq) in &self.statements {
            if !known(k) {
                return Err(foreign(
                    k,
                    seq,
                    &format!("a signed head, anchor or export trailer at seq {seq}"),
                ));
            }
            if let Some(&(_, end)) = span.get(&k)
                && seq > end
            {
                return Err(Broken {
                    seq,
                    what: format!(
                        "a signed head, anchor or export trailer covering seq {seq} is signed by audit key {}, which was retired at seq {}: a retired key vouches for nothing newer",
                        fp(k),
                        end.saturating_add(1)
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        crate::credentials::new_ed25519("t").unwrap()
    }

    /// A walk with `events` and checkpoints signed by key index at seq.
    fn walk(
        trusted: &PrivateKey,
        events: &[(i64, &str, Value)],
        signed: &[(&PrivateKey, i64)],
    ) -> Result<(), Broken> {
        let mut l = Lineage::new(trusted.public_key().clone());
        for (seq, kind, details) in events {
            l.expect(named_keys(details));
            l.event(*seq, kind, details)?;
        }
        for (k, seq) in signed {
            let i = l.index(k.public_key());
            l.signed_checkpoint(i, *seq);
        }
        l.settle()
    }

    #[test]
    fn either_key_of_a_handover_vouches_for_the_whole_log() {
        let (k0, k1) = (key(), key());
        let events = [(5, ROTATED, handover(&k0, &k1).unwrap())];
        let signed = [(&k0, 3), (&k0, 6), (&k1, 7)];
        walk(&k0, &events, &signed).unwrap();
        walk(&k1, &events, &signed).unwrap();
        let stranger = key();
        let e = walk(&stranger, &events, &signed).unwrap_err();
        assert!(e.what.contains("neither the key given"), "{}", e.what);
    }

    #[test]
    fn a_handover_needs_both_signatures() {
        let (k0, k1, k2) = (key(), key(), key());
        let mut d = handover(&k0, &k1).unwrap();
        d["to_signature"] = handover(&k0, &k2).unwrap()["to_signature"].clone();
        let e = walk(&k0, &[(5, ROTATED, d)], &[]).unwrap_err();
        assert!(e.what.contains("without valid signatures"), "{}", e.what);
        let mut d = handover(&k0, &k1).unwrap();
        d["from_signature"] = Value::from("");
        assert!(walk(&k1, &[(5, ROTATED, d)], &[]).is_err());
    }

    #[test]
    fn a_new_key_signs_only_after_its_handover_and_a_retired_one_never_again() {
        let (k0, k1, k2) = (key(), key(), key());
        let events = [
            (5, ROTATED, handover(&k0, &k1).unwrap()),
            (9, RETIRED, retirement(k0.public_key())),
        ];
        walk(&k1, &events, &[(&k0, 8), (&k1, 9)]).unwrap();
        let e = walk(&k1, &events, &[(&k1, 4)]).unwrap_err();
        assert!(
            e.what.contains("signs only from its handover at seq 5"),
            "{}",
            e.what
        );
        let e = walk(&k1, &events, &[(&k0, 3), (&k0, 9)]).unwrap_err();
        assert!(e.what.contains("retired at seq 9"), "{}", e.what);
        // A retired key cannot hand over again, even with valid signatures.
        let mut more = events.to_vec();
        more.push((12, ROTATED, handover(&k0, &k2).unwrap()));
        let e = walk(&k1, &more, &[]).unwrap_err();
        assert!(e.what.contains("was not signing then"), "{}", e.what);
    }

    #[test]
    fn the_lineage_is_one_line_and_a_retired_key_signs_no_trailer() {
        let (k0, k1, stranger) = (key(), key(), key());
        // k0, still signing during the overlap, hands over to a key of its own: refused.
        let fork = [
            (5, ROTATED, handover(&k0, &k1).unwrap()),
            (7, ROTATED, handover(&k0, &stranger).unwrap()),
        ];
        let e = walk(&k1, &fork, &[]).unwrap_err();
        assert!(e.what.contains("the lineage forks"), "{}", e.what);
        // A trailer (or head) by the retired key over the log past its retirement.
        let mut l = Lineage::new(k1.public_key().clone());
        l.event(5, ROTATED, &handover(&k0, &k1).unwrap()).unwrap();
        l.event(9, RETIRED, &retirement(k0.public_key())).unwrap();
        let old = l.index(k0.public_key());
        l.signed_statement(old, 8);
        l.settle().unwrap();
        l.signed_statement(old, 12);
        let e = l.settle().unwrap_err();
        assert!(e.what.contains("retired at seq 9"), "{}", e.what);
    }
}
