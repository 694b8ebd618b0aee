//! How a task reaches the wake command: the rendered command line, the
//! environment, and the task file. The most security-sensitive code of the
//! sidecar; change it only with the reasoning below in mind.
//!
//! # The hub's text never becomes shell code
//!
//! The task's id, description and metadata come from the hub and are
//! untrusted. Pasting them into the command line, quoted or not, is unsafe: a
//! description containing `"; rm -rf ~; echo "` escapes the operator's double
//! quotes. Instead every value is handed to the child as an environment
//! variable (`AGENTCOM_TASK_DESCRIPTION`, ...), and [`render_command`]
//! replaces each placeholder with a *reference* to that variable
//! (`${AGENTCOM_TASK_DESCRIPTION}` for `sh -c`, `!AGENTCOM_TASK_DESCRIPTION!`
//! for `cmd /V:ON /C`). The shell expands a variable's value as data after it
//! has parsed the command, so no value can add commands, whatever quotes
//! surround the placeholder. The rendered command contains only the
//! operator's template; it is the same for every task.
//!
//! What the operator should know: inside double quotes the agent gets the
//! exact text. Bare, the shell splits it into words and expands globs (data
//! still, never code). Inside single quotes the shell does not expand at all,
//! so the agent receives the literal reference text, e.g.
//! `${AGENTCOM_TASK_DESCRIPTION}`; the Node sidecar pasted the text there. A
//! template that passes a placeholder to `eval` (or `sh -c` again) runs it as
//! code by the operator's own choice. The whole task is also written as JSON
//! to a task file (`AGENTCOM_TASK_FILE`, `${TASK_FILE}`), which avoids the
//! command line altogether.
//!
//! # Every value fits in the environment
//!
//! An environment string has a size limit (Linux: 128 KiB each, and all of
//! them plus the arguments share one total; Windows: 32,767 characters each,
//! and a command line of the same size). Past it the command cannot start at
//! all, so a long description would make every wake fail. Each value is
//! therefore cut to [`ENV_VALUE_LIMIT_BYTES`] at a character boundary and ends
//! with [`TRUNCATION_MARKER`]; `AGENTCOM_TASK_JSON` stays valid JSON (its
//! longest strings are cut, each with the marker). `AGENTCOM_TASK_TRUNCATED`
//! is `1` when anything was cut and `0` otherwise. The task file always holds
//! the whole task.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use super::{sys, WakeRequest};

/// Environment variables set for every wake command.
pub const ENV_TASK_ID: &str = "AGENTCOM_TASK_ID";
pub const ENV_GENERATION: &str = "AGENTCOM_GENERATION";
pub const ENV_RESULTS_DIR: &str = "AGENTCOM_RESULTS_DIR";
pub const ENV_TASK_DESCRIPTION: &str = "AGENTCOM_TASK_DESCRIPTION";
pub const ENV_TASK_JSON: &str = "AGENTCOM_TASK_JSON";
pub const ENV_TASK_FILE: &str = "AGENTCOM_TASK_FILE";
/// `1` when a value above was cut to fit, `0` otherwise.
pub const ENV_TASK_TRUNCATED: &str = "AGENTCOM_TASK_TRUNCATED";
/// The config's `max_result_bytes`: a larger result file fails the task
/// (the reporting helpers, `agentcom-sidecar agent done`, check it).
pub const ENV_MAX_RESULT_BYTES: &str = "AGENTCOM_MAX_RESULT_BYTES";
/// The absolute path of the running sidecar's executable, so that an agent
/// can call its reporting helpers (`"$AGENTCOM_SIDECAR" agent done`)
/// without it being on `PATH`. Left out if the platform cannot say.
pub const ENV_SIDECAR: &str = "AGENTCOM_SIDECAR";

/// The most bytes a task value takes in the environment (and so in a
/// command line a placeholder expands into). Unix: half of Linux's 128 KiB
/// per string, so a command line holding both the description and the JSON
/// stays far below the shared total. Windows: two values plus the template
/// stay within a 32,767-character command line.
pub const ENV_VALUE_LIMIT_BYTES: usize = sys::ENV_VALUE_LIMIT_BYTES;

/// Ends a value that was cut to fit the environment.
pub const TRUNCATION_MARKER: &str = " [cut by agentcom-sidecar: the whole task is in AGENTCOM_TASK_FILE]";

/// Each placeholder and the variable that carries its value.
const PLACEHOLDERS: [(&str, &str); 4] = [
    ("${TASK_ID}", ENV_TASK_ID),
    ("${TASK_JSON}", ENV_TASK_JSON),
    ("${TASK_DESCRIPTION}", ENV_TASK_DESCRIPTION),
    ("${TASK_FILE}", ENV_TASK_FILE),
];

/// Replaces each known placeholder in the operator's template with a
/// reference to the environment variable carrying its value, in the syntax of
/// the platform shell: `${AGENTCOM_TASK_ID}` on Unix (braces, so that
/// `${TASK_ID}abc` keeps meaning the id followed by "abc"), and
/// `!AGENTCOM_TASK_ID!` on Windows (delayed expansion). Any other `${...}`
/// text is left as it is. Pure: the task's values never enter the result.
pub fn render_command(template: &str) -> String {
    let mut rendered = String::with_capacity(template.len() + 64);
    let mut rest = template;
    // One left-to-right pass, so a replacement is never scanned again.
    while let Some(index) = rest.find("${") {
        rendered.push_str(&rest[..index]);
        let candidate = &rest[index..];
        match PLACEHOLDERS.iter().find(|(placeholder, _)| candidate.starts_with(placeholder)) {
            Some((placeholder, variable)) => {
                rendered.push_str(&sys::env_reference(variable));
                rest = &candidate[placeholder.len()..];
            }
            None => {
                rendered.push_str("${");
                rest = &candidate[2..];
            }
        }
    }
    rendered.push_str(rest);
    rendered
}

/// Writes the task file atomically (`queue_store::write_atomic_unsynced`): a
/// temporary file in the same directory, written, then renamed over `path`.
/// The agent never sees a half-written file.
///
/// Not fsynced, on purpose (it sat on the path from push to wake): the file
/// is a copy of what queue.json already holds durably, and it is written
/// again before every attempt, including the first one after a restart. Only
/// an agent started in the same boot reads it, and it reads the page cache.
pub fn write_task_file(path: &Path, task_json: &str) -> io::Result<()> {
    crate::queue_store::write_atomic_unsynced(path, task_json.as_bytes(), TASK_FILE_TEMP_PREFIX)
}

/// The task file's temporary name: `.task.XXXXXX.tmp` (what the clean-up at
/// start recognises: `watcher::remove_leftover_temp_files`).
pub(crate) const TASK_FILE_TEMP_PREFIX: &str = ".task.";

/// The variables the wake command gets, with their values: the task's text
/// as data, never as code (see the module documentation).
/// Paths are made absolute, since the command runs in `work_dir`.
pub(crate) fn task_environment(request: &WakeRequest) -> Vec<(&'static str, OsString)> {
    let limit = ENV_VALUE_LIMIT_BYTES;
    let (task_id, id_cut) = bounded_text(&request.task_id, limit);
    let (description, description_cut) = bounded_text(&request.description, limit);
    let (task_json, json_cut) = bounded_json(&request.task_json, limit);
    let truncated = if id_cut || description_cut || json_cut { "1" } else { "0" };
    vec![
        (ENV_TASK_ID, task_id.into()),
        (ENV_GENERATION, request.generation.to_string().into()),
        (ENV_RESULTS_DIR, absolute(&request.results_dir)),
        (ENV_TASK_DESCRIPTION, description.into()),
        (ENV_TASK_JSON, task_json.into()),
        (ENV_TASK_FILE, absolute(&request.task_file)),
        (ENV_TASK_TRUNCATED, truncated.into()),
        (ENV_MAX_RESULT_BYTES, request.max_result_bytes.to_string().into()),
    ]
    .into_iter()
    .chain(sidecar_executable().map(|path| (ENV_SIDECAR, path)))
    .collect()
}

/// The running executable's absolute path, looked up once.
fn sidecar_executable() -> Option<OsString> {
    static EXE: std::sync::OnceLock<Option<OsString>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| std::env::current_exe().ok().map(|path| absolute(&path))).clone()
}

/// `path` made absolute against the sidecar's working directory (as it is
/// if that cannot be read).
pub(super) fn absolute(path: &Path) -> OsString {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).into_os_string()
}

/// [`env_value`], cut to `limit` bytes (marker included) at a character
/// boundary when longer. The flag says whether it was cut.
fn bounded_text(value: &str, limit: usize) -> (String, bool) {
    let value = env_value(value);
    if value.len() <= limit {
        return (value, false);
    }
    (cut_with_marker(&value, limit.saturating_sub(TRUNCATION_MARKER.len())), true)
}

/// The first `max` bytes of `text` or fewer, at a character boundary,
/// followed by the marker.
fn cut_with_marker(text: &str, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATION_MARKER}", &text[..end])
}

/// The task's JSON within `limit` bytes and still valid JSON: every string
/// longer than a cap is cut to it (and marked), with the largest cap that
/// fits, so a long description and a long metadata field share the room.
/// Falls back to cutting the text (no longer valid JSON, but flagged) when it
/// does not parse or cannot be made to fit that way (thousands of strings,
/// long keys).
fn bounded_json(json: &str, limit: usize) -> (String, bool) {
    if json.len() <= limit {
        return (env_value(json), false);
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return bounded_text(json, limit);
    };
    // Binary search for the largest cap whose result fits: the result only
    // shrinks as the cap does. About 20 rounds for a megabyte.
    let (mut low, mut high) = (0, json.len());
    let mut best = None;
    while low <= high {
        let cap = low + (high - low) / 2;
        let text = with_strings_capped(&value, cap).to_string();
        if text.len() <= limit {
            best = Some(text);
            low = cap + 1;
        } else if cap == 0 {
            break;
        } else {
            high = cap - 1;
        }
    }
    match best {
        // Serialized JSON has no raw NUL (it is escaped), so no `env_value`.
        Some(text) => (text, true),
        None => bounded_text(json, limit),
    }
}

/// A copy of `value` where every string longer than `cap` bytes plus the
/// marker is cut to at most `cap` bytes and marked.
fn with_strings_capped(value: &serde_json::Value, cap: usize) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) if text.len() > cap + TRUNCATION_MARKER.len() => {
            Value::String(cut_with_marker(text, cap))
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| with_strings_capped(item, cap)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter().map(|(key, item)| (key.clone(), with_strings_capped(item, cap))).collect(),
        ),
        other => other.clone(),
    }
}

/// An environment variable cannot hold a NUL byte (spawning would fail). The
/// hub's JSON can carry one in a string, so it is replaced with U+FFFD; the
/// task file still has the exact text (JSON escapes it as `\u0000`).
fn env_value(value: &str) -> String {
    value.replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn render_command_table_unix() {
        let cases = [
            ("echo ${TASK_ID}", "echo ${AGENTCOM_TASK_ID}"),
            (
                "agent --desc \"${TASK_DESCRIPTION}\" --message \"Task: ${TASK_JSON}\"",
                "agent --desc \"${AGENTCOM_TASK_DESCRIPTION}\" --message \"Task: ${AGENTCOM_TASK_JSON}\"",
            ),
            // Single quotes: the shell will not expand the reference; it is
            // still only the operator's text.
            ("echo '${TASK_FILE}'", "echo '${AGENTCOM_TASK_FILE}'"),
            ("x${TASK_ID}abc", "x${AGENTCOM_TASK_ID}abc"),
            ("${TASK_ID}${TASK_ID}", "${AGENTCOM_TASK_ID}${AGENTCOM_TASK_ID}"),
            ("echo ${HOME} ${TASK_IDX} $TASK_ID", "echo ${HOME} ${TASK_IDX} $TASK_ID"),
            ("${TASK_ID", "${TASK_ID"),
            ("${", "${"),
            ("$${TASK_ID}", "$${AGENTCOM_TASK_ID}"),
            ("", ""),
            ("no placeholders", "no placeholders"),
            ("é ${TASK_DESCRIPTION} ü", "é ${AGENTCOM_TASK_DESCRIPTION} ü"),
        ];
        for (template, expected) in cases {
            assert_eq!(render_command(template), expected, "template {template:?}");
        }
    }

    #[cfg(windows)]
    #[test]
    fn render_command_table_windows() {
        let cases = [
            ("echo ${TASK_ID}", "echo !AGENTCOM_TASK_ID!"),
            (
                "agent --desc \"${TASK_DESCRIPTION}\" --message \"Task: ${TASK_JSON}\"",
                "agent --desc \"!AGENTCOM_TASK_DESCRIPTION!\" --message \"Task: !AGENTCOM_TASK_JSON!\"",
            ),
            ("x${TASK_FILE}abc", "x!AGENTCOM_TASK_FILE!abc"),
            ("echo ${HOME}", "echo ${HOME}"),
        ];
        for (template, expected) in cases {
            assert_eq!(render_command(template), expected, "template {template:?}");
        }
    }

    #[test]
    fn write_task_file_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.json");
        write_task_file(&path, "{\"a\":1}").unwrap();
        write_task_file(&path, "{\"b\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"b\":2}");
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_task_file(&dir.path().join("missing/task.json"), "{}").is_err());
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_the_marker() {
        assert_eq!(bounded_text("short", 100), ("short".to_string(), false));
        // 'é' is two bytes: an odd limit falls inside one.
        let long = "é".repeat(200);
        let limit = TRUNCATION_MARKER.len() + 11;
        let (cut, was_cut) = bounded_text(&long, limit);
        assert!(was_cut);
        assert_eq!(cut, format!("{}{TRUNCATION_MARKER}", "é".repeat(5)));
        assert!(cut.len() <= limit);
    }

    #[test]
    fn long_json_stays_valid_json_with_its_longest_strings_cut() {
        let description = "d".repeat(1 << 20);
        let json = serde_json::json!({
            "task_id": "task-1",
            "description": description,
            "metadata": { "note": "n".repeat(100_000), "small": "kept", "n": 7 },
        })
        .to_string();
        let limit = ENV_VALUE_LIMIT_BYTES;
        let (bounded, was_cut) = bounded_json(&json, limit);
        assert!(was_cut);
        assert!(bounded.len() <= limit, "{} > {limit}", bounded.len());
        let value: serde_json::Value = serde_json::from_str(&bounded).expect("still JSON");
        assert_eq!(value["task_id"], "task-1");
        assert_eq!(value["metadata"]["small"], "kept");
        assert_eq!(value["metadata"]["n"], 7);
        // The two long strings share the room.
        for (cut, letter) in [(&value["description"], "d"), (&value["metadata"]["note"], "n")] {
            let cut = cut.as_str().unwrap();
            assert!(cut.ends_with(TRUNCATION_MARKER), "{cut}");
            assert!(cut.len() > limit / 3 && cut.starts_with(&letter.repeat(1000)), "{}", cut.len());
        }
        // Escapes count: a string of quotes doubles in JSON.
        let quotes = serde_json::json!({ "q": "\"".repeat(200_000) }).to_string();
        let (bounded, _) = bounded_json(&quotes, limit);
        assert!(bounded.len() <= limit && serde_json::from_str::<serde_json::Value>(&bounded).is_ok());
        // Small JSON is untouched; text that is not JSON is cut as text.
        assert_eq!(bounded_json("{\"a\":1}", limit), ("{\"a\":1}".to_string(), false));
        let (bounded, was_cut) = bounded_json(&"x".repeat(limit + 1), limit);
        assert!(was_cut && bounded.len() <= limit && bounded.ends_with(TRUNCATION_MARKER));
    }

    #[test]
    fn env_value_replaces_nul() {
        assert_eq!(env_value("a\0b"), "a\u{FFFD}b");
        assert_eq!(env_value("plain"), "plain");
    }
}
