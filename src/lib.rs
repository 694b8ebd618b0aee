//! agentcom-sidecar: a dumb, reliable relay between the AgentCom hub and a
//! local agent runtime. See README.md for the shape and docs/protocol.md
//! for the contract.
//!
//! The crate is a library so the integration tests, the development hub
//! binary and `main.rs` share one implementation.

pub mod agent_cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod devhub;
#[cfg(test)]
mod doc_tests;
pub mod error;
pub mod event;
mod failpoint;
pub mod hub;
pub mod lifecycle_log;
pub mod logging;
pub(crate) mod main_loop;
pub mod output;
pub mod protocol;
pub mod queue_lock;
pub mod queue_store;
pub mod retry;
pub mod selfupdate;
pub mod service;
#[cfg(test)]
mod size_tests;
pub mod state;
pub mod status;
pub mod supervisor;
#[cfg(all(unix, any(test, feature = "failpoints")))]
#[doc(hidden)]
pub mod test_support;
pub mod try_wake;
pub mod update;
pub mod wake;
pub mod watcher;

pub use main_loop::{run, run_supervised};
