//! The audit log written out: JSON lines (events with the signed checkpoints that follow
//! them, an anchor when pruned, and a signed trailer) or CSV. What `audit export` and the
//! console's download both write.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Store;
use crate::audit::chain::{self, Signer};
use crate::audit::format_ms;
use crate::audit::lineage;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

/// Events read per page (and written per write).
const PAGE: i64 = 5000;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn store_io(e: super::StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Store {
    /// Writes the events from `since` to before `until` (Unix ms; one unbroken run of the
    /// chain) to `out`; returns how many. The newest events are signed first, so the
    /// export can be verified to its end.
    pub async fn export_audit<W: AsyncWrite + Unpin>(
        &self,
        format: ExportFormat,
        since: Option<i64>,
        until: Option<i64>,
        signer: &Signer,
        out: &mut W,
    ) -> std::io::Result<u64> {
        use std::fmt::Write as _;
        self.audit_checkpoint().await.map_err(store_io)?;
        let mut buf = String::new();
        if format == ExportFormat::Csv {
            buf.push_str(
                "seq,id,time,type,actor,source,target,session_id,result,details,prev_hash,hash\n",
            );
        }
        if format == ExportFormat::Jsonl {
            // The audit key's handovers and retirements, wherever they are in the log: an
            // export that begins or ends elsewhere still verifies with either key.
            for kind in [lineage::ROTATED, lineage::RETIRED] {
                let filter = super::AuditFilter {
                    kind: Some(kind.into()),
                    ..super::AuditFilter::default()
                };
                for e in self.search_audit(&filter).await.map_err(store_io)? {
                    let line = serde_json::json!({ "lineage": { "seq": e.seq, "type": e.event.kind, "details": e.event.details } });
                    let _ = writeln!(buf, "{line}");
                }
            }
        }
        let mut after = 0;
        let (mut count, mut checkpoints, mut first_seq) = (0u64, 0u64, 0i64);
        let mut last = (0i64, String::new());
        if since.is_none()
            && format == ExportFormat::Jsonl
            && let Some(anchor) = self.audit_anchor().await.map_err(store_io)?
        {
            let line = serde_json::json!({ "anchor": { "seq": anchor.seq, "hash": anchor.hash, "signature": anchor.signature } });
            let _ = writeln!(buf, "{line}");
            after = anchor.seq;
        }
        let mut done = false;
        while !done {
            let page = self.audit_page(after, PAGE).await.map_err(store_io)?;
            let Some(page_last) = page.last().map(|e| e.seq) else {
                break;
            };
            let cps = self
                .audit_checkpoints(after, page_last)
                .await
                .map_err(store_io)?;
            for c in &page {
                // One unbroken run of the chain: from the first event at or after `since`
                // to the last before the first at or after `until` (event times need not
                // rise with seq, and a gap would read as a deletion).
                let t = c.event.time_ms;
                if count == 0 && since.is_some_and(|s| t < s) {
                    continue;
                }
                if until.is_some_and(|u| t >= u) {
                    done = true;
                    break;
                }
                let prev = c.prev_hash.as_deref().unwrap_or("");
                let hash = c.hash.as_deref().unwrap_or("");
                match format {
                    ExportFormat::Jsonl => {
                        let _ =
                            writeln!(buf, "{}", chain::export_line(c.seq, &c.event, prev, hash));
                        if let Some(cp) = cps.iter().find(|cp| cp.seq == c.seq) {
                            let line = serde_json::json!({ "checkpoint": { "seq": cp.seq, "hash": cp.hash, "signature": cp.signature } });
                            let _ = writeln!(buf, "{line}");
                            checkpoints += 1;
                        }
                    }
                    ExportFormat::Csv => {
                        let e = &c.event;
                        let row = [
                            c.seq.to_string(),
                            e.id.to_string(),
                            format_ms(e.time_ms),
                            e.kind.clone(),
                            e.actor.0.clone(),
                            e.source.clone().unwrap_or_default(),
                            e.target.clone().unwrap_or_default(),
                            e.session_id.clone().unwrap_or_default(),
                            e.result.as_str().to_string(),
                            e.details.to_string(),
                            prev.to_string(),
                            hash.to_string(),
                        ];
                        let cells: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
                        let _ = writeln!(buf, "{}", cells.join(","));
                    }
                }
                count += 1;
                if first_seq == 0 {
                    first_seq = c.seq;
                }
                last = (c.seq, hash.to_string());
            }
            out.write_all(buf.as_bytes()).await?;
            buf.clear();
            after = page_last;
        }
        if format == ExportFormat::Jsonl {
            let mut t = chain::Trailer {
                events: count,
                checkpoints,
                first_seq,
                last_seq: last.0,
                last_hash: last.1,
                signature: String::new(),
            };
            t.signature = signer.sign_message(&t.message());
            let _ = writeln!(buf, "{}", serde_json::json!({ "trailer": t }));
        }
        out.write_all(buf.as_bytes()).await?;
        out.flush().await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        assert_eq!(super::csv_field("plain"), "plain");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
