//! What of a local error may go to the hub: the box's absolute paths stay
//! home (they tell the hub's operators nothing they can use, and tell anyone
//! reading the hub's records how this machine is laid out). The log keeps
//! the full text.

/// `text` with every absolute path (Unix `/...`, Windows `C:\...` and
/// `\\server\...`) shortened to `<local>/` and its last component. A path
/// starts after a space, `(`, a quote or the start, and runs to `: `, `; `,
/// `, `, ` (`, `)`, a quote, a line end or the end.
pub(crate) fn without_local_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut at_boundary = true;
    while let Some(c) = rest.chars().next() {
        if at_boundary && starts_absolute(rest) {
            let end = path_end(rest);
            let path = &rest[..end];
            let name = path.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next().unwrap_or("");
            out.push_str("<local>/");
            out.push_str(name);
            rest = &rest[end..];
            at_boundary = false;
            continue;
        }
        out.push(c);
        at_boundary = matches!(c, ' ' | '(' | '"' | '\'' | '`' | '=');
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn starts_absolute(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes {
        [b'/', ..] => true,
        [b'\\', b'\\', ..] => true,
        [drive, b':', b'\\' | b'/', ..] => drive.is_ascii_alphabetic(),
        _ => false,
    }
}

fn path_end(text: &str) -> usize {
    let stops = [": ", "; ", ", ", " (", ")", "\"", "'", "`", "\n", "\r"];
    stops.iter().filter_map(|stop| text.find(stop)).min().unwrap_or(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_lose_their_directories() {
        let error = r#"cannot write task file /tmp/x y/results/.tasks/t-1.json: Permission denied (os error 13) at path "/tmp/x/.t.tmp""#;
        assert_eq!(
            without_local_paths(error),
            r#"cannot write task file <local>/t-1.json: Permission denied (os error 13) at path "<local>/.t.tmp""#
        );
        assert_eq!(
            without_local_paths(r"the working directory C:\agent\box is not a directory"),
            "the working directory <local>/box is not a directory"
        );
        assert_eq!(without_local_paths(r"(\\srv\share\dir)"), "(<local>/dir)");
        for kept in ["exit code 1", "timed out", "a/b relative: ok", "ratio 1/2", "https://hub/x"] {
            assert_eq!(without_local_paths(kept), kept);
        }
    }
}
