//! Helpers that more than one crate's tests need. Dev-only: no shipped binary depends on it.
