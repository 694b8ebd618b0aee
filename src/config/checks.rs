//! The checks that keep a config from being half-right: `hub_url` parsed by
//! the `url` crate, the known key an unknown one is close to (`parse.rs`
//! refuses it with the suggestion, and warns of a config that wakes nobody
//! and never times out), and the directories the sidecar writes to.

use std::path::Path;

/// Parses `hub_url`; the error says what is wrong, for `key `hub_url`: ...`.
/// Returns the URL as the parser writes it, which is what we connect to.
pub(super) fn parse_hub_url(text: &str) -> Result<String, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("expected a ws:// or wss:// URL".into());
    };
    if scheme != "ws" && scheme != "wss" {
        return Err(format!("scheme {scheme:?} is not supported (expected ws or wss)"));
    }
    // The WHATWG rules behind `url` read `host:` as "default port"; an
    // operator who wrote the colon meant a port and forgot it.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err("the URL has no host".into());
    }
    if host_port.ends_with(':') {
        return Err("the URL has no port after `:`".into());
    }
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => "the URL has no host".to_owned(),
        url::ParseError::InvalidPort => "invalid port (expected a number from 1 to 65535)".to_owned(),
        other => format!("invalid URL: {other}"),
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if url.port() == Some(0) {
        return Err("invalid port (expected a number from 1 to 65535)".into());
    }
    if url.fragment().is_some() {
        return Err("a WebSocket URL cannot have a #fragment".into());
    }
    Ok(url.into())
}

/// The known key an unknown `key` is probably a typo of: within one edit
/// for short keys, two for longer ones (a swap of two letters is one edit).
pub(super) fn suggestion<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if key.chars().count() <= 5 { 1 } else { 2 };
    known.map(|k| (edit_distance(key, k), k)).filter(|(d, _)| *d <= limit).min().map(|(_, k)| k)
}

/// Optimal string alignment distance (Levenshtein plus transpositions),
/// compared case-insensitively.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The probe file [`directory_problem`] creates and removes at once.
pub(super) const WRITE_PROBE: &str = ".agentcom-write-test";

/// What is wrong with `dir` as a directory the sidecar creates files in
/// (creating it, and its parents, if missing), as `{key} {path} ...`. Reads
/// only, apart from a probe file it removes at once: `check` calls it too.
pub(super) fn directory_problem(key: &str, dir: &Path) -> Option<String> {
    // The nearest existing ancestor is where the first create happens.
    let mut existing = dir;
    while !existing.as_os_str().is_empty() && std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent()?;
    }
    let existing = if existing.as_os_str().is_empty() { Path::new(".") } else { existing };
    match std::fs::metadata(existing) {
        Err(e) => return Some(format!("{key}: cannot use {}: {e}", existing.display())),
        Ok(meta) if !meta.is_dir() => {
            return Some(format!("{key}: {} is not a directory", existing.display()));
        }
        Ok(_) => {}
    }
    // One fixed name, not a random one: a sidecar killed between the create
    // and the remove leaves a file that the next check reuses and removes,
    // instead of one more stray file per kill (the soak found one).
    let probe = existing.join(WRITE_PROBE);
    let created = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe);
    match created {
        Ok(file) => {
            drop(file);
            // A check running beside a starting sidecar may have removed it.
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if existing == dir => Some(format!("{key}: {} is not writable: {e}", dir.display())),
        Err(e) => Some(format!("{key}: {} cannot be created in {}: {e}", dir.display(), existing.display())),
    }
}
