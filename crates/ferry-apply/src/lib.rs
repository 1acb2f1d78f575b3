//! ferry-apply
