//! Integration tests of the berth binary: real containers on the real kernel.
//! They need root.

mod cli;
mod common;
mod conformance;
mod errors;
mod exec;
mod hooks;
mod hostile;
mod lifecycle;
mod namespaces;
mod process;
mod resources;
mod rootfs;
mod security;
