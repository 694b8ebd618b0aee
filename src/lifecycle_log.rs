//! (placeholder: lifecycle_log)
