//! sandkasten-api
