//! berth-stream: the streaming server a CRI runtime hands the kubelet for
//! Exec, Attach and PortForward. Each request gets a single-use URL (a
//! random token, valid for a minute); the client upgrades its request to
//! SPDY/3.1 or WebSocket there and the streams are relayed to a
//! [`Backend`] (berthd: the pod's shim and network namespace). It knows
//! nothing of pods or shims itself.

mod backend;
mod idle;
mod relay;
mod remotecommand;
mod server;
mod spdy;
mod token;
mod websocket;

pub use backend::{
    AttachRequest, Backend, BoxRead, BoxWrite, ExecRequest, PortForwardRequest, StreamIo,
    TerminalSize,
};
pub use remotecommand::Version;
pub use server::{Config, Server};
pub use token::Full;

/// A request waiting for its client.
#[derive(Debug, Clone)]
pub(crate) enum Operation {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}
