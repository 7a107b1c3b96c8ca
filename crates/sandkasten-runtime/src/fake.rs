//! In-memory fake runtime for tests (filled in below).
