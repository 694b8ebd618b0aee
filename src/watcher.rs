//! (placeholder: watcher)
