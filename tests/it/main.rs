//! The single integration-test binary: the real sidecar binary and library
//! pieces driven against real WebSocket hubs on 127.0.0.1.

mod devhub;
mod support;
