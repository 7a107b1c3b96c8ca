//! sandkasten-engine
