//! (placeholder: devhub)
