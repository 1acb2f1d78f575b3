//! End-to-end tests live in `tests/`: each drives the `ferry` binary against throwaway servers from `ferry-testkit`.
