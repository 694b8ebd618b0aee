//! (placeholder: hub)
