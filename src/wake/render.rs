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

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;

use super::{sys, WakeRequest};

/// Environment variables set for every wake command.
pub const ENV_TASK_ID: &str = "AGENTCOM_TASK_ID";
pub const ENV_GENERATION: &str = "AGENTCOM_GENERATION";
pub const ENV_RESULTS_DIR: &str = "AGENTCOM_RESULTS_DIR";
pub const ENV_TASK_DESCRIPTION: &str = "AGENTCOM_TASK_DESCRIPTION";
pub const ENV_TASK_JSON: &str = "AGENTCOM_TASK_JSON";
pub const ENV_TASK_FILE: &str = "AGENTCOM_TASK_FILE";

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

/// Writes the task file atomically: a temporary file in the same directory,
/// written and synced, then renamed over `path`. The agent never sees a
/// half-written file.
pub fn write_task_file(path: &Path, task_json: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(task_json.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

/// The variables the wake command gets, with their values: the task's text
/// as data, never as code (see the module documentation).
pub(super) fn task_environment(request: &WakeRequest) -> Vec<(&'static str, OsString)> {
    vec![
        (ENV_TASK_ID, env_value(&request.task_id).into()),
        (ENV_GENERATION, request.generation.to_string().into()),
        (ENV_RESULTS_DIR, request.results_dir.clone().into_os_string()),
        (ENV_TASK_DESCRIPTION, env_value(&request.description).into()),
        (ENV_TASK_JSON, env_value(&request.task_json).into()),
        (ENV_TASK_FILE, request.task_file.clone().into_os_string()),
    ]
}

/// An environment variable cannot hold a NUL byte (spawning would fail). The
/// hub's JSON can carry one in a string, so it is replaced with U+FFFD; the
/// task file still has the exact text (JSON escapes it as `\u0000`).
pub(super) fn env_value(value: &str) -> String {
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
    fn env_value_replaces_nul() {
        assert_eq!(env_value("a\0b"), "a\u{FFFD}b");
        assert_eq!(env_value("plain"), "plain");
    }
}
