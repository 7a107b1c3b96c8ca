//! Engine tests against the fake runtime.
