//! Unauthenticated availability: idle sockets parked on a listener, from one address or
//! many, lock nobody out; clients that never log in are disconnected at their deadline.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::Out;
use crate::harness::postern::Postern;
use crate::pg::PgBastion;
use crate::pg_wire::Raw;
use crate::ssh::Bastion;

/// Opens `n` TCP connections to `to` that never send a byte, spread over the source
/// addresses 127.0.0.1 … 127.0.0.`sources` (all loopback). Refused ones are kept too.
fn park(to: SocketAddr, n: usize, sources: u8) -> Vec<tokio::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            let from: SocketAddr = ([127, 0, 0, 1 + (i % sources as usize) as u8], 0).into();
            s.bind(from).unwrap();
            // A failed connect (the accept queue full for a moment) is skipped.
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), s.connect(to)).await {
                held.push(c);
            }
        }
        held
    })
}

fn health(b: &Postern) -> Out {
    let ca = b.write("tls-ca.pem", b.cli(&["admin", "tls-ca"]).ok());
    crate::pg::python(&format!(
        r#"
import ssl, urllib.request
ctx = ssl.create_default_context(cafile={ca:?})
print(urllib.request.urlopen("https://127.0.0.1:{port}/v1/health", context=ctx, timeout=15).read().decode())
"#,
        ca = ca.display().to_string(),
        port = b.api.port()
    ))
}

/// Reads until postern closes the connection; what it sent before.
fn until_closed(mut s: TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn eleven_hundred_idle_sockets_lock_no_one_out_of_ssh_or_the_api() {
    let b = Bastion::start_with(&[], Some("[ssh]\nlogin_grace_time = \"3s\"\n"));
    // From the developers' own address, then from many.
    let mut parked = park(b.postern.ssh, 1100, 1);
    parked.extend(park(b.postern.api, 1100, 1));
    parked.extend(park(b.postern.ssh, 1100, 10));
    assert!(parked.len() >= 3000, "only {} connected", parked.len());
    // Parked sockets older than two seconds make room for a client that logs in.
    std::thread::sleep(Duration::from_millis(2500));
    let out = b.ssh(&b.dest(), "echo through");
    assert_eq!(out.ok(), "through\n");
    assert!(health(&b.postern).ok().contains("\"ok\""));
    drop(parked);

    // A client that never logs in is disconnected at login_grace_time.
    let idle = TcpStream::connect(b.postern.ssh).unwrap();
    let started = Instant::now();
    let got = until_closed(idle, Duration::from_secs(60));
    assert!(got.starts_with(b"SSH-2.0-postern"), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "an idle client stayed connected past its grace time"
    );
    // Nothing of it reached the audit log: there was no login.
    assert!(b.postern.events("auth.failure").is_empty());
}

#[test]
fn eleven_hundred_idle_sockets_lock_no_one_out_of_postgres() {
    let b = PgBastion::start();
    // One more, refused at once (the parked ones are younger than two seconds), hears
    // why in PostgreSQL's words. On a loaded machine parking can take longer than that
    // (the oldest then make room, as they should): parked again, at most three times.
    let mut said = String::new();
    let mut parked = Vec::new();
    for _ in 0..3 {
        parked = park(b.postern.pg, 1100, 1);
        let refused = TcpStream::connect(b.postern.pg).unwrap();
        said = String::from_utf8_lossy(&until_closed(refused, Duration::from_secs(30))).to_string();
        if said.contains("53300") {
            break;
        }
        drop(std::mem::take(&mut parked));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        said.contains("53300") && said.contains("logging in"),
        "{said:?}"
    );
    parked.extend(park(b.postern.pg, 1100, 10));
    std::thread::sleep(Duration::from_millis(2500));
    let out = b.psql(&["-c", "select 'through'"]);
    assert_eq!(out.ok(), "through\n");
    drop(parked);

    // A client that stops in the middle of SCRAM is ended at authentication_timeout
    // (15 s by default), with an error saying so.
    let mut raw = Raw::start(&b, &[]);
    let (tag, _) = raw.next();
    assert_eq!(tag, b'R');
    let (tag, body) = raw.next();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(tag, b'E', "{text}");
    assert!(
        text.contains("08006") && text.contains("authentication not finished within 15s"),
        "{text}"
    );
}
