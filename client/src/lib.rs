//! The Rust client for Shoal (work in progress).
