//! What the streaming server asks of the runtime behind it.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Exec of a command in a running container (CRI ExecRequest).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Attach to a running container's stdio (CRI AttachRequest).
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Port forwarding into a pod (CRI PortForwardRequest). The ports the
/// client may use; empty means any.
#[derive(Debug, Clone)]
pub struct PortForwardRequest {
    pub pod_id: String,
    pub ports: Vec<u16>,
}

impl PortForwardRequest {
    /// Whether the request lets a stream reach `port`: any port when it
    /// named none.
    pub fn allows(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// A terminal's size, as the resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's side of a process's stdio, as far as it asked for it.
/// Stdin ends (EOF) when the client closes it.
#[derive(Default)]
pub struct StreamIo {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs the command with `io` until it exits; its exit code. An error
    /// is a message for the client (the command could not run).
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, String>;

    /// Relays the container's stdio with `io` until the container exits
    /// or the client leaves.
    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), String>;

    /// A connection to `port` on the pod's loopback, made from inside its
    /// network namespace.
    async fn port_forward(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream, String>;
}
