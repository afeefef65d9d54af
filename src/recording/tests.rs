//! A recording is valid asciicast v2, hashes what it wrote, and fails closed.

use super::*;

#[tokio::test]
async fn writes_header_events_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r/1.cast");
    let store = RecordingStore::dir(dir.path().to_path_buf());
    let rec = Recorder::create(
        &store,
        "recordings/r/1.cast",
        Header::new(80, 24, "xterm", "t".into(), None),
    )
    .await
    .unwrap();
    rec.record(Event::Input(Bytes::from_static(b"ls\r")))
        .await
        .unwrap();
    rec.record(Event::Output(Bytes::from_static(b"a b\r\n")))
        .await
        .unwrap();
    rec.record(Event::Stderr(Bytes::from_static(b"oops\n")))
        .await
        .unwrap();
    rec.record(Event::Resize {
        cols: 100,
        rows: 30,
    })
    .await
    .unwrap();
    let done = rec.finish().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["version"], 2);
    assert_eq!(lines[0]["width"], 80);
    assert_eq!(lines[0]["env"]["TERM"], "xterm");
    let events: Vec<(String, String)> = lines[1..]
        .iter()
        .map(|e| {
            (
                e[1].as_str().unwrap().to_string(),
                e[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("i", "ls\r"),
        ("o", "a b\r\n"),
        ("m", "stderr"),
        ("o", "oops\n"),
        ("r", "100x30"),
    ];
    assert_eq!(events, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    let digest = aws_lc_rs::digest::digest(&SHA256, text.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(done.sha256, hex);
    assert_eq!(done.bytes, text.len() as u64);
    assert_eq!(
        std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );
}

#[tokio::test]
async fn cannot_create_in_an_unwritable_place() {
    let err = Recorder::create(
        &RecordingStore::dir(PathBuf::from("/proc/postern")),
        "recordings/x.cast",
        Header::new(80, 24, "xterm", "t".into(), None),
    )
    .await;
    assert!(err.is_err());
}
