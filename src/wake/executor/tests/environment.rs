//! What the command gets: hostile text as data only, values bounded to fit
//! the environment, its working directory and absolute paths.

use super::*;

#[test]
fn hostile_text_never_runs_as_shell_code() {
    let fixture = Fixture::new();
    let d = fixture.dir().display().to_string();
    let description = format!(
        "$(touch {d}/pwned-subst) `touch {d}/pwned-backtick` \
         \"; touch {d}/pwned-dq; echo \" \\\" \\\"; touch {d}/pwned-bs; echo \\\" \
         '; touch {d}/pwned-sq; echo ' it's\n\
         touch {d}/pwned-newline\n\
         ${{IFS}}$HOME %PATH% !x! \\$(touch {d}/pwned-escaped) *"
    );
    let metadata = json!({
        "note": format!("$(touch {d}/pwned-meta) `touch {d}/pwned-meta-bt` \"; touch {d}/pwned-meta-dq; echo \""),
        "quote": format!("'; touch {d}/pwned-meta-sq; echo '"),
    });
    let task_id = format!("task-1$(touch {d}/pwned-id)");
    let task_json = serde_json::to_string(&json!({
        "task_id": task_id,
        "description": description,
        "metadata": metadata,
    }))
    .unwrap();
    // Every placeholder bare, in double quotes and in single quotes,
    // plus the Node example's shape and captures of what the child
    // received.
    let template = r#"
        out="$AGENTCOM_RESULTS_DIR"
        echo ${TASK_ID} ${TASK_JSON} ${TASK_DESCRIPTION} ${TASK_FILE} > /dev/null
        echo "${TASK_ID}" "${TASK_JSON}" "${TASK_DESCRIPTION}" "${TASK_FILE}" > /dev/null
        echo '${TASK_ID}' '${TASK_JSON}' '${TASK_DESCRIPTION}' '${TASK_FILE}' > "$out/single-quoted"
        echo --desc "${TASK_DESCRIPTION}" --message "Task: ${TASK_JSON}" > /dev/null
        printf '%s' "$AGENTCOM_TASK_DESCRIPTION" > "$out/desc.env"
        printf '%s' "${TASK_DESCRIPTION}" > "$out/desc.placeholder"
        printf '%s' "${TASK_JSON}" > "$out/json.placeholder"
        printf '%s' "${TASK_ID}" > "$out/id.placeholder"
        printf '%s' "$AGENTCOM_GENERATION" > "$out/generation"
        cat "${TASK_FILE}" > "$out/task-file.copy"
    "#;
    let mut request = fixture.request(template);
    request.task_id = task_id.clone();
    request.description = description.clone();
    request.task_json = task_json.clone();
    fixture.handle().run(request);
    let outcome = fixture.outcome();

    let pwned: Vec<String> = fs::read_dir(fixture.dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("pwned"))
        .collect();
    assert!(pwned.is_empty(), "hub text ran as shell code: {pwned:?}");
    assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");

    let read = |name: &str| fs::read(fixture.dir().join(name)).unwrap();
    assert_eq!(read("desc.env"), description.as_bytes());
    assert_eq!(read("desc.placeholder"), description.as_bytes());
    assert_eq!(read("json.placeholder"), task_json.as_bytes());
    assert_eq!(read("id.placeholder"), task_id.as_bytes());
    assert_eq!(read("task-file.copy"), task_json.as_bytes());
    assert_eq!(read("generation"), b"3");
    assert_eq!(
        read("single-quoted"),
        b"${AGENTCOM_TASK_ID} ${AGENTCOM_TASK_JSON} ${AGENTCOM_TASK_DESCRIPTION} ${AGENTCOM_TASK_FILE}\n"
    );
}

#[test]
fn nul_in_description_does_not_stop_the_wake() {
    let fixture = Fixture::new();
    let mut request = fixture.request(r#"printf '%s' "${TASK_DESCRIPTION}" > "$AGENTCOM_RESULTS_DIR/desc""#);
    request.description = "a\0b".to_string();
    fixture.handle().run(request);
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    assert_eq!(fs::read_to_string(fixture.dir().join("desc")).unwrap(), "a\u{FFFD}b");
}

#[test]
fn a_megabyte_description_still_wakes_with_bounded_values_and_the_whole_task_file() {
    let fixture = Fixture::new();
    let description = "é1234567".repeat(1 << 17);
    let task_json = serde_json::to_string(&json!({
        "task_id": "task-00000000000000ff",
        "description": description,
        "metadata": { "kept": "yes" },
    }))
    .unwrap();
    // /bin/echo is a program, not a builtin: both values expand into the
    // argument list of a real exec, next to the environment holding them.
    let mut request = fixture.request(
        r#"/bin/echo "${TASK_DESCRIPTION}" "${TASK_JSON}" > /dev/null &&
           printf '%s' "${TASK_DESCRIPTION}" > "$AGENTCOM_RESULTS_DIR/desc" &&
           printf '%s' "${TASK_JSON}" > "$AGENTCOM_RESULTS_DIR/json" &&
           printf '%s' "$AGENTCOM_TASK_TRUNCATED" > "$AGENTCOM_RESULTS_DIR/flag" &&
           cat "${TASK_FILE}" > "$AGENTCOM_RESULTS_DIR/task-file.copy""#,
    );
    request.description = description.clone();
    request.task_json = task_json.clone();
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");

    let read = |name: &str| fs::read_to_string(fixture.dir().join(name)).unwrap();
    let desc = read("desc");
    assert!(desc.len() <= ENV_VALUE_LIMIT_BYTES, "{}", desc.len());
    assert!(desc.starts_with("é1234567é") && desc.ends_with(TRUNCATION_MARKER));
    let json: serde_json::Value = serde_json::from_str(&read("json")).expect("TASK_JSON is still JSON");
    assert!(read("json").len() <= ENV_VALUE_LIMIT_BYTES);
    assert_eq!(json["metadata"]["kept"], "yes");
    assert_eq!(read("flag"), "1");
    assert_eq!(read("task-file.copy"), task_json, "the task file holds the whole task");

    // A short task is not flagged.
    fixture
        .handle()
        .run(fixture.request(r#"printf '%s' "$AGENTCOM_TASK_TRUNCATED" > "$AGENTCOM_RESULTS_DIR/flag""#));
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    assert_eq!(read("flag"), "0");
}

#[test]
fn the_command_runs_in_its_work_dir_and_gets_absolute_paths() {
    let fixture = Fixture::new();
    let work_dir = fixture.dir().join("config-dir");
    fs::create_dir(&work_dir).unwrap();
    fs::write(
        work_dir.join("agent.sh"),
        "pwd -P > \"$AGENTCOM_RESULTS_DIR/pwd\"; printf '%s' \"$AGENTCOM_TASK_FILE\" > \"$AGENTCOM_RESULTS_DIR/task-file\"",
    )
    .unwrap();
    let mut request = fixture.request("sh agent.sh");
    request.work_dir = work_dir.clone();
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");
    let pwd = fs::read_to_string(fixture.dir().join("pwd")).unwrap();
    assert_eq!(Path::new(pwd.trim()), work_dir.canonicalize().unwrap());

    // Relative paths are relative to the sidecar's directory, and the
    // command, running elsewhere, gets them absolute.
    let cwd = std::env::current_dir().unwrap();
    let relative_results = pathdiff(fixture.dir(), &cwd);
    let mut request = fixture.request("sh agent.sh");
    request.work_dir = work_dir.clone();
    request.results_dir = relative_results.clone();
    request.task_file = relative_results.join("task.json");
    fixture.handle().run(request);
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    let task_file = fs::read_to_string(fixture.dir().join("task-file")).unwrap();
    assert!(Path::new(&task_file).is_absolute(), "{task_file}");
    assert_eq!(
        Path::new(&task_file).canonicalize().unwrap(),
        fixture.dir().join("task.json").canonicalize().unwrap()
    );

    // A working directory that is gone is a clear start failure.
    let mut request = fixture.request("true");
    request.work_dir = fixture.dir().join("missing");
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert!(
        matches!(&outcome.status, WakeStatus::SpawnFailed(text) if text.contains("is not a directory")),
        "{outcome:?}"
    );
}

/// `path` relative to `base` (both absolute), with `..` steps.
fn pathdiff(path: &Path, base: &Path) -> std::path::PathBuf {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut relative = std::path::PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for component in &path[common..] {
        relative.push(component);
    }
    relative
}
