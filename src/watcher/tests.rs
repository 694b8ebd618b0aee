use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded};
use notify::event::{CreateKind, Flag, ModifyKind};
use serde_json::json;

use super::*;

/// Generous, so a loaded machine does not fail a correct test; a broken
/// watcher fails it all the same.
const FAILSAFE: Duration = Duration::from_secs(10);

#[test]
fn classify_table() {
    let long_id = "a".repeat(MAX_TASK_ID_LEN);
    let too_long_name = format!("{}.json", "a".repeat(MAX_TASK_ID_LEN + 1));
    let long_name = format!("{long_id}.json");
    let cases: Vec<(&str, Option<(&str, FileKind)>)> = vec![
        ("task-1f2e.started", Some(("task-1f2e", FileKind::Started))),
        ("task-1f2e.json", Some(("task-1f2e", FileKind::Result))),
        ("task-1f2e.progress", Some(("task-1f2e", FileKind::Progress))),
        ("a.b_c-D9.json", Some(("a.b_c-D9", FileKind::Result))),
        // The id itself may end in ".json"; only the last suffix counts.
        ("x.json.json", Some(("x.json", FileKind::Result))),
        (&long_name, Some((&long_id, FileKind::Result))),
        (&too_long_name, None),
        // Temporary and hidden files.
        (".task-1.json", None),
        ("task-1.json.tmp", None),
        ("task-1.json~", None),
        ("task-1.tmp", None),
        // Not task files.
        ("task-1", None),
        ("task-1.txt", None),
        ("task-1.JSON", None),
        (".json", None),
        ("json", None),
        ("", None),
        ("...json", None),
        ("..json", None),
        ("a b.json", None),
        ("a/b.json", None),
        ("../x.json", None),
        ("tâche.json", None),
    ];
    for (file_name, expected) in cases {
        let expected = expected.map(|(id, kind)| (id.to_string(), kind));
        assert_eq!(classify(file_name), expected, "classify({file_name:?})");
    }
}

#[test]
fn is_valid_task_id_table() {
    let cases: Vec<(String, bool)> = vec![
        ("task-0123456789abcdef".into(), true),
        ("A.b_c-9".into(), true),
        ("a".into(), true),
        ("a".repeat(128), true),
        ("a".repeat(129), false),
        ("a".repeat(200), false),
        ("".into(), false),
        (".".into(), false),
        ("..".into(), false),
        (".hidden".into(), false),
        ("../x".into(), false),
        ("a/b".into(), false),
        ("a\\b".into(), false),
        ("a b".into(), false),
        ("a\0b".into(), false),
        ("a\nb".into(), false),
        ("é".into(), false),
        ("$(touch x)".into(), false),
        ("a:b".into(), false),
        // Windows device names, with or without an extension, any case.
        ("CON".into(), false),
        ("con".into(), false),
        ("NUL".into(), false),
        ("nul.txt".into(), false),
        ("PRN".into(), false),
        ("AUX.json".into(), false),
        ("COM1".into(), false),
        ("com9.x.y".into(), false),
        ("LPT0".into(), false),
        ("CONSOLE".into(), true),
        ("COM10".into(), true),
        ("xCON".into(), true),
        ("task-CON".into(), true),
        ("COM".into(), true),
    ];
    for (id, expected) in cases {
        assert_eq!(is_valid_task_id(&id), expected, "is_valid_task_id({id:?})");
    }
}

#[test]
fn task_file_path_names_each_kind() {
    let dir = Path::new("/results");
    assert_eq!(task_file_path(dir, "t-1", FileKind::Started), Path::new("/results/t-1.started"));
    assert_eq!(task_file_path(dir, "t-1", FileKind::Result), Path::new("/results/t-1.json"));
    assert_eq!(task_file_path(dir, "t-1", FileKind::Progress), Path::new("/results/t-1.progress"));
    for kind in FileKind::ALL {
        let path = task_file_path(dir, "t-1", kind);
        let file_name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(classify(file_name), Some(("t-1".to_string(), kind)));
    }
}

#[test]
fn scan_lists_task_files_only_in_stable_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["b.json", "a.json", "a.started", "a.progress", ".a.json", "a.json.tmp", "notes.txt"] {
        fs::write(dir.path().join(name), "{}").unwrap();
    }
    fs::create_dir(dir.path().join("c.json")).unwrap();
    let found = scan(dir.path()).unwrap();
    assert_eq!(
        found,
        vec![
            ("a".to_string(), FileKind::Started),
            ("a".to_string(), FileKind::Progress),
            ("a".to_string(), FileKind::Result),
            ("b".to_string(), FileKind::Result),
        ]
    );
}

#[test]
fn scan_of_missing_dir_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scan(&dir.path().join("missing")).is_err());
}

#[test]
fn read_json_file_cases() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    fs::write(path("empty.json"), "").unwrap();
    fs::write(path("garbage.json"), "{\"status\": \"succ").unwrap();
    fs::write(path("array.json"), "[1, 2]").unwrap();
    fs::write(path("string.json"), "\"x\"").unwrap();
    fs::write(path("big.json"), format!("{{\"x\":\"{}\"}}", "a".repeat(100))).unwrap();
    fs::write(path("ok.json"), r#"{"status":"success","output":[1]}"#).unwrap();
    fs::create_dir(path("dir.json")).unwrap();

    assert_eq!(read_json_file(&path("missing.json"), 1000), ReadResult::Missing);
    assert_eq!(read_json_file(&path("big.json"), 100), ReadResult::TooLarge { len: 108 });
    assert!(matches!(read_json_file(&path("big.json"), 108), ReadResult::Parsed(_)));
    assert!(matches!(read_json_file(&path("empty.json"), 1000), ReadResult::Unparseable { len: 0, .. }));
    assert!(matches!(read_json_file(&path("garbage.json"), 1000), ReadResult::Unparseable { len: 16, .. }));
    assert_eq!(
        read_json_file(&path("array.json"), 1000),
        ReadResult::Unparseable { len: 6, error: "expected a JSON object, found an array".to_string() }
    );
    assert!(matches!(read_json_file(&path("string.json"), 1000), ReadResult::Unparseable { len: 3, .. }));
    assert!(matches!(read_json_file(&path("dir.json"), 1000), ReadResult::Unparseable { .. }));
    assert_eq!(
        read_json_file(&path("ok.json"), 1000),
        ReadResult::Parsed(json!({"status": "success", "output": [1]}))
    );
    // A limit at the top of the range must not overflow `max_bytes + 1`.
    assert!(matches!(read_json_file(&path("ok.json"), u64::MAX), ReadResult::Parsed(_)));
}

/// Runs `read` on another thread and fails the test if it blocks: a
/// blocked open() must fail the test, not hang it.
#[cfg(unix)]
fn read_within_failsafe(path: PathBuf) -> ReadResult {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(read_json_file(&path, 1 << 20));
    });
    rx.recv_timeout(FAILSAFE).expect("read_json_file blocked")
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo failed");
}

#[cfg(unix)]
#[test]
fn a_fifo_named_like_a_task_file_is_refused_without_blocking() {
    // Regression (issue 10 #1): open() of a FIFO with no writer blocked
    // the loop thread forever.
    let dir = tempfile::tempdir().unwrap();
    for name in ["t.json", "t.progress", "t.started"] {
        let path = dir.path().join(name);
        mkfifo(&path);
        match read_within_failsafe(path.clone()) {
            ReadResult::Unparseable { error, .. } => {
                assert!(error.contains("not a regular file"), "{name}: {error}")
            }
            other => panic!("{name}: a FIFO was read as {other:?}"),
        }
        assert!(!is_regular_file(&path), "{name}: a FIFO counted as a regular file");
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_out_of_the_results_dir_is_never_followed() {
    // Regression (issue 10 #7): a result file that was a link to a JSON
    // file elsewhere was relayed to the hub in full.
    let parent = tempfile::tempdir().unwrap();
    let results = parent.path().join("results");
    fs::create_dir(&results).unwrap();
    let outside = parent.path().join("secret.json");
    fs::write(&outside, r#"{"status":"success","output":"outside"}"#).unwrap();
    for name in ["t.json", "t.progress", "t.started"] {
        let link = results.join(name);
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        match read_json_file(&link, 1 << 20) {
            ReadResult::Unparseable { len: 0, error } => {
                assert!(error.contains("symbolic link"), "{name}: {error}")
            }
            other => panic!("{name}: a link was read as {other:?}"),
        }
        assert!(!is_regular_file(&link), "{name}: a link counted as a regular file");
    }
    // A dangling link is refused the same way, not taken as missing.
    let dangling = results.join("u.json");
    std::os::unix::fs::symlink(parent.path().join("nothing-here"), &dangling).unwrap();
    assert!(matches!(read_json_file(&dangling, 1 << 20), ReadResult::Unparseable { .. }));
    // A link to a directory, too.
    let to_dir = results.join("v.json");
    std::os::unix::fs::symlink(parent.path(), &to_dir).unwrap();
    assert!(matches!(read_json_file(&to_dir, 1 << 20), ReadResult::Unparseable { .. }));
    // The regular file itself is read; the check is about links only.
    assert!(matches!(read_json_file(&outside, 1 << 20), ReadResult::Parsed(_)));
    assert!(is_regular_file(&outside));
}

#[test]
fn a_large_result_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    // Sparse: 100 MB of length without 100 MB of disk or time.
    fs::File::create(&path).unwrap().set_len(100 << 20).unwrap();
    assert_eq!(read_json_file(&path, 1 << 20), ReadResult::TooLarge { len: 100 << 20 });
}

#[test]
fn leftover_temp_files_of_ours_are_removed_and_nothing_else() {
    // Regression (issue 10 #4): temporary files of a save killed before
    // its rename stayed forever.
    let work = tempfile::tempdir().unwrap();
    let queue_file = work.path().join("queue.json");
    let results = work.path().join("results");
    let tasks = results.join(".tasks");
    fs::create_dir_all(&tasks).unwrap();
    let ours = [work.path().join(".queue.json.a1B2c3.tmp"), tasks.join(".tmpZ9y8X7")];
    let not_ours = [
        work.path().join("queue.json"),
        work.path().join(".queue.json.a1B2c.tmp"),
        work.path().join(".queue.json.a1B2c3d.tmp"),
        work.path().join(".queue.json.a1-2c3.tmp"),
        work.path().join("x.queue.json.a1B2c3.tmp"),
        work.path().join(".tmpZ9y8X7"),
        work.path().join("notes.txt"),
        results.join(".tmpZ9y8X7"),
        results.join("t.json"),
        tasks.join("t.json"),
        tasks.join(".tmpZ9y8X"),
        tasks.join(".tmpZ9y8X7.json"),
    ];
    for path in ours.iter().chain(&not_ours) {
        fs::write(path, "{}").unwrap();
    }
    // A directory with our pattern is not ours either.
    fs::create_dir(tasks.join(".tmpDIR123")).unwrap();
    let mut removed = remove_leftover_temp_files(&queue_file, &results);
    removed.sort();
    let mut expected = ours.to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    for path in &ours {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    for path in &not_ours {
        assert!(path.exists(), "{} was removed", path.display());
    }
    assert!(tasks.join(".tmpDIR123").is_dir());
    // Missing directories are fine.
    assert!(remove_leftover_temp_files(&work.path().join("q/queue.json"), &work.path().join("r")).is_empty());
}

#[cfg(unix)]
#[test]
fn leftover_clean_up_does_not_follow_links() {
    let work = tempfile::tempdir().unwrap();
    let victim = work.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    let link = work.path().join(".queue.json.a1B2c3.tmp");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert!(remove_leftover_temp_files(&work.path().join("queue.json"), &work.path().join("r")).is_empty());
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    // results_dir/.tasks as a link to another directory: not entered.
    let elsewhere = work.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join(".tmpAbCdEf"), "keep").unwrap();
    let results = work.path().join("results");
    fs::create_dir(&results).unwrap();
    std::os::unix::fs::symlink(&elsewhere, results.join(".tasks")).unwrap();
    assert!(remove_leftover_temp_files(&work.path().join("q/queue.json"), &results).is_empty());
    assert!(elsewhere.join(".tmpAbCdEf").exists());
}

#[test]
fn the_temp_name_patterns_match_what_our_saves_create() {
    // Kill a save "between write and rename" by keeping the temp file:
    // the same builders the savers use must produce names we clean up.
    let dir = tempfile::tempdir().unwrap();
    let queue_temp =
        tempfile::Builder::new().prefix(".queue.json.").suffix(".tmp").tempfile_in(dir.path()).unwrap();
    let task_temp = tempfile::Builder::new()
        .prefix(crate::wake::TASK_FILE_TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir.path())
        .unwrap();
    let earlier_task_temp = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    let name = |path: &Path| path.file_name().unwrap().to_str().unwrap().to_string();
    assert!(is_queue_temp_name(&name(queue_temp.path())), "{}", name(queue_temp.path()));
    assert!(is_task_file_temp_name(&name(task_temp.path())), "{}", name(task_temp.path()));
    assert!(is_task_file_temp_name(&name(earlier_task_temp.path())), "{}", name(earlier_task_temp.path()));
    assert!(!is_task_file_temp_name(".task.a1B2c3.json"));
}

#[test]
fn remove_task_files_removes_all_three_and_tolerates_missing() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["t.started", "t.json", "t.progress", "u.json"] {
        fs::write(dir.path().join(name), "{}").unwrap();
    }
    remove_task_files(dir.path(), "t").unwrap();
    assert_eq!(scan(dir.path()).unwrap(), vec![("u".to_string(), FileKind::Result)]);
    // Nothing left to remove is not an error.
    remove_task_files(dir.path(), "t").unwrap();
    remove_task_files(dir.path(), "never-existed").unwrap();
}

#[test]
fn remove_task_files_refuses_invalid_ids() {
    let parent = tempfile::tempdir().unwrap();
    let results_dir = parent.path().join("results");
    fs::create_dir(&results_dir).unwrap();
    // A file one level up that a traversal id would reach.
    fs::write(parent.path().join("victim.json"), "{}").unwrap();
    let error = remove_task_files(&results_dir, "../victim").unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(parent.path().join("victim.json").exists());
}

#[test]
fn results_event_mapping() {
    let path = PathBuf::from("/results/t.json");
    let event = |kind: EventKind| notify::Event::new(kind).add_path(path.clone());
    let changed = Some(ResultsEvent::Changed(vec![path.clone()]));

    assert_eq!(results_event(Ok(event(EventKind::Create(CreateKind::File)))), changed);
    assert_eq!(results_event(Ok(event(EventKind::Modify(ModifyKind::Any)))), changed);
    assert_eq!(results_event(Ok(event(EventKind::Access(AccessKind::Close(AccessMode::Write))))), changed);
    // Our own reads must not echo back as events.
    assert_eq!(results_event(Ok(event(EventKind::Access(AccessKind::Open(AccessMode::Any))))), None);
    assert_eq!(results_event(Ok(event(EventKind::Access(AccessKind::Close(AccessMode::Read))))), None);
    assert_eq!(
        results_event(Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan))),
        Some(ResultsEvent::Rescan)
    );
    assert_eq!(results_event(Ok(notify::Event::new(EventKind::Any))), Some(ResultsEvent::Rescan));
    assert_eq!(results_event(Err(notify::Error::generic("queue overflow"))), Some(ResultsEvent::Rescan));
}

#[test]
fn watcher_reports_a_new_file() {
    let parent = tempfile::tempdir().unwrap();
    // start() must create the directory.
    let dir = parent.path().join("results");
    let (tx, rx) = unbounded();
    let watcher = ResultsWatcher::start(
        &dir,
        Box::new(move |event| {
            let _ = tx.send(event);
        }),
    )
    .unwrap();
    fs::write(dir.join("task-1.json"), "{}").unwrap();

    let deadline = crossbeam_channel::at(Instant::now() + FAILSAFE);
    loop {
        select! {
            recv(rx) -> event => match event.expect("watcher callback dropped") {
                ResultsEvent::Changed(paths)
                    if paths
                        .iter()
                        .any(|path| path.file_name() == Some("task-1.json".as_ref())) =>
                {
                    break
                }
                _ => continue,
            },
            recv(deadline) -> _ => panic!("no Changed event for task-1.json within {FAILSAFE:?}"),
        }
    }
    drop(watcher);
}

#[test]
fn watcher_start_error_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, "").unwrap();
    let results_dir = not_a_dir.join("results");
    let error = match ResultsWatcher::start(&results_dir, Box::new(|_| {})) {
        Ok(_) => panic!("watching below a regular file must fail"),
        Err(error) => error,
    };
    assert!(
        error.starts_with("cannot create results directory ")
            && error.contains(&*results_dir.to_string_lossy()),
        "unexpected error text: {error}"
    );
}
