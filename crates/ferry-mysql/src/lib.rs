//! ferry-mysql
