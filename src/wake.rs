//! (provisional: replaced by the wake branch)
use std::path::PathBuf;
use std::time::Duration;
pub struct WakeRequest {
    pub task_id: String,
    pub generation: u64,
    pub attempt: u32,
    pub command_template: String,
    pub description: String,
    pub task_json: String,
    pub task_file: PathBuf,
    pub results_dir: PathBuf,
    pub timeout: Duration,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeStatus {
    Success,
    Failed { exit_code: Option<i32> },
    TimedOut,
    SpawnFailed(String),
    Cancelled,
}
#[derive(Debug, Clone)]
pub struct WakeOutcome {
    pub task_id: String,
    pub attempt: u32,
    pub status: WakeStatus,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub elapsed: Duration,
}
pub struct WakeHandle;
impl WakeHandle {
    pub fn spawn(_on_outcome: Box<dyn Fn(WakeOutcome) + Send>) -> std::io::Result<WakeHandle> {
        unimplemented!()
    }
    pub fn run(&self, _request: WakeRequest) {}
    pub fn cancel(&self, _task_id: &str) {}
}
pub fn write_task_file(_path: &std::path::Path, _task_json: &str) -> std::io::Result<()> {
    unimplemented!()
}
