//! (placeholder: queue_store)
