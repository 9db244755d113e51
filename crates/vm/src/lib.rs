//! berth-vm: the host side of the `vm` runtime class. A pod of that class
//! runs in its own lightweight virtual machine: [`Vm`] boots one (QEMU's
//! `microvm` machine, driven over QMP), with berth's agent as the guest's
//! PID 1, reached over a virtio-serial port ([`AgentClient`]).

mod agent;
mod channel;
mod error;
pub mod network;
mod process;
mod qemu;
pub mod qmp;
mod virtiofs;

pub use agent::{
    AgentClient, CheckResponse, CreateContainerRequest, ExecProcessRequest, MountRequest,
    ProcessExit, RunCommandRequest, RunCommandResponse, StreamData,
};
pub use channel::AgentChannel;
pub use error::VmError;
pub use process::Process;
pub use qemu::{Accel, Disk, Vm, VmConfig, DEFAULT_VIRTIOFSD};
pub use virtiofs::{SharedDir, Transport, GUEST_SHARED_DIR, SHARE_TAG};
