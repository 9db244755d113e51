use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("QMP command failed: {class}: {desc}")]
    QmpCommand { class: String, desc: String },
    #[error("the VM's hypervisor exited during boot ({status}); its last output: {output}")]
    ExitedDuringBoot { status: String, output: String },
    #[error("the guest agent did not answer within {seconds:.1} s of the VM's start; console: {console}")]
    BootTimeout { seconds: f64, console: String },
    #[error("guest agent: {method}: {message} ({code:?})")]
    AgentStatus {
        method: String,
        code: ttrpc::Code,
        message: String,
    },
    #[error("guest agent: {0}")]
    Agent(String),
    /// No answer in time (a long poll that found nothing, or a guest that
    /// stopped answering).
    #[error("guest agent: {method}: no answer within {timeout:?}")]
    AgentTimeout {
        method: String,
        timeout: std::time::Duration,
    },
    #[error("pod network: {0}")]
    Network(String),
    #[error("invalid VM configuration: {0}")]
    Config(String),
}
