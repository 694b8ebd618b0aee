//! (provisional: replaced by the ops branch)
use std::path::Path;
pub struct LifecycleLog;
impl LifecycleLog {
    pub fn open(_path: &Path, _agent_id: &str, _max_bytes: u64, _keep: u32) -> std::io::Result<LifecycleLog> {
        unimplemented!()
    }
    pub fn record(&mut self, _event: &str, _fields: serde_json::Value) {}
}
pub fn read_recent(_path: &Path, _max_records: usize) -> std::io::Result<Vec<serde_json::Value>> {
    unimplemented!()
}
