//! Recognising the server side of file-transfer tools in an exec request (`scp -t`,
//! `rsync --server`, `sftp-server`), so `file_transfer = false` refuses them as it refuses
//! the sftp subsystem. A shell can still move bytes (`cat > f`); those bytes are recorded.

/// The transfer tool `command` starts, if it is one: its first word (any directory) and,
/// for scp and rsync, the flag that makes them a server.
pub fn tool(command: &str) -> Option<&'static str> {
    let mut words = command.split_ascii_whitespace();
    let program = words.next()?;
    let name = program.rsplit('/').next().unwrap_or(program);
    let rest: Vec<&str> = words.collect();
    match name {
        "scp" if rest.iter().any(|w| is_flag_with(w, &['t', 'f'])) => Some("scp"),
        "rsync" if rest.contains(&"--server") => Some("rsync"),
        "sftp-server" | "internal-sftp" => Some("sftp"),
        _ => None,
    }
}

/// `-t`, `-rt`, `-pf`…: a single-dash flag cluster holding one of `letters`.
fn is_flag_with(word: &str, letters: &[char]) -> bool {
    word.strip_prefix('-')
        .filter(|f| !f.starts_with('-') && !f.is_empty())
        .is_some_and(|f| f.chars().any(|c| letters.contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::tool;

    #[test]
    fn transfer_servers_are_recognised_by_their_argv() {
        for (command, want) in [
            ("scp -t /data/", Some("scp")),
            ("scp -r -p -t -- /data", Some("scp")),
            ("scp -f model.bin", Some("scp")),
            ("/usr/bin/scp -pt .", Some("scp")),
            ("rsync --server -logDtpre.iLsfxCIvu . /data/", Some("rsync")),
            (
                "rsync --server --sender -vlogDtpre.iLsfxCIvu . x",
                Some("rsync"),
            ),
            ("/usr/lib/openssh/sftp-server", Some("sftp")),
            ("internal-sftp", Some("sftp")),
            ("scp --help", None),
            ("rsync --version", None),
            ("ls -t", None),
            ("echo scp -t", None),
            ("", None),
        ] {
            assert_eq!(tool(command), want, "{command}");
        }
    }
}
