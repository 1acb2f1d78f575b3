//! ferry-postgres
