//! (provisional: replaced by the wake branch)
use std::path::{Path, PathBuf};
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultsEvent {
    Changed(Vec<PathBuf>),
    Rescan,
}
pub struct ResultsWatcher;
impl ResultsWatcher {
    pub fn start(
        _dir: &Path,
        _on_event: Box<dyn Fn(ResultsEvent) + Send + Sync>,
    ) -> Result<ResultsWatcher, String> {
        unimplemented!()
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Started,
    Result,
    Progress,
}
pub fn classify(_file_name: &str) -> Option<(String, FileKind)> {
    None
}
pub fn is_valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}
pub fn task_file_path(_results_dir: &Path, _task_id: &str, _kind: FileKind) -> PathBuf {
    unimplemented!()
}
pub fn scan(_dir: &Path) -> std::io::Result<Vec<(String, FileKind)>> {
    unimplemented!()
}
#[derive(Debug, Clone, PartialEq)]
pub enum ReadResult {
    Missing,
    TooLarge { len: u64 },
    Unparseable { len: u64, error: String },
    Parsed(serde_json::Value),
}
pub fn read_json_file(_path: &Path, _max_bytes: u64) -> ReadResult {
    unimplemented!()
}
pub fn remove_task_files(_results_dir: &Path, _task_id: &str) -> std::io::Result<()> {
    unimplemented!()
}
