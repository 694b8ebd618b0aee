//! (placeholder: protocol)
