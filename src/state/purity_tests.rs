//! The core stays pure: no file of `src/state` (tests aside) names a module
//! that does I/O, and none logs (its lines go out as `Effect::Log`).

use std::fs;
use std::path::{Path, PathBuf};

/// The crate modules the core may use: the wire format, the backoff
/// arithmetic, and itself.
const PURE: &[&str] = &["protocol", "retry", "state"];

/// Known exceptions, each `(file, module)`: none.
const EXCEPTIONS: &[(&str, &str)] = &[];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/state is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if path.is_dir() {
            if name != "tests" {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") && !name.ends_with("tests.rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` the file names, with its line number.
fn crate_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let module: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.push((number + 1, module));
        }
    }
    found
}

#[test]
fn the_core_uses_no_module_that_does_io_and_does_not_log() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src/state"), &mut files);
    assert!(files.len() > 10, "found the core's files: {files:?}");
    let mut offences = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path).expect("a source file is readable");
        let shown = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        for (line, module) in crate_modules(&text) {
            if !PURE.contains(&module.as_str()) && !EXCEPTIONS.contains(&(shown.as_str(), module.as_str())) {
                offences.push(format!("{shown}:{line}: uses crate::{module}"));
            }
        }
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let logs = ["log::", "info!(", "warn!(", "error!(", "debug!(", "trace!("]
                .iter()
                .any(|call| code.contains(call) && !code.contains("log::Level"));
            if logs {
                offences
                    .push(format!("{shown}:{}: logs (push an Effect::Log with say! instead)", number + 1));
            }
        }
    }
    assert!(offences.is_empty(), "the core must stay pure:\n{}", offences.join("\n"));
}

#[test]
fn the_check_sees_an_io_import() {
    let found =
        crate_modules("use crate::wake::WakeHandle;\nfn f() { crate::hub::spawn(); } // crate::config");
    assert_eq!(found, [(1, "wake".to_string()), (2, "hub".to_string())]);
}
