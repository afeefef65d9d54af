//! The SSH data plane under the clients people point at a bastion: two-way bulk in one
//! channel, multiplexed commands with exact exit codes, forwarded connections that close,
//! forwarded traffic that counts as activity, asyncssh and paramiko. Every transfer is
//! checksummed and every wait is bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Out;
use crate::ssh::{Bastion, ended_session, only_session};

/// Waits for `child` at most `limit`; kills it and fails the test past that.
pub fn wait_for(mut child: Child, limit: Duration, what: &str) -> Out {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap().into();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out: Out = child.wait_with_output().unwrap().into();
    panic!("{what} did not finish within {limit:?}: {out:?}");
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn random_file(path: &Path, mib: usize) {
    let out = Command::new("head")
        .args(["-c", &format!("{}", mib << 20), "/dev/urandom"])
        .output()
        .unwrap();
    std::fs::write(path, out.stdout).unwrap();
}

/// Every session in the index has ended, and every recording of it was finished.
fn all_sessions_ended(b: &Bastion) {
    let mut last = String::new();
    for _ in 0..100 {
        let list: serde_json::Value =
            serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
        let open: Vec<&serde_json::Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["end_reason"].is_null()
                    || s["recordings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["sha256"].is_null())
            })
            .collect();
        if open.is_empty() {
            return;
        }
        last = format!("{open:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "sessions or recordings left open: {last}\n{}",
        b.postern.log()
    );
}

/// The target's sshd runs no process for a connection any more (within 10 s): every
/// upstream connection postern opened was closed.
fn target_serves_nothing(b: &Bastion) {
    let mut children = usize::MAX;
    for _ in 0..100 {
        children = b.sshd.children();
        if children == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{children} sshd processes left on the target");
}

#[test]
fn two_way_bulk_in_one_channel_completes_intact() {
    let b = Bastion::start();
    let dir = b.postern.root();
    let input = dir.join("bulk.in");
    let output = dir.join("bulk.out");
    random_file(&input, 64);
    // Both directions at full speed in one channel: stdin streams in while cat's
    // output streams back.
    let child = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("cat")
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_for(child, Duration::from_secs(120), "two-way 64 MiB cat");
    assert_eq!(out.code, 0, "{out:?}\n{}", b.postern.log());
    assert_eq!(sha256(&input), sha256(&output));
    let s = ended_session(&b);
    assert_eq!(s["exit_status"], 0);
    assert!(s["bytes_in"].as_u64().unwrap() >= 64 << 20, "{s}");
    all_sessions_ended(&b);
}

/// Starts a ControlMaster connection through postern; returns it and its socket path.
pub fn master(b: &Bastion) -> (Child, String) {
    let sock = b.postern.root().join("ctl.sock").display().to_string();
    let mut child = b
        .ssh_command("ssh")
        .args([
            "-p",
            &b.postern.ssh.port().to_string(),
            "-M",
            "-N",
            "-S",
            &sock,
        ])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        let check = Command::new("ssh")
            .args(["-S", &sock, "-O", "check", "x"])
            .output()
            .unwrap();
        if check.status.success() {
            return (child, sock);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the control master never came up: {}", b.postern.log());
}

pub fn muxed(sock: &str, command: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-S", sock, "-o", "BatchMode=yes", "x", command]);
    c
}

#[test]
fn multiplexed_commands_keep_their_exit_codes() {
    // 30 at once: above OpenSSH's (and postern's) default of 10 session channels.
    let b = Bastion::start_with(&[], Some("[ssh]\nmax_sessions = 40\n"));
    let (mut m, sock) = master(&b);
    // The client closes once both sides sent EOF; the exit status comes later. It must
    // still arrive (sshd sends it before its CLOSE, and so must postern).
    let children: Vec<(u32, Child)> = (0..30)
        .map(|i| {
            let code = 1 + i % 40;
            let mut c = muxed(
                &sock,
                &format!("cat; exec 1>&- 2>&-; sleep 0.3; exit {code}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
            let mut stdin = c.stdin.take().unwrap();
            stdin.write_all(format!("hi {i}\n").as_bytes()).unwrap();
            drop(stdin);
            (code, c)
        })
        .collect();
    for (i, (code, c)) in children.into_iter().enumerate() {
        let out = wait_for(c, Duration::from_secs(60), "multiplexed command");
        assert_eq!(
            out.code,
            code as i32,
            "command {i}: {out:?}\n{}",
            b.postern.log()
        );
        assert_eq!(out.stdout, format!("hi {i}\n"));
    }
    // Short commands one after another, each ending cleanly, and all on one connection
    // to the target: each channel's slot there is given back when it ends (sshd allows
    // ten channels a connection; a channel never closed kept its slot, and every command
    // past the tenth paid for a refused channel and a new connection).
    let logins = || b.sshd.log().matches("Accepted publickey").count();
    std::thread::sleep(Duration::from_secs(3));
    let before = logins();
    for i in 0..20 {
        let out = wait_for(
            muxed(&sock, &format!("echo {i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            Duration::from_secs(30),
            "short multiplexed command",
        );
        assert_eq!(out.stdout, format!("{i}\n"), "{out:?}");
    }
    assert_eq!(
        logins() - before,
        1,
        "connections to the target for 20 commands in a row"
    );
    // Every channel's upstream connection ended: the target serves nothing now.
    target_serves_nothing(&b);
    let s = only_session(&b);
    let recordings = s["recordings"].as_array().unwrap();
    assert_eq!(recordings.len(), 50, "{s}");
    assert!(
        recordings.iter().all(|r| !r["sha256"].is_null()),
        "every channel's recording is finished while the connection lives: {s}"
    );
    let _ = m.kill();
    let _ = m.wait();
    all_sessions_ended(&b);
}

/// A loopback TCP server that reads a request line and answers it, then closes; it runs
/// until the test process ends.
fn line_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = [0u8; 64];
            let n = conn.read(&mut req).unwrap_or(0);
            let _ = conn.write_all(b"reply to ");
            let _ = conn.write_all(&req[..n]);
        }
    });
    port
}

/// Starts `ssh -N FLAG SPEC` through postern (a forwarding client) and waits until it
/// listens on `local`.
fn forwarding(b: &Bastion, flag: &str, spec: &str, local: u16) -> Child {
    let mut child = b
        .ssh_command("ssh")
        .args([
            "-p",
            &b.postern.ssh.port().to_string(),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            flag,
            spec,
        ])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", local)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("`ssh -N {flag} {spec}` never listened");
}

/// Starts `ssh -N -L LOCAL:127.0.0.1:PORT` through postern; returns it and LOCAL.
fn tunnel(b: &Bastion, port: u16) -> (Child, u16) {
    let local = crate::harness::free_port();
    let spec = format!("{local}:127.0.0.1:{port}");
    (forwarding(b, "-L", &spec, local), local)
}

/// One request through the tunnel: connect, send a line, read the answer to EOF.
fn fetch(local: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn forwarded_connections_close_and_leave_nothing_behind() {
    let b = Bastion::start_with_role(&["--port-forwarding", "true"]);
    let port = line_server();
    let (mut t, local) = tunnel(&b, port);
    for i in 0..100 {
        let request = format!("GET {i}\n");
        assert_eq!(
            fetch(local, &request),
            format!("reply to {request}"),
            "connection {i}"
        );
    }
    // Each forwarded connection closed end to end: no upstream connection, no sshd
    // process and no open recording is left while the tunnel itself stays up.
    target_serves_nothing(&b);
    let s = only_session(&b);
    assert!(s["end_reason"].is_null(), "the tunnel is still up: {s}");
    let recordings = s["recordings"].as_array().unwrap();
    // The tunnel's readiness probe may have opened one more.
    assert!(recordings.len() >= 100, "{s}");
    assert!(
        recordings.iter().all(|r| !r["sha256"].is_null()),
        "recordings left open: {s}"
    );
    let _ = t.kill();
    let _ = t.wait();
    all_sessions_ended(&b);
}

#[test]
fn forwarded_traffic_counts_as_activity() {
    let b = Bastion::start_with_role(&["--port-forwarding", "true", "--idle-timeout", "5s"]);
    let port = line_server();
    let (t, local) = tunnel(&b, port);
    // Eight seconds of use, one request a second: well past the idle timeout.
    for i in 0..8 {
        let request = format!("GET {i}\n");
        assert_eq!(fetch(local, &request), format!("reply to {request}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let s = only_session(&b);
    assert!(
        s["end_reason"].is_null(),
        "a tunnel in use is not idle: {s}"
    );
    // Unused, it ends.
    let out = wait_for(t, Duration::from_secs(20), "idle tunnel");
    assert_eq!(out.code, 255, "{out:?}");
    assert_eq!(ended_session(&b)["end_reason"], "idle");
}

/// `python3 -c SCRIPT` with the bastion's port, key and known_hosts in the environment.
pub fn python(b: &Bastion, script: &str) -> Out {
    let known = b.postern.root().join("known_hosts_py");
    let host_pub =
        std::fs::read_to_string(b.postern.data_dir().join("keys/ssh_host_ed25519_key.pub"))
            .unwrap();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {host_pub}", b.postern.ssh.port()),
    )
    .unwrap();
    let child = Command::new("python3")
        .args(["-c", script])
        .env("PORT", b.postern.ssh.port().to_string())
        .env("KEY", &b.key)
        .env("KNOWN", &known)
        .env("USER_AT", b.dest())
        .env("DIR", b.postern.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(child, Duration::from_secs(120), "python client")
}

/// `python` with a paramiko client `c` already connected to the bastion (its host key
/// pinned, unknown keys refused) before `body` runs.
pub fn paramiko(b: &Bastion, body: &str) -> Out {
    const CONNECT: &str = r#"
import os, paramiko
c = paramiko.SSHClient()
c.load_host_keys(os.environ['KNOWN'])
c.set_missing_host_key_policy(paramiko.RejectPolicy())
c.connect('127.0.0.1', port=int(os.environ['PORT']), username=os.environ['USER_AT'],
          key_filename=os.environ['KEY'], allow_agent=False, look_for_keys=False)
"#;
    python(b, &format!("{CONNECT}{body}"))
}

#[test]
fn asyncssh_runs_concurrent_channels_and_sftp_on_one_connection() {
    // 20 channels at once on one connection: above the default max_sessions of 10.
    let b = Bastion::start_with(&[], Some("[ssh]\nmax_sessions = 24\n"));
    let src = b.postern.root().join("model.bin");
    random_file(&src, 8);
    let out = python(
        &b,
        r#"
import asyncio, os, asyncssh
async def main():
    async with asyncssh.connect('127.0.0.1', port=int(os.environ['PORT']),
            username=os.environ['USER_AT'], client_keys=[os.environ['KEY']],
            known_hosts=os.environ['KNOWN']) as conn:
        async def one(i):
            r = await conn.run(f'echo ch{i}; exit {i % 7}')
            return (r.stdout, r.exit_status)
        results = await asyncio.gather(*(one(i) for i in range(20)))
        for i, (out, status) in enumerate(results):
            assert out == f'ch{i}\n', (i, out)
            assert status == i % 7, (i, status)
        async with conn.start_sftp_client() as sftp:
            d = os.environ['DIR']
            await sftp.put(os.path.join(d, 'model.bin'), os.path.join(d, 'up.bin'))
            await sftp.get(os.path.join(d, 'up.bin'), os.path.join(d, 'down.bin'))
        r = await conn.run('echo after-sftp')
        assert r.stdout == 'after-sftp\n', r.stdout
    print('ok')
asyncio.run(main())
"#,
    );
    assert_eq!(out.stdout, "ok\n", "{out:?}\n{}", b.postern.log());
    let dir = b.postern.root();
    assert_eq!(sha256(&src), sha256(&dir.join("down.bin")));
    all_sessions_ended(&b);
}

#[test]
fn paramiko_exec_and_prefetching_sftp_get() {
    let b = Bastion::start();
    let src = b.postern.root().join("ckpt.bin");
    random_file(&src, 32);
    let out = paramiko(
        &b,
        r#"
_, out, _ = c.exec_command('echo from-paramiko; exit 3')
assert out.read() == b'from-paramiko\n'
assert out.channel.recv_exit_status() == 3
s = c.open_sftp()
d = os.environ['DIR']
s.get(os.path.join(d, 'ckpt.bin'), os.path.join(d, 'got.bin'))  # pipelined reads
s.close()
c.close()
print('ok')
"#,
    );
    assert_eq!(out.stdout, "ok\n", "{out:?}\n{}", b.postern.log());
    assert_eq!(sha256(&src), sha256(&b.postern.root().join("got.bin")));
    all_sessions_ended(&b);
}

#[test]
fn recordings_follow_a_moved_data_dir_and_commands_are_searchable() {
    let mut b = Bastion::start();
    let out = b.ssh(&b.dest(), "echo marker-$((2+3))");
    assert_eq!(out.ok(), "marker-5\n");
    let id = ended_session(&b)["id"].as_str().unwrap().to_string();
    // The command an exec channel ran is searched and shown.
    let grep = b.postern.cli(&["sessions", "grep", "echo marker"]);
    assert!(grep.ok().contains("$ echo marker-$((2+3))"), "{grep:?}");
    let show = b.postern.cli(&["sessions", "show", &id]);
    assert!(
        show.ok().contains("command    echo marker-$((2+3))"),
        "{show:?}"
    );
    b.postern.stop();

    // The data dir moves; read from another working directory, it still replays.
    let moved = b.postern.root().join("moved-data");
    std::fs::rename(b.postern.data_dir(), &moved).unwrap();
    let cli = |args: &[&str]| -> Out {
        Command::new(crate::harness::postern::BIN)
            .arg("--data-dir")
            .arg(&moved)
            .args(args)
            .current_dir("/")
            .env_remove("POSTERN_CONFIG")
            .env_remove("POSTERN_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    let replay = cli(&["replay", &id, "--speed", "100"]);
    assert!(replay.ok().contains("marker-5"), "{replay:?}");
    assert!(cli(&["sessions", "grep", "marker-5"]).ok().contains(&id));

    // A recording that cannot be read is an error, not "no match".
    let show: serde_json::Value =
        serde_json::from_str(cli(&["sessions", "show", &id, "--json"]).ok()).unwrap();
    let path = show["recordings"][0]["path"].as_str().unwrap().to_string();
    assert!(path.starts_with(moved.to_str().unwrap()), "{path}");
    std::fs::remove_file(&path).unwrap();
    let grep = cli(&["sessions", "grep", "marker-5"]);
    assert_eq!(grep.code, 2, "{grep:?}");
    assert!(
        grep.stderr.contains("cannot read the recording of session"),
        "{grep:?}"
    );
    assert_ne!(cli(&["replay", &id]).code, 0);
}

#[test]
fn channels_without_a_terminal_are_recorded_losslessly() {
    let b = Bastion::start();
    let dir = b.postern.root();
    let input = dir.join("ckpt.bin");
    random_file(&input, 4);
    let out: Out = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("cat; echo findme-on-stderr >&2")
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = ended_session(&b);
    let id = s["id"].as_str().unwrap().to_string();
    let rec = &s["recordings"][0];
    let path = rec["path"].as_str().unwrap();
    assert!(path.ends_with(".stream"), "{path}");
    // 4 MiB each way of random bytes: the recording is barely larger than what crossed.
    let relayed = 8u64 << 20;
    let size = std::fs::metadata(path).unwrap().len();
    assert!(size * 100 <= relayed * 105, "{size} bytes for {relayed}");
    // Each stream comes back exactly.
    for stream in ["stdin", "stdout"] {
        let file = dir.join(format!("export.{stream}"));
        b.postern
            .cli(&[
                "sessions",
                "export",
                &id,
                "--stream",
                stream,
                "-o",
                file.to_str().unwrap(),
            ])
            .ok();
        assert_eq!(sha256(&file), sha256(&input), "{stream}");
    }
    let replay = b.postern.cli(&["replay", &id]);
    let text = replay.ok();
    assert!(
        text.contains("command  cat; echo findme-on-stderr >&2"),
        "{text}"
    );
    assert!(text.contains("(binary, 4194304 bytes"), "{text}");
    assert!(text.contains("exit-status 0"), "{text}");
    let grep = b.postern.cli(&["sessions", "grep", "findme-on-stderr"]);
    assert!(grep.ok().contains(&id), "{grep:?}");
    // The same session's text survives escaping: no raw control bytes reach a terminal.
    assert!(!text.contains('\u{1b}'));

    // scp is logged as a file transfer, with its direction and path.
    let target = dir.join("uploaded.bin");
    let out: Out = b
        .ssh_command("scp")
        .args(["-O", "-P", &b.postern.ssh.port().to_string()])
        .arg(&input)
        .arg(format!("{}@127.0.0.1:{}", b.dest(), target.display()))
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:?}");
    let mut events = Vec::new();
    for _ in 0..50 {
        events = b.postern.events("session.file_transfer");
        if !events.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = &events[0]["details"];
    assert_eq!(e["tool"], "scp");
    assert_eq!(e["direction"], "upload");
    assert_eq!(e["paths"][0], target.to_str().unwrap());
    assert!(e["bytes_from_client"].as_u64().unwrap() >= 4 << 20, "{e}");
    assert_eq!(sha256(&target), sha256(&input));
}

#[test]
fn dynamic_forwarding_carries_socks_connections() {
    let b = Bastion::start_with_role(&["--port-forwarding", "true"]);
    let port = line_server();
    let socks = crate::harness::free_port();
    let mut t = forwarding(&b, "-D", &format!("127.0.0.1:{socks}"), socks);
    // Five SOCKS5 CONNECTs in a row, each a whole request and answer.
    for i in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", socks)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&[5, 1, 0]).unwrap();
        let mut hello = [0u8; 2];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(hello, [5, 0]);
        let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply[1], 0, "SOCKS reply {reply:?}");
        let request = format!("GET {i}\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, format!("reply to {request}"));
    }
    target_serves_nothing(&b);
    let _ = t.kill();
    let _ = t.wait();
    all_sessions_ended(&b);
}

/// The id of the only live session, once it has a recording.
fn live_session(b: &Bastion) -> String {
    for _ in 0..100 {
        let list: serde_json::Value =
            serde_json::from_str(b.postern.cli(&["sessions", "list", "--json"]).ok()).unwrap();
        if let Some(s) = list.as_array().unwrap().last()
            && s["end_reason"].is_null()
            && !s["recordings"].as_array().unwrap().is_empty()
        {
            return s["id"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no live session: {}", b.postern.log());
}

#[test]
fn a_client_that_stops_reading_can_still_be_killed() {
    let b = Bastion::start();
    // A two-way stream whose client reads nothing: every window toward it is full.
    let mut child = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("cat /dev/zero & cat > /dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = live_session(&b);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; 1 << 16];
        while stdin.write_all(&chunk).is_ok() {}
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = b.postern.cli(&["sessions", "kill", &id]);
    assert_eq!(out.ok().trim(), format!("session {id} ended (killed)"));
    let _ = child.kill();
    let _ = child.wait();
    let _ = writer.join();
    target_serves_nothing(&b);
    all_sessions_ended(&b);
}

#[test]
fn a_client_killed_mid_transfer_leaves_a_finished_recording() {
    let b = Bastion::start();
    let mut child = b
        .ssh_command("ssh")
        .args(["-p", &b.postern.ssh.port().to_string()])
        .arg(format!("{}@127.0.0.1", b.dest()))
        .arg("cat > /dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    live_session(&b);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![9u8; 1 << 16];
        while stdin.write_all(&chunk).is_ok() {}
    });
    std::thread::sleep(Duration::from_secs(1));
    // SIGKILL: no EOF, no CLOSE, the TCP connection just goes.
    let _ = child.kill();
    let _ = child.wait();
    let _ = writer.join();
    let s = ended_session(&b);
    assert!(s["bytes_in"].as_u64().unwrap() > 0, "{s}");
    target_serves_nothing(&b);
    all_sessions_ended(&b);
}
