//! The single integration-test binary: the real sidecar binary and library
//! pieces driven against real WebSocket hubs on 127.0.0.1.
//!
//! A module that cannot run on a platform is not built there, and the
//! comment above its `cfg` says why: `.ci/windows.sh` lists these modules
//! with their reasons next to the ignored tests. Single tests that cannot
//! run on a platform are `#[cfg_attr(windows, ignore = "reason")]`, and fail
//! if run anyway; there are no empty stand-in tests.

mod agent_kit;
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
mod loud;
// Needs root, network namespaces and iptables (run by .ci/netfault.sh).
#[cfg(target_os = "linux")]
mod netfault;
mod ops;
// pm2 and start.sh need node and bash: Unix tools (start.bat and
// example-agent.cmd are tested in windows_scripts).
#[cfg(unix)]
mod pm2;
// The quick agent is a sh command line.
#[cfg(unix)]
mod rate;
mod real_hubs;
mod secrets;
mod selfupdate;
// Reads /proc and kills process groups with libc.
#[cfg(target_os = "linux")]
mod soak_found;
// start.sh, example-agent.sh and the pm2 file need bash, git and node.
#[cfg(unix)]
mod start_script;
mod support;
// A Unix datagram socket as systemd's NOTIFY_SOCKET.
#[cfg(unix)]
mod systemd;
mod tasks;
mod wake;
#[cfg(windows)]
mod windows_scripts;
// Through the service manager (Wine's in CI).
#[cfg(windows)]
mod windows_service;
