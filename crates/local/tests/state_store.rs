//! FileStateStore: reopening, compare-and-swap, group commit, compaction, the lock against a
//! second open, and bad files (corrupt or foreign files refused and left untouched, a torn last
//! record tolerated, a store of version 1 backed up and migrated). Disk failures are injected
//! in the unit tests of `src/store.rs`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rorqual_core::engine::StateStore;
use rorqual_core::error::Error;
use rorqual_local::FileStateStore;

fn store_path() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    (dir, path)
}

#[tokio::test]
async fn writes_survive_a_reopen() {
    let (_dir, path) = store_path();
    let s = FileStateStore::open(&path).unwrap();
    assert_eq!(
        s.compare_and_swap("a", None, Some(b"{\"x\":1}".to_vec()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.compare_and_swap("a", Some(1), Some(b"{\"x\":2}".to_vec()))
            .await
            .unwrap(),
        2
    );
    s.compare_and_swap("b", None, Some(vec![0, 159, 146, 150, 255]))
        .await
        .unwrap();
    s.compare_and_swap("c", None, Some(b"gone".to_vec()))
        .await
        .unwrap();
    assert_eq!(s.compare_and_swap("c", Some(1), None).await.unwrap(), 0);
    s.compare_and_swap("empty", None, Some(Vec::new()))
        .await
        .unwrap();
    drop(s);
    let s = FileStateStore::open(&path).unwrap();
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version), (&b"{\"x\":2}"[..], 2));
    assert_eq!(
        s.get("b").await.unwrap().unwrap().value,
        [0, 159, 146, 150, 255],
        "bytes that are not UTF-8"
    );
    assert!(s.get("c").await.unwrap().is_none(), "deleted");
    assert_eq!(s.get("empty").await.unwrap().unwrap().value, b"");
    let keys: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["a", "b", "empty"]);
    // Versions continue where they were.
    assert_eq!(
        s.compare_and_swap("a", Some(2), Some(b"3".to_vec()))
            .await
            .unwrap(),
        3
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("{\"format\":\"rorqual-state-store\",\"version\":2}\n"),
        "{text}"
    );
    assert!(
        text.contains(r#""s":"{\"x\":2}""#),
        "JSON values are stored as strings: {text}"
    );
}

#[tokio::test]
async fn compare_and_swap_conflicts_change_nothing() {
    let (_dir, path) = store_path();
    let s = FileStateStore::open(&path).unwrap();
    s.compare_and_swap("a", None, Some(b"1".to_vec()))
        .await
        .unwrap();
    let err = s
        .compare_and_swap("a", None, Some(b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: None,
                found: Some(1),
                ..
            }
        ),
        "{err}"
    );
    let err = s.compare_and_swap("a", Some(7), None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: Some(7),
                found: Some(1),
                ..
            }
        ),
        "{err}"
    );
    let err = s
        .compare_and_swap("missing", Some(1), Some(b"x".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { found: None, .. }), "{err}");
    drop(s);
    let s = FileStateStore::open(&path).unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
    assert!(s.get("missing").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_swaps_of_one_key_serialise() {
    let (_dir, path) = store_path();
    let s = Arc::new(FileStateStore::open(&path).unwrap());
    s.compare_and_swap("n", None, Some(b"0".to_vec()))
        .await
        .unwrap();
    // 8 tasks each add 1, 25 times, retrying on conflicts.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let cur = s.get("n").await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                        match s
                            .compare_and_swap(
                                "n",
                                Some(cur.version),
                                Some((n + 1).to_string().into_bytes()),
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    drop(s);
    let s = FileStateStore::open(&path).unwrap();
    let n = s.get("n").await.unwrap().unwrap();
    assert_eq!((n.value.as_slice(), n.version), (&b"200"[..], 201));
}

#[tokio::test]
async fn the_log_is_compacted_when_garbage_exceeds_live_data() {
    let (_dir, path) = store_path();
    let s = FileStateStore::open(&path).unwrap();
    for k in 0..10 {
        s.compare_and_swap(&format!("k{k}"), None, Some(b"0".to_vec()))
            .await
            .unwrap();
    }
    for round in 1..=300u64 {
        for k in 0..10 {
            s.compare_and_swap(
                &format!("k{k}"),
                Some(round),
                Some(round.to_string().into_bytes()),
            )
            .await
            .unwrap();
        }
    }
    // 3,010 records were written; compaction keeps the log below twice the live keys plus the
    // minimum before compacting.
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(lines < 1100, "{lines} lines");
    drop(s);
    let s = FileStateStore::open(&path).unwrap();
    let all = s.list("k").await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(
        all.iter()
            .all(|(_, v)| v.version == 301 && v.value == b"300")
    );
}

#[tokio::test]
async fn corrupt_or_foreign_files_are_refused_and_left_untouched() {
    let cases: [(&str, &[u8]); 8] = [
        ("foreign JSON", br#"{"hello":"world"}"#),
        ("an empty JSON object", b"{}"),
        (
            "an object shaped almost like version 1",
            br#"{"a":{"value":[104,105],"version":4,"extra":1}}"#,
        ),
        (
            "a complete but invalid last record",
            b"{\"format\":\"rorqual-state-store\",\"version\":2}\n{\"k\":\"a\",\"v\":1,\"s\":\"x\"}\nnot a record\n",
        ),
        (
            "base64 with padding in the middle",
            b"{\"format\":\"rorqual-state-store\",\"version\":2}\n{\"k\":\"a\",\"v\":1,\"b\":\"AA==AA==\"}\n{\"k\":\"a\",\"v\":2,\"s\":\"y\"}\n",
        ),
        ("not JSON", b"\x00\x01garbage\n"),
        (
            "a bad record before the last one",
            b"{\"format\":\"rorqual-state-store\",\"version\":2}\n{\"k\":\"a\",\"v\":1,\"s\":\"x\"}\nnot a record\n{\"k\":\"a\",\"v\":2,\"s\":\"y\"}\n",
        ),
        ("a future version", b"{\"format\":\"rorqual-state-store\",\"version\":9}\n"),
    ];
    for (name, bytes) in cases {
        let (_dir, path) = store_path();
        std::fs::write(&path, bytes).unwrap();
        let err = FileStateStore::open(&path).unwrap_err();
        match &err {
            Error::CorruptState { location, reason } => {
                assert_eq!(
                    location,
                    &path.display().to_string(),
                    "{name}: names the file"
                );
                if name.contains("record") || name.contains("base64") {
                    assert!(reason.contains("line "), "{name}: names the line: {reason}");
                }
            }
            other => panic!("{name}: {other}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: left untouched"
        );
    }
}

#[tokio::test]
async fn a_torn_last_record_is_ignored() {
    let (_dir, path) = store_path();
    let s = FileStateStore::open(&path).unwrap();
    s.compare_and_swap("a", None, Some(b"1".to_vec()))
        .await
        .unwrap();
    s.compare_and_swap("a", Some(1), Some(b"2".to_vec()))
        .await
        .unwrap();
    drop(s);
    let complete = std::fs::read(&path).unwrap();
    // A crash in the middle of appending version 3.
    let mut torn = complete.clone();
    torn.extend_from_slice(br#"{"k":"a","v":3,"s":"thr"#);
    std::fs::write(&path, &torn).unwrap();
    let s = FileStateStore::open(&path).unwrap();
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version), (&b"2"[..], 2));
    // The next write starts a line of its own.
    s.compare_and_swap("a", Some(2), Some(b"3".to_vec()))
        .await
        .unwrap();
    drop(s);
    let s = FileStateStore::open(&path).unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().version, 3);
}

#[tokio::test]
async fn a_zero_filled_tail_is_ignored() {
    let (_dir, path) = store_path();
    let s = FileStateStore::open(&path).unwrap();
    s.compare_and_swap("a", None, Some(b"1".to_vec()))
        .await
        .unwrap();
    drop(s);
    // A crash after the file system extended the file but before the data reached it.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 40]);
    std::fs::write(&path, &bytes).unwrap();
    let s = FileStateStore::open(&path).unwrap();
    s.compare_and_swap("a", Some(1), Some(b"2".to_vec()))
        .await
        .unwrap();
    drop(s);
    let s = FileStateStore::open(&path).unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"2");
}

#[tokio::test]
async fn a_second_open_of_an_open_store_is_refused_naming_the_file() {
    let (_dir, path) = store_path();
    let first = Arc::new(FileStateStore::open(&path).unwrap());
    first
        .compare_and_swap("a", None, Some(b"1".to_vec()))
        .await
        .unwrap();
    let handed_out = first.clone();
    drop(first);
    let err = FileStateStore::open(&path).unwrap_err();
    match &err {
        Error::Io { context, source } => {
            assert!(
                context.contains(&path.display().to_string()),
                "names the file: {context}"
            );
            assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock);
        }
        other => panic!("{other}"),
    }
    // The last handle gone, the file is free again (and complete).
    drop(handed_out);
    let s = FileStateStore::open(&path).unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn a_store_reopened_in_a_loop_right_after_compacting_writes_loses_nothing() {
    let (_dir, path) = store_path();
    let mut version = None;
    for _ in 0..4 {
        let s = FileStateStore::open(&path).unwrap();
        assert_eq!(s.get("k").await.unwrap().map(|v| v.version), version);
        // Enough writes of one key to compact the log at least once per round.
        for i in 0..1100u32 {
            version = Some(
                s.compare_and_swap("k", version, Some(i.to_string().into_bytes()))
                    .await
                    .unwrap(),
            );
        }
    }
}

#[tokio::test]
async fn a_store_of_the_earlier_format_is_backed_up_read_and_rewritten() {
    let (dir, path) = store_path();
    let v1 = br#"{"a":{"value":[104,105],"version":4},"b":{"value":[],"version":1}}"#;
    std::fs::write(&path, v1).unwrap();
    let s = FileStateStore::open(&path).unwrap();
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version), (&b"hi"[..], 4));
    assert_eq!(s.get("b").await.unwrap().unwrap().value, b"");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("{\"format\":\"rorqual-state-store\"")
    );
    assert_eq!(
        std::fs::read(dir.path().join("store.json.v1.bak")).unwrap(),
        v1,
        "the original is kept"
    );
}
