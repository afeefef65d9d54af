//! What one SSH connection may ask for: session channels at once (`max_sessions`),
//! file-transfer servers when `file_transfer = false`, terminal sizes and types. Each
//! refusal is a message the client shows and an audit event.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::ssh::Bastion;
use crate::ssh_plane::{master, muxed, paramiko, random_file, wait_for};

fn denials(b: &Bastion) -> Vec<String> {
    b.postern
        .events("access.deny")
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn session_channels_per_connection_are_capped() {
    let b = Bastion::start();
    let (mut m, sock) = master(&b);
    let spawn = |cmd: &str| -> Child {
        muxed(&sock, cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let running: Vec<Child> = (0..10).map(|_| spawn("sleep 4; echo done")).collect();
    std::thread::sleep(Duration::from_secs(2));
    // Ten channels opened at once share postern's connections to the target: two (eight
    // channels each at most), not one per channel.
    assert_eq!(b.sshd.children(), 2, "upstream connections for 10 channels");
    let out = wait_for(spawn("echo eleventh"), Duration::from_secs(20), "11th");
    assert_ne!(out.code, 0, "{out:?}");
    // OpenSSH's multiplexer reports the refused channel open.
    assert!(
        out.stderr.contains("Session open refused by peer"),
        "{out:?}"
    );
    for c in running {
        assert_eq!(
            wait_for(c, Duration::from_secs(20), "sleeper").ok(),
            "done\n"
        );
    }
    // The slots are given back, once each channel's recording is finished and indexed
    // (which can come a moment after its client saw the exit status).
    let started = std::time::Instant::now();
    let out = loop {
        let out = wait_for(spawn("echo again"), Duration::from_secs(20), "after");
        if out.code == 0 || started.elapsed() > Duration::from_secs(10) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(out.ok(), "again\n");
    assert!(
        denials(&b)
            .iter()
            .any(|r| r == "too many session channels on one connection"),
        "{:?}",
        denials(&b)
    );
    let _ = m.kill();
    let _ = m.wait();
}

#[test]
fn a_target_allowing_fewer_channels_gets_more_connections() {
    // A hardened target takes two session channels a connection. Two long commands fill
    // postern's first connection to it; the commands after them are refused there once,
    // and from then on go to a second connection (not a refusal and a new connection
    // each).
    let b = Bastion::start_with_target("MaxSessions 2\n");
    let (mut m, sock) = master(&b);
    let spawn = |cmd: &str| -> Child {
        muxed(&sock, cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let sleepers: Vec<Child> = (0..2).map(|_| spawn("sleep 6; echo done")).collect();
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..4 {
        let out = wait_for(
            spawn(&format!("echo {i}")),
            Duration::from_secs(30),
            "command",
        );
        assert_eq!(out.ok(), format!("{i}\n"));
    }
    let log = b.sshd.log();
    assert_eq!(
        log.matches("no more sessions").count(),
        1,
        "refused channels\n{log}"
    );
    assert_eq!(
        log.matches("Accepted publickey").count(),
        2,
        "connections\n{log}"
    );
    for c in sleepers {
        assert_eq!(
            wait_for(c, Duration::from_secs(30), "sleeper").ok(),
            "done\n"
        );
    }
    let _ = m.kill();
    let _ = m.wait();
}

#[test]
fn file_transfer_off_refuses_every_transfer_server() {
    let b = Bastion::start_with_role(&["--file-transfer", "false"]);
    let dir = b.postern.root();
    let src = dir.join("weights.bin");
    random_file(&src, 1);
    let port = b.postern.ssh.port().to_string();
    let dest = format!("{}@127.0.0.1", b.dest());
    let run = |mut c: std::process::Command| {
        wait_for(
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            Duration::from_secs(30),
            "transfer",
        )
    };
    // scp in its original protocol: exec `scp -t`.
    let mut scp = b.ssh_command("scp");
    scp.args(["-O", "-P", &port])
        .arg(&src)
        .arg(format!("{dest}:{}", dir.join("scp.out").display()));
    let out = run(scp);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("file transfer (scp) is not allowed"),
        "{out:?}"
    );
    // rsync over ssh: exec `rsync --server`.
    let mut rsync = std::process::Command::new("rsync");
    let ssh = format!(
        "ssh -F /dev/null -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -p {port}",
        b.key.display(),
        b.known_hosts.display()
    );
    rsync
        .args(["-e", &ssh])
        .arg(&src)
        .arg(format!("{dest}:{}", dir.join("rsync.out").display()));
    let out = run(rsync);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("file transfer (rsync) is not allowed"),
        "{out:?}"
    );
    // sftp started as a command instead of the subsystem.
    let mut sftp = b.ssh_command("sftp");
    sftp.args([
        "-P",
        &port,
        "-s",
        "/usr/lib/openssh/sftp-server",
        "-b",
        "/dev/null",
    ])
    .arg(&dest);
    let out = run(sftp);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!dir.join("scp.out").exists() && !dir.join("rsync.out").exists());
    let tools: Vec<String> = b
        .postern
        .events("access.deny")
        .iter()
        .filter_map(|e| e["details"]["tool"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tools, ["scp", "rsync", "sftp"], "{tools:?}");
    // A shell still works (and what it moves is recorded).
    assert_eq!(b.ssh(&b.dest(), "echo shell-ok").ok(), "shell-ok\n");
}

#[test]
fn absurd_terminals_are_refused_and_term_is_cleaned() {
    let b = Bastion::start();
    let out = paramiko(
        &b,
        r#"
ch = c.get_transport().open_session()
try:
    ch.get_pty(term='xterm', width=4000000, height=24)
    print('pty accepted')
except paramiko.SSHException:
    print('pty refused')
ch.close()
ch = c.get_transport().open_session()
ch.get_pty(term='xterm\x1b]0;owned\x07-256color', width=80, height=24)
ch.exec_command('printf "%s|" "$TERM"')
print(ch.makefile().read().decode())
c.close()
"#,
    );
    assert_eq!(
        out.stdout,
        "pty refused\nxterm]0;owned-256color|\n",
        "{out:?}\n{}",
        b.postern.log()
    );
    assert!(
        denials(&b).iter().any(|r| r == "pty size out of range"),
        "{:?}",
        denials(&b)
    );
}

/// `forward_to` limits where forwards go, and a live policy change reaches forwards and
/// transfers already running: they end, the session's other channels go on.
#[test]
fn forward_to_limits_destinations_and_withdrawals_reach_open_channels() {
    use std::io::{BufRead, BufReader, Write};
    let b = Bastion::start_with_role(&["--port-forwarding", "true"]);
    let allowed = format!("127.0.0.1:{}", b.sshd.port);
    b.postern
        .cli(&["admin", "role", "set", "dev", "--forward-to", &allowed])
        .ok();
    let port = b.postern.ssh.port().to_string();
    let dest = format!("{}@127.0.0.1", b.dest());
    let forward = |to: &str| {
        b.ssh_command("ssh")
            .args(["-p", &port, "-W", to])
            .arg(&dest)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Elsewhere than forward_to: refused and audited.
    let mut other = forward(&format!("127.0.0.1:{}", b.postern.api.port()));
    drop(other.stdin.take());
    let out = wait_for(other, Duration::from_secs(20), "a refused forward");
    assert!(
        out.stderr.contains("administratively prohibited"),
        "{out:?}"
    );
    let denied = b.postern.events("access.deny");
    assert!(
        denied
            .iter()
            .any(|e| e["details"]["reason"] == "destination not in forward_to"),
        "{denied:?}"
    );
    // To the allowed destination: the target's banner, then the forward stays open.
    let mut open = forward(&allowed);
    let mut banner = String::new();
    BufReader::new(open.stdout.as_mut().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
    // An sftp session, open too.
    let mut sftp = b
        .ssh_command("sftp")
        .args(["-P", &port, "-b", "-"])
        .arg(&dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sftp_in = sftp.stdin.take().unwrap();
    writeln!(sftp_in, "pwd").unwrap();
    let mut line = String::new();
    let mut sftp_out = BufReader::new(sftp.stdout.take().unwrap());
    while !line.contains("Remote working directory") {
        line.clear();
        assert!(
            sftp_out.read_line(&mut line).unwrap() > 0,
            "sftp ended early"
        );
    }
    // Both are withdrawn while they run.
    b.postern
        .cli(&[
            "admin",
            "role",
            "set",
            "dev",
            "--port-forwarding",
            "false",
            "--file-transfer",
            "false",
        ])
        .ok();
    // It ends (as a forward ends: EOF and close, nothing else on the channel).
    let out = wait_for(open, Duration::from_secs(15), "a withdrawn forward");
    assert!(!out.stderr.contains("bad ext data"), "{out:?}");
    // sftp notices when it next talks to the server: its channel is gone.
    let started = std::time::Instant::now();
    while sftp.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "sftp still running after file transfer was withdrawn"
        );
        let _ = writeln!(sftp_in, "ls");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!sftp.wait().unwrap().success());
    drop(sftp_in);
    let withdrawn: Vec<String> = b
        .postern
        .events("access.deny")
        .iter()
        .filter_map(|e| e["details"]["reason"].as_str().map(String::from))
        .filter(|r| r.contains("withdrawn"))
        .collect();
    assert!(
        withdrawn.iter().any(|r| r.starts_with("port forwarding"))
            && withdrawn.iter().any(|r| r.starts_with("file transfer")),
        "{withdrawn:?}"
    );
    // Sessions go on: a command still runs.
    assert_eq!(b.ssh(&b.dest(), "echo still").ok(), "still\n");
}
