//! What the worker threads send the event loop: one enum, one variant per
//! source (defined in the core, `state::events`). The loop hands each to the
//! core as `state::Input::Event`.

pub use crate::state::Event;
