//! ferry-sqlite
