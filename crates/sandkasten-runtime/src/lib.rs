//! sandkasten-runtime
