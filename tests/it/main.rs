//! The single integration-test binary: the real sidecar binary and library
//! pieces driven against real WebSocket hubs on 127.0.0.1.

mod connection;
mod devhub;
mod devhub_controls;
mod devhub_profiles;
mod hostile;
mod hub_conn;
#[cfg(target_os = "linux")]
mod netfault;
mod ops;
mod pm2;
mod real_hubs;
mod secrets;
mod soak_found;
mod start_script;
mod support;
mod tasks;
mod wake;
