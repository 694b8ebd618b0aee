//! The single integration-test binary: the real sidecar binary and library
//! pieces driven against real WebSocket hubs on 127.0.0.1.

mod connection;
mod devhub;
mod hostile;
mod hub_conn;
mod pm2;
mod secrets;
mod soak_found;
mod start_script;
mod status_json;
mod support;
mod tasks;
mod wake;
