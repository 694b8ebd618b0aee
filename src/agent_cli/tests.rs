use std::collections::HashMap;
use std::fs;

use super::*;

/// A results directory and the environment a wake command would get.
struct Env {
    dir: tempfile::TempDir,
    vars: HashMap<&'static str, OsString>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut vars = HashMap::new();
        vars.insert(ENV_TASK_ID, OsString::from("task-1"));
        vars.insert(ENV_RESULTS_DIR, dir.path().as_os_str().to_owned());
        Env { dir, vars }
    }

    fn run(&self, args: &[&str]) -> Result<(), Failure> {
        let vars = self.vars.clone();
        run(args.iter().map(OsString::from).collect(), &move |name| vars.get(name).cloned())
    }

    fn refused(&self, args: &[&str]) -> String {
        match self.run(args) {
            Err(Failure::Refused(text)) => text,
            other => panic!("{args:?} was not refused: {other:?}"),
        }
    }

    fn usage(&self, args: &[&str]) -> String {
        match self.run(args) {
            Err(Failure::Usage(text)) => text,
            other => panic!("{args:?} was not a usage error: {other:?}"),
        }
    }

    fn file(&self, name: &str) -> Option<Value> {
        let text = fs::read_to_string(self.dir.path().join(name)).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    /// Every name in the directory: nothing half-written is left.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn each_helper_writes_its_file() {
    let env = Env::new();
    env.run(&["started"]).unwrap();
    assert_eq!(fs::read(env.dir.path().join("task-1.started")).unwrap(), b"");
    env.run(&["progress", "40"]).unwrap();
    assert_eq!(env.file("task-1.progress"), Some(json!({"progress": 40})));
    env.run(&["progress", "50", "half", "way"]).unwrap();
    assert_eq!(env.file("task-1.progress"), Some(json!({"progress": 50, "message": "half way"})));
    env.run(&["done", "--output", "the answer"]).unwrap();
    assert_eq!(env.file("task-1.json"), Some(json!({"status": "success", "output": "the answer"})));
    assert_eq!(env.names(), ["task-1.json", "task-1.progress", "task-1.started"]);
    // The parsed files are what the sidecar reads.
    let read = crate::watcher::read_json_file(&env.dir.path().join("task-1.json"), 1 << 20);
    assert!(matches!(read, crate::watcher::ReadResult::Parsed(_)), "{read:?}");
}

#[test]
fn flags_override_the_environment() {
    let env = Env::new();
    let other = tempfile::tempdir().unwrap();
    let dir = other.path().to_str().unwrap();
    env.run(&["fail", "--task-id", "task-2", "--results-dir", dir, "--", "--not-a-flag"]).unwrap();
    let result: Value = serde_json::from_slice(&fs::read(other.path().join("task-2.json")).unwrap()).unwrap();
    assert_eq!(result, json!({"status": "failure", "reason": "--not-a-flag"}));
    assert!(env.names().is_empty());
}

#[test]
fn no_task_in_the_environment_is_refused() {
    let mut env = Env::new();
    env.vars.remove(ENV_TASK_ID);
    assert!(env.refused(&["started"]).contains("AGENTCOM_TASK_ID is not set"));
    env.vars.insert(ENV_TASK_ID, "".into());
    assert!(env.refused(&["started"]).contains("AGENTCOM_TASK_ID is not set"));
    for bad in ["../escape", ".hidden", "a/b", "NUL", &"x".repeat(129)] {
        env.vars.insert(ENV_TASK_ID, bad.into());
        assert!(env.refused(&["started"]).starts_with("invalid task id"), "{bad}");
    }
    let mut env = Env::new();
    env.vars.remove(ENV_RESULTS_DIR);
    assert!(env.refused(&["started"]).contains("AGENTCOM_RESULTS_DIR is not set"));
    assert!(env.names().is_empty());
}

#[test]
fn a_missing_results_directory_or_a_file_in_its_place_is_refused() {
    let mut env = Env::new();
    let missing = env.dir.path().join("missing");
    env.vars.insert(ENV_RESULTS_DIR, missing.clone().into());
    assert_eq!(env.refused(&["started"]), format!("results directory {} does not exist", missing.display()));
    assert!(!missing.exists(), "not created");
    let file = env.dir.path().join("file");
    fs::write(&file, "x").unwrap();
    env.vars.insert(ENV_RESULTS_DIR, file.into());
    assert!(env.refused(&["done", "--output", "x"]).ends_with("is not a directory"));
}

#[test]
fn progress_must_be_a_whole_number_from_0_to_100() {
    let env = Env::new();
    for bad in ["101", "abc", "-1", "50.5", "", "1e2", "256"] {
        let text = env.refused(&["progress", "--", bad]);
        assert_eq!(text, format!("progress must be a whole number from 0 to 100, got {bad:?}"));
    }
    assert!(env.usage(&["progress"]).contains("needs a value"));
    assert!(env.names().is_empty());
    env.run(&["progress", "0"]).unwrap();
    env.run(&["progress", "100"]).unwrap();
    assert_eq!(env.file("task-1.progress"), Some(json!({"progress": 100})));
}

#[test]
fn a_long_progress_message_is_cut_to_what_the_sidecar_sends() {
    let env = Env::new();
    env.run(&["progress", "7", &"é".repeat(2000)]).unwrap();
    let message = env.file("task-1.progress").unwrap()["message"].as_str().unwrap().to_string();
    assert_eq!(message, "é".repeat(512));
    // Control characters escape to six bytes each: still within the 4 KiB
    // the sidecar reads.
    env.run(&["progress", "8", &"\u{1}".repeat(2000)]).unwrap();
    assert!(fs::metadata(env.dir.path().join("task-1.progress")).unwrap().len() <= 4096);
}

#[test]
fn a_reason_over_the_hubs_limit_or_empty_is_refused() {
    let env = Env::new();
    let text = env.refused(&["fail", &"r".repeat(2001)]);
    assert_eq!(text, "the reason is 2001 characters, over the hub's limit of 2000: shorten it");
    assert!(env.refused(&["fail", "  "]).contains("empty"));
    assert!(env.usage(&["fail"]).contains("needs a reason"));
    assert!(env.names().is_empty());
    env.run(&["fail", &"é".repeat(2000)]).unwrap();
    assert_eq!(env.file("task-1.json").unwrap()["reason"].as_str().unwrap().chars().count(), 2000);
}

#[test]
fn a_whole_result_must_be_a_json_object_with_a_status() {
    let env = Env::new();
    let path = env.dir.path().join(".input");
    let cases = [
        ("{\"status\":", "is not valid JSON"),
        ("[1,2]", "must hold a JSON object"),
        ("{\"output\":\"x\"}", "needs a \"status\" string"),
        ("{\"status\":7}", "needs a \"status\" string"),
        ("{\"status\":\"failure\",\"reason\":7}", "\"reason\" must be a string"),
    ];
    for (text, expected) in cases {
        fs::write(&path, text).unwrap();
        let refused = env.refused(&["done", "--json", path.to_str().unwrap()]);
        assert!(refused.contains(expected), "{text}: {refused}");
    }
    let long = json!({"status": "failure", "error": "e".repeat(2001)}).to_string();
    fs::write(&path, long).unwrap();
    assert!(env
        .refused(&["done", "--json", path.to_str().unwrap()])
        .contains("over the hub's limit of 2000"));
    assert_eq!(env.names(), [".input"]);
    let whole = json!({"status": "success", "output": {"files": ["a.rs"]}, "tokens_used": 12});
    fs::write(&path, whole.to_string()).unwrap();
    env.run(&["done", "--json", path.to_str().unwrap()]).unwrap();
    assert_eq!(env.file("task-1.json"), Some(whole));
}

#[test]
fn output_over_the_result_limit_is_refused() {
    let mut env = Env::new();
    env.vars.insert(ENV_MAX_RESULT_BYTES, "100".into());
    let path = env.dir.path().join(".output");
    fs::write(&path, "o".repeat(101)).unwrap();
    let refused = env.refused(&["done", "--output-file", path.to_str().unwrap()]);
    assert!(refused.contains("over the sidecar's result limit of 100 bytes"), "{refused}");
    // Fits as a file, not once escaped and wrapped in the result object.
    fs::write(&path, "\"".repeat(60)).unwrap();
    let refused = env.refused(&["done", "--output-file", path.to_str().unwrap()]);
    assert!(
        refused.starts_with("the result would be 152 bytes, over the sidecar's limit of 100"),
        "{refused}"
    );
    assert_eq!(env.names(), [".output"]);
    // A flag overrides the environment; a bad value is refused.
    env.run(&["done", "--max-result-bytes", "1000", "--output-file", path.to_str().unwrap()]).unwrap();
    env.vars.insert(ENV_MAX_RESULT_BYTES, "lots".into());
    assert!(env.refused(&["started"]).contains("must be a positive whole number of bytes, got \"lots\""));
    let missing = env.dir.path().join("missing.txt");
    env.vars.remove(ENV_MAX_RESULT_BYTES);
    assert!(env
        .refused(&["done", "--output-file", missing.to_str().unwrap()])
        .starts_with("cannot read output file"));
}

#[test]
fn output_that_is_not_utf8_is_kept_with_replacement_characters() {
    let env = Env::new();
    let path = env.dir.path().join(".output");
    fs::write(&path, b"ok \xff end").unwrap();
    env.run(&["done", "--output-file", path.to_str().unwrap()]).unwrap();
    assert_eq!(env.file("task-1.json").unwrap()["output"], "ok \u{FFFD} end");
}

#[test]
fn a_result_is_never_replaced_and_of_racing_helpers_one_wins() {
    let env = Env::new();
    let wins: Vec<bool> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..8)
            .map(|i| {
                let env = &env;
                scope.spawn(move || {
                    // Progress racing alongside is only ever replaced whole.
                    env.run(&["progress", &(i * 10).to_string()]).unwrap();
                    if i % 2 == 0 {
                        env.run(&["done", "--output", &format!("writer {i}")]).is_ok()
                    } else {
                        env.run(&["fail", &format!("writer {i}")]).is_ok()
                    }
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    assert_eq!(wins.iter().filter(|won| **won).count(), 1, "{wins:?}");
    let winner = wins.iter().position(|won| *won).unwrap();
    let result = env.file("task-1.json").unwrap();
    assert!(result.to_string().contains(&format!("writer {winner}")), "{result}");
    assert!(env.file("task-1.progress").unwrap()["progress"].is_u64());
    assert_eq!(env.names(), ["task-1.json", "task-1.progress"], "no temporary file left");
    let refused = env.refused(&["done", "--output", "late"]);
    assert!(refused.starts_with("task task-1 already has a result"), "{refused}");
}

#[test]
fn usage_errors_name_the_problem() {
    let env = Env::new();
    assert!(env.usage(&[]).contains("say started, progress, done or fail"));
    assert!(env.usage(&["finish"]).contains("unknown helper \"finish\""));
    assert!(env.usage(&["started", "--output", "x"]).contains("unknown option \"--output\" for started"));
    assert!(env.usage(&["started", "now"]).contains("takes no text"));
    assert!(env.usage(&["done", "--output", "a", "--json", "-"]).contains("only one of"));
    assert!(env.usage(&["done", "--output"]).contains("--output needs a value"));
    assert_eq!(env.usage(&["--help"]), "");
    assert!(env.names().is_empty());
}
