//! (placeholder: wake)
