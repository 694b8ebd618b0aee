//! The documents list what the code knows: every lifecycle event in the
//! events table of docs/protocol.md, and every config key in its config
//! table and in the README's, no more and no fewer. Adding an event or a key
//! without documenting it (or leaving a removed one in a table) fails here.

use std::collections::BTreeSet;
use std::path::Path;

use crate::config::Config;
use crate::lifecycle_log::LifecycleEvent;

const PROTOCOL: &str = include_str!("../docs/protocol.md");
const README: &str = include_str!("../README.md");
const AGENTS: &str = include_str!("../docs/agents.md");

/// The names in the first cell (`` | `name` | ``) of the table rows under
/// the heading `heading` of `doc`, up to the next heading.
fn first_cells(doc: &str, heading: &str) -> BTreeSet<String> {
    let mut lines = doc.lines().skip_while(|line| line.trim() != heading);
    assert!(lines.next().is_some(), "the document has no heading {heading:?}");
    lines
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim().strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name.to_owned()))
        .collect()
}

fn assert_same(documented: &BTreeSet<String>, known: &BTreeSet<String>, what: &str) {
    let missing: Vec<_> = known.difference(documented).collect();
    let stale: Vec<_> = documented.difference(known).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{what}: not documented: {missing:?}; documented but unknown to the code: {stale:?}"
    );
}

#[test]
fn every_lifecycle_event_is_in_the_protocol_document() {
    let known: BTreeSet<String> = LifecycleEvent::ALL.iter().map(|e| e.name().to_owned()).collect();
    assert!(known.len() > 20, "the event list looks truncated: {known:?}");
    let documented = first_cells(PROTOCOL, "### 10.2 The lifecycle log");
    assert_same(&documented, &known, "docs/protocol.md section 10.2, lifecycle events");
}

#[test]
fn every_config_key_is_in_the_protocol_document_and_the_readme() {
    let text = r#"{"agent_id":"a","token":"t","hub_url":"ws://127.0.0.1:1/ws"}"#;
    let (config, _) = Config::from_json_str(text, Path::new("/nowhere/config.json")).expect("a valid config");
    let Some(effective) = config.to_redacted_json().as_object().cloned() else {
        panic!("the effective config is not an object");
    };
    // Every key the parser asked for, minus what `check` adds of its own.
    let known: BTreeSet<String> = effective.keys().filter(|k| *k != "config_path").cloned().collect();
    assert!(known.len() > 30, "the key list looks truncated: {known:?}");
    assert_same(
        &first_cells(PROTOCOL, "### 10.1 config.json"),
        &known,
        "docs/protocol.md section 10.1, config keys",
    );
    assert_same(&first_cells(README, "## Configuration"), &known, "README.md, Configuration");
}

#[test]
fn every_variable_of_the_wake_command_is_in_both_tables() {
    let request = crate::wake::WakeRequest {
        task_id: "t".into(),
        generation: 1,
        attempt: 1,
        command_template: String::new(),
        description: String::new(),
        task_json: "{}".into(),
        task_file: "t.json".into(),
        results_dir: "results".into(),
        work_dir: ".".into(),
        timeout: std::time::Duration::from_secs(1),
        mode: crate::wake::WakeMode::Launch,
        cancel_grace: std::time::Duration::from_secs(1),
        max_result_bytes: 1,
        output_check: std::time::Duration::from_millis(10),
    };
    let known: BTreeSet<String> =
        crate::wake::task_environment(&request).into_iter().map(|(name, _)| name.to_string()).collect();
    assert!(known.contains(crate::wake::ENV_SIDECAR), "{known:?}");
    assert_same(&first_cells(PROTOCOL, "### 8.2 What the command gets"), &known, "docs/protocol.md 8.2");
    assert_same(&first_cells(AGENTS, "## 2. What the command gets"), &known, "docs/agents.md 2");
}
