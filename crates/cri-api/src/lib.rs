//! Kubernetes CRI v1 (`runtime.v1`) for berthd, berthctl and the tests:
//! messages, servers and clients generated from `proto/api.proto`.
//!
//! The proto is the one of kubernetes/cri-api that the `k8s-cri` crate
//! (0.11) is generated from, plus the fields kubelets send that it lacks
//! (`Mount.image_sub_path`, Kubernetes 1.33): prost drops unknown fields,
//! so without them a newer kubelet's request would be silently half read.
//! Workspace crates depend on this crate under the name `k8s-cri`, so code
//! reads `k8s_cri::v1` as before.

mod listing;

#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");

    pub use crate::listing::{ListContainersResponse, ListPodSandboxResponse};
}

#[cfg(test)]
mod tests {
    use prost::Message;

    /// What a Kubernetes 1.33 kubelet sends for an image volume with a
    /// sub path (field 10 of Mount) is read, not dropped.
    #[test]
    fn an_image_sub_path_is_read() {
        // Mount{container_path: "/v" (1), image_sub_path: "dir" (10)}.
        let wire = [0x0a, 0x02, b'/', b'v', 0x52, 0x03, b'd', b'i', b'r'];
        let m = super::v1::Mount::decode(&wire[..]).unwrap();
        assert_eq!(
            (m.container_path.as_str(), m.image_sub_path.as_str()),
            ("/v", "dir")
        );
    }

    /// Items sent already encoded follow the built ones and decode as
    /// `items`, in order; nothing lands in `encoded` on the client.
    #[test]
    fn pre_encoded_items_decode_as_items() {
        use super::v1::{ListPodSandboxResponse, PodSandbox};
        let pod = |id: &str| PodSandbox {
            id: id.into(),
            created_at: 7,
            ..Default::default()
        };
        let encoded = ListPodSandboxResponse {
            items: vec![pod("b"), pod("c")],
            encoded: Default::default(),
        }
        .encode_to_vec();
        let sent = ListPodSandboxResponse {
            items: vec![pod("a")],
            encoded: encoded.into(),
        };
        let got = ListPodSandboxResponse::decode(&sent.encode_to_vec()[..]).unwrap();
        assert_eq!(got.items, vec![pod("a"), pod("b"), pod("c")]);
        assert!(got.encoded.is_empty());
        assert_eq!(sent.encoded_len(), sent.encode_to_vec().len());
    }
}
