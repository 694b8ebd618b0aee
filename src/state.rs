//! (placeholder: state)
