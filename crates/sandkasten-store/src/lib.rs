//! sandkasten-store
