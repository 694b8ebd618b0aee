//! The single integration-test binary: the real sidecar binary and library
//! pieces driven against real WebSocket hubs on 127.0.0.1.

// sh stand-ins of agents, /proc and signals.
#[cfg(target_os = "linux")]
mod agent_run;
// .cmd run-mode agents and taskkill, under Wine in CI.
#[cfg(windows)]
mod agent_run_windows;
mod connection;
mod devhub;
mod devhub_controls;
mod devhub_profiles;
// Reads peak memory from /proc and drives sh agents that make FIFOs and
// symlinks.
#[cfg(unix)]
mod hostile;
mod hub_conn;
#[cfg(target_os = "linux")]
mod netfault;
mod ops;
// pm2 and start.sh need node and bash: Unix tools (start.bat and
// example-agent.cmd are tested in windows_scripts).
#[cfg(unix)]
mod pm2;
mod real_hubs;
mod secrets;
// Reads /proc and kills process groups with libc.
#[cfg(target_os = "linux")]
mod soak_found;
#[cfg(unix)]
mod start_script;
mod support;
mod tasks;
mod wake;
#[cfg(windows)]
mod windows_scripts;

#[cfg(windows)]
#[test]
#[ignore = "skipped on Windows: the hostile-input tests read peak memory from /proc and make FIFOs and symlinks with sh"]
fn hostile_tests_are_unix_only() {}

#[cfg(windows)]
#[test]
#[ignore = "skipped on Windows: start.sh, pm2, example-agent.sh and the pm2 file need bash, sh and node"]
fn start_script_and_pm2_tests_are_unix_only() {}
