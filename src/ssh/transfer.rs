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

/// A file transfer as the target's side of it was started: which tool, which way
/// (`upload`: client to target), and the paths named on its command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Transfer {
    pub tool: &'static str,
    pub direction: &'static str,
    pub paths: Vec<String>,
}

/// Describes an `scp -t/-f` or `rsync --server` command; `None` for anything else.
pub fn describe(command: &str) -> Option<Transfer> {
    let tool = tool(command)?;
    let words: Vec<&str> = command.split_ascii_whitespace().skip(1).collect();
    let (direction, paths): (&str, Vec<&str>) = match tool {
        "scp" => {
            let download = words.iter().any(|w| is_flag_with(w, &['f']));
            let paths = words
                .iter()
                .filter(|w| !w.starts_with('-'))
                .copied()
                .collect();
            (if download { "download" } else { "upload" }, paths)
        }
        "rsync" => {
            let download = words.contains(&"--sender");
            // `rsync --server [options] . PATH…`
            let paths = words
                .iter()
                .skip_while(|w| **w != ".")
                .skip(1)
                .copied()
                .collect();
            (if download { "download" } else { "upload" }, paths)
        }
        _ => return None,
    };
    Some(Transfer {
        tool,
        direction,
        paths: paths.into_iter().map(super::username::printable).collect(),
    })
}

/// `-t`, `-rt`, `-pf`…: a single-dash flag cluster holding one of `letters`.
fn is_flag_with(word: &str, letters: &[char]) -> bool {
    word.strip_prefix('-')
        .filter(|f| !f.starts_with('-') && !f.is_empty())
        .is_some_and(|f| f.chars().any(|c| letters.contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::{Transfer, describe, tool};

    #[test]
    fn transfers_are_described_with_direction_and_paths() {
        assert_eq!(
            describe("scp -r -t -- /data/ckpt"),
            Some(Transfer {
                tool: "scp",
                direction: "upload",
                paths: vec!["/data/ckpt".into()]
            })
        );
        assert_eq!(describe("scp -f model.bin").unwrap().direction, "download");
        let r = describe("rsync --server --sender -vlogDtpre.iLsfxCIvu . /data/x").unwrap();
        assert_eq!(
            (r.direction, r.paths),
            ("download", vec!["/data/x".to_string()])
        );
        assert_eq!(describe("sftp-server"), None);
        assert_eq!(describe("ls"), None);
    }

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
