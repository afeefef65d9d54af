//! A bounded fuzz pass over what outsiders feed postern: SSH usernames, policy and config
//! files, label selectors, PostgreSQL messages through the statement tracker, and the
//! recording readers on damaged files. Each gets arbitrary input and input shaped like
//! the real thing; the only acceptable answers are a value or an error, never a panic.
//! (The PostgreSQL framing and startup parsers have their own property tests in
//! `pg/wire.rs`.)

use std::path::Path;

use proptest::prelude::*;

/// Text with the characters parsers trip on: quotes, brackets, separators, controls,
/// multi-byte and bidi characters.
fn nasty() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range(' ', '~'),
            1 => proptest::sample::select(&['\0', '\n', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}', '\u{202e}', 'é', '€', '\u{10348}', '@', '=', '[', ']', '"', '\''][..]),
        ],
        0..80,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// TOML-like text: lines of tables, keys and values from the real files.
fn toml_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        proptest::sample::select(
            &[
                "[[roles]]",
                "[[roles.allow]]",
                "[[roles.deny]]",
                "[[targets]]",
                "[[users]]",
                "[ssh]",
                "[postgres]",
                "[audit]",
                "[api]",
                "[tls]",
                "[log]",
            ][..]
        )
        .prop_map(str::to_string),
        (
            proptest::sample::select(
                &[
                    "name",
                    "targets",
                    "logins",
                    "databases",
                    "db_users",
                    "kind",
                    "address",
                    "host_key",
                    "labels",
                    "roles",
                    "keys",
                    "locked",
                    "credential_ttl",
                    "max_session_ttl",
                    "idle_timeout",
                    "port_forwarding",
                    "file_transfer",
                    "forward_to",
                    "listen",
                    "data_dir",
                    "mirror",
                    "witness",
                    "repeat_window",
                    "max_connections",
                    "login_grace_time",
                    "tls_mode",
                    "level",
                ][..]
            ),
            prop_oneof![
                nasty().prop_map(|s| format!("{s:?}")),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                proptest::collection::vec(nasty(), 0..3).prop_map(|v| format!("{v:?}")),
                Just("{ env = \"prod\" }".to_string()),
                Just("\"8h\"".to_string()),
                Just("\"127.0.0.1:0\"".to_string()),
            ],
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
        nasty(),
    ];
    proptest::collection::vec(line, 0..14).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn ssh_usernames(name in nasty()) {
        if let Ok(d) = crate::ssh::username::parse(&name) {
            prop_assert!(crate::policy::names::check_target_name(&d.target).is_ok(), "{:?}", d.target);
        }
        let shown = crate::policy::names::printable(&name);
        prop_assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
    }

    #[test]
    fn policy_and_config_files(text in toml_like()) {
        let _ = crate::policy::file::parse(Path::new("fuzz.toml"), &text);
        let _ = crate::config::Config::parse(Path::new("fuzz.toml"), &text);
    }

    #[test]
    fn selectors(text in nasty()) {
        let _ = text.parse::<crate::policy::Selector>();
    }

    #[test]
    fn forward_to_entries(entry in nasty(), host in nasty(), port in any::<u32>()) {
        let list = vec![entry.clone()];
        if crate::policy::forward::check(&list).is_ok() {
            let _ = crate::policy::forward::allows(&list, &host, port);
            let _ = crate::policy::forward::intersect(&list, &list);
        }
    }

    /// Arbitrary client and server messages through one statement tracker: it records or
    /// refuses (a `Limit`), never panics, and stays bounded.
    #[test]
    fn statement_tracker(messages in proptest::collection::vec(
        (any::<bool>(), proptest::sample::select(&b"QPBEDCSHXFdcfTZ1234nIsE"[..]), proptest::collection::vec(any::<u8>(), 0..64)),
        0..40,
    )) {
        let mut t = crate::pg::tracker::Tracker::new(false);
        let mut out = Vec::new();
        for (from_client, tag, body) in &messages {
            if *from_client {
                if t.client(*tag, body, None, &mut out).is_err() {
                    break;
                }
            } else {
                t.server(*tag, body, &mut out);
            }
        }
        t.finish(&mut out);
        prop_assert!(out.len() < 1 << 20);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Damaged recordings: random bytes, and real ones cut or with a byte changed. The
    /// readers answer with records or an error.
    #[test]
    fn recording_readers(junk in proptest::collection::vec(any::<u8>(), 0..2048), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let real = real_stream(dir.path());
        let mut damaged = real.clone();
        let i = flip.index(damaged.len());
        damaged[i] ^= 0x5a;
        for (name, bytes) in [
            ("junk.stream", junk.clone()),
            ("cut.stream", real[..cut.index(real.len())].to_vec()),
            ("flipped.stream", damaged),
            ("junk.pg.jsonl", junk.clone()),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = crate::recording::stream::read(&path, |_| Ok(()));
            let _ = crate::recording::transcript::read(&path);
        }
    }
}

/// A small real `.stream` recording's bytes.
fn real_stream(dir: &Path) -> Vec<u8> {
    use crate::recording::{Event, Header, Recorder, RecordingStore};
    let path = dir.join("real.stream");
    let store = RecordingStore::dir(dir.to_path_buf());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(rt) = rt else { return Vec::new() };
    rt.block_on(async {
        let header = Header::new(80, 24, "dumb", "fuzz".into(), Some("cat".into()));
        let Ok(r) = Recorder::create_stream(&store, "recordings/real.stream", header).await else {
            return;
        };
        for i in 0..20u8 {
            let _ = r.record(Event::Output(vec![i; 100].into())).await;
            let _ = r.record(Event::Input(vec![b'x'; 10].into())).await;
        }
        let _ = r.finish().await;
    });
    std::fs::read(&path).unwrap_or_default()
}
