//! berth's own gRPC API, served by berthd beside CRI v1 on the same socket.

pub mod v1 {
    tonic::include_proto!("berth.v1");
}
