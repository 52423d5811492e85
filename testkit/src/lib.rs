//! Test support for the tests, benchmarks and fault runs (work in progress).
