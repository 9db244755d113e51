//! Integration tests of the berth binary: real containers on the real kernel.
//! They need root.

mod common;
mod lifecycle;
