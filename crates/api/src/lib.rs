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
