//! How a PostgreSQL client proves it holds a database token: SCRAM-SHA-256 (the default:
//! the token never crosses the wire, and over TLS the exchange is bound to postern's
//! certificate), or the token itself as a password inside TLS when configured.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Io, Refusal, refuse, wire};
use crate::credentials::scram::{self, SCRAM, SCRAM_PLUS};
use crate::store::DbToken;

/// The client's next message, which must be a password / SASL message (`p`).
async fn read_p(io: &mut Box<dyn Io>, buf: &mut BytesMut) -> Result<Bytes, Refusal> {
    loop {
        match wire::frame(buf, wire::MAX_STARTUP) {
            Ok(Some((b'p', len))) => {
                let frame = buf.split_to(len).freeze();
                return Ok(frame.slice(5..));
            }
            Ok(Some((t, _))) => {
                return Err(refuse(
                    "08P01",
                    format!(
                        "expected a password or SASL message, got `{}`",
                        t.escape_ascii()
                    ),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(refuse("08P01", e.to_string())),
        }
        if io.read_buf(buf).await.unwrap_or(0) == 0 {
            return Err(refuse("08006", "client left during authentication"));
        }
    }
}

async fn send(io: &mut Box<dyn Io>, msg: &[u8]) -> Result<(), Refusal> {
    io.write_all(msg)
        .await
        .map_err(|_| refuse("08006", "client left"))?;
    io.flush().await.map_err(|_| refuse("08006", "client left"))
}

/// Asks for the token as a cleartext password (inside TLS).
pub async fn password(io: &mut Box<dyn Io>) -> Result<String, Refusal> {
    send(io, &wire::auth(3, &[])).await?;
    let body = read_p(io, &mut BytesMut::with_capacity(1024)).await?;
    let mut b = &body[..];
    Ok(wire::cstr(&mut b).unwrap_or_default())
}

/// Runs a SCRAM-SHA-256 exchange for `user` against the user's tokens; `binding` is this
/// connection's channel binding data (TLS). Returns the token the proof was made with,
/// `None` when it was made with none of them.
pub async fn scram(
    io: &mut Box<dyn Io>,
    user: &str,
    binding: Option<&[u8]>,
    mut candidates: Vec<DbToken>,
) -> Result<Option<DbToken>, Refusal> {
    let mut offer = Vec::new();
    if binding.is_some() {
        offer.extend_from_slice(SCRAM_PLUS.as_bytes());
        offer.push(0);
    }
    offer.extend_from_slice(SCRAM.as_bytes());
    offer.extend_from_slice(b"\0\0");
    send(io, &wire::auth(10, &offer)).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let first = read_p(io, &mut buf).await?;
    let mut b = &first[..];
    let malformed = || refuse("08P01", "malformed SASL initial response");
    let mechanism = wire::cstr(&mut b).ok_or_else(malformed)?;
    if b.len() < 4 {
        return Err(malformed());
    }
    let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let data = usize::try_from(len)
        .ok()
        .and_then(|n| b.get(4..4 + n))
        .ok_or_else(malformed)?;
    let offered = match mechanism.as_str() {
        SCRAM => true,
        SCRAM_PLUS => binding.is_some(),
        _ => false,
    };
    if !offered {
        return Err(refuse(
            "28000",
            format!(
                "postern does not offer SASL mechanism {:?} here",
                crate::policy::names::printable(&mechanism)
            ),
        ));
    }
    let (exchange, server_first) = scram::start(&mechanism, data, &scram::salt(user), binding)
        .map_err(|e| refuse("28P01", e.to_string()))?;
    send(io, &wire::auth(11, server_first.as_bytes())).await?;
    let last = read_p(io, &mut buf).await?;
    let verifiers: Vec<scram::Verifier> =
        candidates.iter().filter_map(|t| t.scram.clone()).collect();
    match exchange
        .finish(&last, &verifiers)
        .map_err(|e| refuse("28P01", e.to_string()))?
    {
        Some((i, server_final)) => {
            send(io, &wire::auth(12, server_final.as_bytes())).await?;
            Ok(Some(candidates.swap_remove(i)))
        }
        None => Ok(None),
    }
}
