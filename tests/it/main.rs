//! The single integration-test binary: the real sidecar binary and library
//! pieces driven against real WebSocket hubs on 127.0.0.1.

mod connection;
mod devhub;
mod hub_conn;
// start.sh needs bash and the pm2 file node: Unix tools (start.bat and
// example-agent.cmd are tested in windows_scripts).
#[cfg(unix)]
mod start_script;
mod support;
mod tasks;
#[cfg(windows)]
mod windows_scripts;

#[cfg(windows)]
#[test]
#[ignore = "skipped on Windows: start.sh, example-agent.sh and the pm2 file need bash, sh and node"]
fn start_script_tests_are_unix_only() {}
