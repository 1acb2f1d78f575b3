//! ferry-monitor
