//! (placeholder: retry)
