//! Self-checks of the test support code, as their own test target.
//!
//! Cargo builds `tests/<dir>/main.rs` as an integration test named after the
//! directory, so these run once (`cargo test -p berth-image --test support`)
//! instead of in every test binary that says `mod support;`.

#[path = "mod.rs"]
mod support;

mod selftest;
