//! (provisional: replaced by the hub branch)
use std::path::PathBuf;
use std::time::Duration;
pub struct HubParams {
    pub conn_id: u64,
    pub url: String,
    pub tls_ca_file: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    Connected { conn_id: u64 },
    Frame { conn_id: u64, text: String },
    Disconnected { conn_id: u64, reason: String, close_code: Option<u16>, close_reason: Option<String> },
}
pub struct HubHandle;
impl HubHandle {
    pub fn spawn(_params: HubParams, _on_event: Box<dyn Fn(HubEvent) + Send>) -> std::io::Result<HubHandle> {
        unimplemented!()
    }
    pub fn send(&self, _text: String) {}
    pub fn close(&self) {}
}
