//! ferry-console
