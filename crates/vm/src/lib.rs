//! berth-vm: the host side of the `vm` runtime class. A pod of that class
//! runs in its own lightweight virtual machine: [`Vm`] boots one (QEMU's
//! `microvm` machine, driven over QMP), with berth's agent as the guest's
//! PID 1, reached over a virtio-serial port ([`AgentClient`]).

mod agent;
mod error;
mod qemu;
pub mod qmp;

pub use agent::{AgentClient, CheckResponse, RunCommandRequest, RunCommandResponse};
pub use error::VmError;
pub use qemu::{Accel, Vm, VmConfig};
