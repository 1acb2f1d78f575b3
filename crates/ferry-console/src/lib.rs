//! ferry-console: the PostgreSQL-wire endpoint of a running `ferry run`.
//!
//! It will own an admin console that any `psql` can connect to
//! (`SHOW STATUS`, `SHOW LAG`, `CUTOVER`), answering from the same status
//! model as the HTTP control API, and later the shadow-read proxy that sends
//! reads to both source and target and compares the answers.
//!
//! Nothing is implemented yet: no issue has asked for it. Operators use the
//! HTTP control API (`GET /status`, `POST /cutover`) and `ferry status`.
