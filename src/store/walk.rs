//! Walking the whole audit chain through a [`Verifier`]: what `audit verify` and the
//! console's Verify button both run.

use super::audit::AuditFilter;
use super::{Checkpoint, Store, StoreError};
use crate::audit::lineage;
use crate::audit::verify::{Broken, CheckpointIn, Verifier};

/// Events read per page.
const PAGE: i64 = 5000;

pub fn signed(c: Checkpoint) -> CheckpointIn {
    CheckpointIn {
        seq: c.seq,
        hash: c.hash,
        signature: c.signature,
    }
}

impl Store {
    /// The keys the log's audit key handovers name (unchecked: the walk checks them).
    pub async fn audit_handover_keys(&self) -> Result<Vec<russh::keys::PublicKey>, StoreError> {
        let filter = AuditFilter {
            kind: Some(lineage::ROTATED.into()),
            ..AuditFilter::default()
        };
        Ok(self
            .search_audit(&filter)
            .await?
            .iter()
            .flat_map(|e| lineage::named_keys(&e.event.details))
            .collect())
    }

    /// Feeds the anchor, every event and every checkpoint to `v`, in chain order;
    /// `progress` hears the last sequence number verified after each page.
    pub async fn verify_chain(
        &self,
        v: &mut Verifier,
        mut progress: impl FnMut(i64),
    ) -> Result<(), Broken> {
        let internal = |e: super::StoreError| Broken {
            seq: 0,
            what: format!("cannot read the store: {e}"),
        };
        if !v.keys_expected() {
            v.expect_keys(self.audit_handover_keys().await.map_err(internal)?);
        }
        let mut after = 0;
        if let Some(a) = self.audit_anchor().await.map_err(internal)? {
            after = a.seq;
            v.anchor(&signed(a))?;
        }
        loop {
            let page = self.audit_page(after, PAGE).await.map_err(internal)?;
            let Some(last) = page.last().map(|e| e.seq) else {
                // The end. A checkpoint past it vouches for events that are gone, unless
                // `serve` appended and signed them since the page was read: look again.
                let beyond = self
                    .audit_checkpoints(after, i64::MAX)
                    .await
                    .map_err(internal)?;
                if !beyond.is_empty()
                    && !self
                        .audit_page(after, 1)
                        .await
                        .map_err(internal)?
                        .is_empty()
                {
                    continue;
                }
                for c in beyond {
                    v.checkpoint(signed(c))?;
                }
                return Ok(());
            };
            for c in self
                .audit_checkpoints(after, last)
                .await
                .map_err(internal)?
            {
                v.checkpoint(signed(c))?;
            }
            for c in &page {
                v.event(c.seq, &c.event, c.prev_hash.as_deref(), c.hash.as_deref())?;
            }
            after = last;
            progress(last);
        }
    }
}
