//! berth's own APIs: the gRPC services berthd serves beside CRI v1 on the
//! same socket (feature `grpc`, on by default), and the messages of the
//! shim's ttrpc extension service.

#[cfg(feature = "grpc")]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}

/// The shim's own service, `berth.shim.v1.Shim` (proto/berth/shim/v1/shim.proto).
pub mod shim {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/berth.shim.v1.rs"));

        /// The service's name on the shim's ttrpc socket.
        pub const SERVICE: &str = "berth.shim.v1.Shim";
        /// Its methods, as named on the wire.
        pub const REOPEN_LOG: &str = "ReopenLog";
        pub const SET_EXEC_TIMEOUT: &str = "SetExecTimeout";
        pub const REPORT: &str = "Report";
        pub const ATTACH: &str = "Attach";
        pub const DETACH: &str = "Detach";
    }
}

/// The `vm` runtime class's in-guest agent, `berth.agent.v1.Agent`
/// (proto/berth/agent/v1/agent.proto).
pub mod agent {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/berth.agent.v1.rs"));

        /// The service's name on the agent's ttrpc channel.
        pub const SERVICE: &str = "berth.agent.v1.Agent";
        /// Its methods, as named on the wire.
        pub const CHECK: &str = "Check";
        pub const RUN_COMMAND: &str = "RunCommand";
        pub const SETUP_GUEST: &str = "SetupGuest";
        pub const CONFIGURE_NETWORK: &str = "ConfigureNetwork";
        pub const MOUNT: &str = "Mount";
        pub const CREATE_CONTAINER: &str = "CreateContainer";
        pub const START_CONTAINER: &str = "StartContainer";
        pub const EXEC_PROCESS: &str = "ExecProcess";
        pub const SIGNAL_PROCESS: &str = "SignalProcess";
        pub const WAIT_PROCESS: &str = "WaitProcess";
        pub const READ_STDOUT: &str = "ReadStdout";
        pub const READ_STDERR: &str = "ReadStderr";
        pub const WRITE_STDIN: &str = "WriteStdin";
        pub const CLOSE_STDIN: &str = "CloseStdin";
        pub const RESIZE_PTY: &str = "ResizePty";
        pub const PAUSE_CONTAINER: &str = "PauseContainer";
        pub const RESUME_CONTAINER: &str = "ResumeContainer";
        pub const UPDATE_CONTAINER: &str = "UpdateContainer";
        pub const STATS_CONTAINER: &str = "StatsContainer";
        pub const REMOVE_CONTAINER: &str = "RemoveContainer";
        pub const SHUTDOWN: &str = "Shutdown";
        /// The virtio-serial port the agent serves on.
        pub const PORT_NAME: &str = "berth.agent";
        /// The vsock port it serves on instead, on hosts with vhost-vsock.
        pub const VSOCK_PORT: u32 = 1024;
        /// The kernel command line's parameter that selects vsock.
        pub const VSOCK_PARAM: &str = "berth.channel=vsock";
    }
}
