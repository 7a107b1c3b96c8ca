//! sandkasten-native
