//! The rehearsal's printout: the timeline, the frames, the output tails
//! and the verdict.

use std::io::Write;

use super::{Observed, Verdict};

pub(super) fn print(out: &mut dyn Write, seen: &Observed, verdict: &Verdict) {
    let mut text = String::from("timeline (ms after the command started):\n");
    for (at, what) in &seen.timeline {
        text.push_str(&format!("  {:>8}  {what}\n", at.as_millis()));
    }
    text.push_str("frames the hub would have received:\n");
    if verdict.frames.is_empty() {
        text.push_str("  (none)\n");
    }
    for frame in &verdict.frames {
        text.push_str(&format!("  {}\n", shorten(frame, 2000)));
    }
    if let Some(outcome) = &seen.command {
        for (name, tail) in [("stdout", &outcome.stdout_tail), ("stderr", &outcome.stderr_tail)] {
            text.push_str(&format!("{name} (last 4 KiB):\n"));
            if tail.trim().is_empty() {
                text.push_str("  (empty)\n");
            }
            for line in tail.lines() {
                text.push_str(&format!("  | {line}\n"));
            }
        }
    }
    for note in &verdict.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    if verdict.completed() {
        text.push_str("verdict: the task would have completed\n");
    } else {
        text.push_str("verdict: the task would NOT have completed\n");
    }
    for problem in &verdict.problems {
        text.push_str(&format!("  problem: {}\n  fix:     {}\n", problem.what, problem.fix));
    }
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `text` cut to `max` characters, with `...` when cut.
pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}
