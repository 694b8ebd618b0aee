use super::*;
use serde_json::json;

/// Every line of `path`, each of which must be a JSON object.
fn records_in(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.is_empty() || text.ends_with('\n'), "{} ends mid-line", path.display());
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: unparseable line {line:?}: {e}", path.display()));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().expect("seq")).collect()
}

/// The records of the kept rotated files, oldest first, then the current
/// file's. Asserts that no file past `.keep` exists.
fn all_records(path: &Path, keep: u32) -> Vec<Value> {
    assert!(!rotated_path(path, keep + 1).exists(), "more than {keep} rotated files");
    let mut records = Vec::new();
    for k in (1..=keep).rev() {
        let rotated = rotated_path(path, k);
        if rotated.exists() {
            records.extend(records_in(&rotated));
        }
    }
    records.extend(records_in(path));
    records
}

fn write_seqs(log: &mut LifecycleLog, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        log.write_record("task_progress", json!({"seq": seq, "task_id": "t-1"}));
    }
}

#[test]
fn every_event_has_its_own_snake_case_name() {
    let mut names: Vec<&str> = LifecycleEvent::ALL.iter().map(|e| e.name()).collect();
    assert!(names.iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), LifecycleEvent::ALL.len(), "two events share a name");
    assert_eq!(LifecycleEvent::TaskFailedHere.to_string(), "task_failed_here");
}

#[test]
fn records_start_with_ts_event_agent_id_then_the_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/sub/sidecar.log");
    let mut log = LifecycleLog::open(&path, "agent-7", 10 << 20, 5).unwrap();
    log.write_record("task_accepted", json!({"task_id": "t\n1", "event": "spoof", "n": 2}));
    log.write_record("shutdown", Value::Null);
    log.write_record("odd", json!([1, 2]));

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("{\"ts\":"), "{}", lines[0]);
    assert!(
        lines[0]
            .contains(",\"event\":\"task_accepted\",\"agent_id\":\"agent-7\",\"n\":2,\"task_id\":\"t\\n1\"}"),
        "{}",
        lines[0]
    );
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["event"], "task_accepted");
    assert_eq!(first["task_id"], "t\n1");
    assert!(first["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(lines[1].ends_with(",\"event\":\"shutdown\",\"agent_id\":\"agent-7\"}"));
    assert!(lines[2].ends_with(",\"fields\":[1,2]}"));
    assert_eq!(log.path(), path);
}

/// 2000 lines of about 90 bytes with max_bytes 4096 and keep 3 rotate
/// about 45 times. Asserted: exactly `.1`..`.3` exist besides the current
/// file; every file is at most max_bytes and holds only whole lines; read
/// oldest to newest the surviving lines are seq s, s+1, ..., 1999 with no
/// gap and no duplicate (everything before s went out with files past
/// `.3`, by design); and each rotated file was rotated only because the
/// next line did not fit.
#[test]
fn rotation_keeps_the_newest_lines_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let (max_bytes, keep) = (4096, 3);
    let mut log = LifecycleLog::open(&path, "a1", max_bytes, keep).unwrap();
    write_seqs(&mut log, 0..2000);

    for k in 1..=keep {
        assert!(rotated_path(&path, k).exists(), ".{k} is missing");
    }
    let records = all_records(&path, keep);
    let seqs = seqs(&records);
    assert_eq!(*seqs.last().unwrap(), 1999);
    assert!(seqs[0] > 0, "nothing was dropped");
    assert_eq!(seqs, (seqs[0]..2000).collect::<Vec<_>>());

    let files: Vec<PathBuf> =
        (1..=keep).rev().map(|k| rotated_path(&path, k)).chain([path.clone()]).collect();
    for pair in files.windows(2) {
        let size = fs::metadata(&pair[0]).unwrap().len();
        assert!(size <= max_bytes);
        let next_line = fs::read_to_string(&pair[1]).unwrap().lines().next().unwrap().len() as u64 + 1;
        assert!(size + next_line > max_bytes, "{} was rotated early", pair[0].display());
    }
    assert!(fs::metadata(&path).unwrap().len() <= max_bytes);
}

/// With room for every rotated file, all 2000 lines are present exactly
/// once, in order, across the files.
#[test]
fn rotation_loses_no_line_when_every_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let keep = 100;
    let mut log = LifecycleLog::open(&path, "a1", 4096, keep).unwrap();
    write_seqs(&mut log, 0..2000);

    assert!(rotated_path(&path, 2).exists());
    assert_eq!(seqs(&all_records(&path, keep)), (0..2000).collect::<Vec<_>>());
}

#[test]
fn keep_zero_truncates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let mut log = LifecycleLog::open(&path, "a1", 512, 0).unwrap();
    write_seqs(&mut log, 0..200);

    assert!(!rotated_path(&path, 1).exists());
    assert!(fs::metadata(&path).unwrap().len() <= 512);
    let seqs = seqs(&records_in(&path));
    assert!(seqs.len() > 1);
    assert_eq!(seqs, (200 - seqs.len() as u64..200).collect::<Vec<_>>());
}

#[test]
fn a_line_longer_than_max_bytes_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let big = "x".repeat(300);
    let mut log = LifecycleLog::open(&path, "a1", 100, 2).unwrap();

    log.write_record("big", json!({"seq": 0, "pad": big}));
    assert!(!rotated_path(&path, 1).exists(), "an empty file was rotated");
    log.write_record("small", json!({"seq": 1}));
    log.write_record("big", json!({"seq": 2, "pad": big}));

    let oldest = records_in(&rotated_path(&path, 2));
    assert_eq!(seqs(&oldest), [0]);
    assert_eq!(oldest[0]["pad"], big.as_str());
    assert_eq!(seqs(&records_in(&rotated_path(&path, 1))), [1]);
    let current = records_in(&path);
    assert_eq!(seqs(&current), [2]);
    assert_eq!(current[0]["pad"], big.as_str());
    assert!(fs::metadata(&path).unwrap().len() > 300);
}

#[test]
fn reopen_appends_and_rotates_by_the_existing_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    write_seqs(&mut LifecycleLog::open(&path, "a1", 1000, 2).unwrap(), 0..3);
    write_seqs(&mut LifecycleLog::open(&path, "a1", 1000, 2).unwrap(), 3..4);
    assert_eq!(seqs(&records_in(&path)), [0, 1, 2, 3]);
    assert!(!rotated_path(&path, 1).exists());

    // A new run whose limit the file has already reached rotates before
    // its first line.
    let size = fs::metadata(&path).unwrap().len();
    write_seqs(&mut LifecycleLog::open(&path, "a1", size, 2).unwrap(), 4..5);
    assert_eq!(seqs(&records_in(&rotated_path(&path, 1))), [0, 1, 2, 3]);
    assert_eq!(seqs(&records_in(&path)), [4]);
}

#[test]
fn a_torn_last_line_is_closed_before_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    fs::write(&path, "{\"ts\":1,\"event\":\"a\"}\n{\"ts\":2,\"ev").unwrap();
    let mut log = LifecycleLog::open(&path, "a1", 1 << 20, 2).unwrap();
    log.write_record("after_crash", json!({"seq": 7}));

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1], "{\"ts\":2,\"ev");
    let last: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(last["seq"], 7);
    let recent = read_recent(&path, 10).unwrap();
    assert_eq!(recent.len(), 2, "the torn line is skipped");
    assert_eq!(recent[1]["seq"], 7);
}

/// A rotation that cannot happen (here `.1` is a non-empty directory;
/// on Windows, typically a viewer holding the file open) costs no line:
/// the line goes to the oversized current file, and rotation is retried
/// on the next write.
#[test]
fn a_failed_rotation_keeps_writing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let blocker = rotated_path(&path, 1);
    fs::create_dir(&blocker).unwrap();
    fs::write(blocker.join("occupied"), "").unwrap();

    let mut log = LifecycleLog::open(&path, "a1", 200, 1).unwrap();
    write_seqs(&mut log, 0..10);
    assert!(log.failing);
    assert_eq!(seqs(&records_in(&path)), (0..10).collect::<Vec<_>>());

    fs::remove_dir_all(&blocker).unwrap();
    write_seqs(&mut log, 10..11);
    assert!(!log.failing);
    assert_eq!(seqs(&records_in(&blocker)), (0..10).collect::<Vec<_>>());
    assert_eq!(seqs(&records_in(&path)), [10]);
}

#[test]
fn open_reports_an_unusable_path() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, "").unwrap();
    assert!(LifecycleLog::open(&not_a_dir.join("sidecar.log"), "a1", 100, 1).is_err());
}

#[test]
fn read_recent_crosses_the_rotation_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let keep = 5;
    let mut log = LifecycleLog::open(&path, "a1", 300, keep).unwrap();
    write_seqs(&mut log, 0..20);

    let in_current = records_in(&path).len();
    assert!(in_current < 7, "the test needs the last 7 records to span files");
    assert_eq!(seqs(&read_recent(&path, 7).unwrap()), (13..20).collect::<Vec<_>>());

    let everything = all_records(&path, keep);
    assert!(everything.len() < 20, "some lines should have been rotated away");
    assert_eq!(read_recent(&path, 1000).unwrap(), everything);
    assert!(read_recent(&path, 0).unwrap().is_empty());
}

#[test]
fn read_recent_of_a_missing_log_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    assert!(read_recent(&path, 10).unwrap().is_empty());

    // A current file deleted by hand does not hide the rotated ones.
    fs::write(rotated_path(&path, 1), "{\"seq\":1}\n").unwrap();
    assert_eq!(seqs(&read_recent(&path, 10).unwrap()), [1]);
}

/// Lines split across chunk boundaries at every offset give the same
/// answer as reading the file in one chunk.
#[test]
fn read_recent_skips_junk_and_is_independent_of_chunk_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let text = "{\"seq\":0}\nnot json\n\n42\n{\"seq\":1,\"s\":\"a\\nb\"}\r\n{\"seq\":2}\n{\"seq\":3,\"torn";
    fs::write(&path, text).unwrap();

    for chunk_bytes in [1, 2, 3, 7, 64 * 1024] {
        let all = read_recent_in_chunks(&path, 100, chunk_bytes).unwrap();
        assert_eq!(seqs(&all), [0, 1, 2], "chunk size {chunk_bytes}");
        assert_eq!(all[1]["s"], "a\nb");
        let newest = read_recent_in_chunks(&path, 2, chunk_bytes).unwrap();
        assert_eq!(seqs(&newest), [1, 2], "chunk size {chunk_bytes}");
    }
}

#[test]
fn read_recent_skips_lines_over_the_read_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.log");
    let fits = format!("{{\"seq\":1,\"pad\":\"{}\"}}", "y".repeat(MAX_READ_LINE_BYTES - 18));
    assert_eq!(fits.len(), MAX_READ_LINE_BYTES);
    let too_long = format!("{{\"seq\":3,\"pad\":\"{}\"}}", "y".repeat(MAX_READ_LINE_BYTES - 17));
    let text = format!("{{\"seq\":0}}\n{fits}\n{{\"seq\":2}}\n{too_long}\n{{\"seq\":4}}\n");
    fs::write(&path, text).unwrap();
    assert_eq!(seqs(&read_recent(&path, 10).unwrap()), [0, 1, 2, 4]);
}
