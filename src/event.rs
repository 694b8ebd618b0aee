//! (placeholder: event)
