//! ListPodSandbox's and ListContainers' items written in wire form
//! straight from the records, without building (cloning) messages first;
//! see `ListPodSandboxResponse::encoded` in berth-cri-api. Each item is
//! field 1 of the response: its key, its length, then its fields as prost
//! writes them (proto3: a field at its default value is left out).

use std::collections::HashMap;

use prost::encoding::{
    encode_key, encode_varint, encoded_len_varint, hash_map, int32, int64, key_len, message,
    string, WireType,
};

use crate::store::{ContainerRecord, PodRecord};

/// Items of one list, written in any order and sent by creation time.
#[derive(Default)]
pub(super) struct Items {
    wire: Vec<u8>,
    /// (created_at, start, end) of each item in `wire`.
    spans: Vec<(i64, usize, usize)>,
}

impl Items {
    pub(super) fn pod(&mut self, p: &PodRecord, state: i32) {
        let metadata = p.config.metadata.as_ref();
        let len = str_len(1, &p.id)
            + metadata.map_or(0, |m| message::encoded_len(2, m))
            + int32_len(3, state)
            + int64_len(4, p.created_at)
            + map_len(5, &p.config.labels)
            + map_len(6, &p.config.annotations)
            + str_len(7, &p.runtime_handler);
        let start = self.begin(len);
        let buf = &mut self.wire;
        put_str(1, &p.id, buf);
        if let Some(m) = metadata {
            message::encode(2, m, buf);
        }
        put_int32(3, state, buf);
        put_int64(4, p.created_at, buf);
        put_map(5, &p.config.labels, buf);
        put_map(6, &p.config.annotations, buf);
        put_str(7, &p.runtime_handler, buf);
        self.end(p.created_at, start);
    }

    pub(super) fn container(&mut self, c: &ContainerRecord, state: i32) {
        let metadata = c.config.metadata.as_ref();
        // image: an ImageSpec with only `image` (field 1) set.
        let image_len = str_len(1, &c.image_ref);
        let len = str_len(1, &c.id)
            + str_len(2, &c.pod_id)
            + metadata.map_or(0, |m| message::encoded_len(3, m))
            + key_len(4)
            + encoded_len_varint(image_len as u64)
            + image_len
            + str_len(5, &c.image_repo_digest)
            + int32_len(6, state)
            + int64_len(7, c.created_at)
            + map_len(8, &c.config.labels)
            + map_len(9, &c.config.annotations)
            + str_len(10, &c.image_id);
        let start = self.begin(len);
        let buf = &mut self.wire;
        put_str(1, &c.id, buf);
        put_str(2, &c.pod_id, buf);
        if let Some(m) = metadata {
            message::encode(3, m, buf);
        }
        encode_key(4, WireType::LengthDelimited, buf);
        encode_varint(image_len as u64, buf);
        put_str(1, &c.image_ref, buf);
        put_str(5, &c.image_repo_digest, buf);
        put_int32(6, state, buf);
        put_int64(7, c.created_at, buf);
        put_map(8, &c.config.labels, buf);
        put_map(9, &c.config.annotations, buf);
        put_str(10, &c.image_id, buf);
        self.end(c.created_at, start);
    }

    /// The items oldest first (ties in the order written), as the
    /// response's `encoded`.
    pub(super) fn into_wire(mut self) -> Vec<u8> {
        self.spans.sort_by_key(|s| s.0);
        if self.spans.windows(2).all(|w| w[0].2 == w[1].1) {
            return self.wire;
        }
        let mut out = Vec::with_capacity(self.wire.len());
        for (_, start, end) in self.spans {
            out.extend_from_slice(&self.wire[start..end]);
        }
        out
    }

    fn begin(&mut self, len: usize) -> usize {
        let start = self.wire.len();
        self.wire
            .reserve(key_len(1) + encoded_len_varint(len as u64) + len);
        encode_key(1, WireType::LengthDelimited, &mut self.wire);
        encode_varint(len as u64, &mut self.wire);
        start
    }

    fn end(&mut self, created_at: i64, start: usize) {
        self.spans.push((created_at, start, self.wire.len()));
    }
}

fn str_len(tag: u32, s: &String) -> usize {
    if s.is_empty() {
        0
    } else {
        string::encoded_len(tag, s)
    }
}

fn put_str(tag: u32, s: &String, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        string::encode(tag, s, buf);
    }
}

fn int32_len(tag: u32, v: i32) -> usize {
    if v == 0 {
        0
    } else {
        int32::encoded_len(tag, &v)
    }
}

fn put_int32(tag: u32, v: i32, buf: &mut Vec<u8>) {
    if v != 0 {
        int32::encode(tag, &v, buf);
    }
}

fn int64_len(tag: u32, v: i64) -> usize {
    if v == 0 {
        0
    } else {
        int64::encoded_len(tag, &v)
    }
}

fn put_int64(tag: u32, v: i64, buf: &mut Vec<u8>) {
    if v != 0 {
        int64::encode(tag, &v, buf);
    }
}

fn map_len(tag: u32, m: &HashMap<String, String>) -> usize {
    hash_map::encoded_len(string::encoded_len, string::encoded_len, tag, m)
}

fn put_map(tag: u32, m: &HashMap<String, String>, buf: &mut Vec<u8>) {
    hash_map::encode(
        string::encode,
        string::encoded_len,
        string::encode,
        string::encoded_len,
        tag,
        m,
        buf,
    );
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1 as cri;
    use prost::Message;

    use super::*;
    use crate::store::{ContainerState, PodState};

    fn labels(n: usize) -> HashMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
    }

    /// What the server writes decodes to the messages it stands for, in
    /// creation order, with and without the fields at their defaults.
    #[test]
    fn items_decode_to_the_messages() {
        let mut items = Items::default();
        let mut pods = Vec::new();
        for (i, created_at) in [30i64, 10, 20, 0].into_iter().enumerate() {
            let mut p = PodRecord {
                id: format!("pod{i}"),
                config: cri::PodSandboxConfig::default(),
                runtime_handler: String::new(),
                state: PodState::Ready,
                created_at,
                namespaces: Default::default(),
                dir: "/".into(),
                cgroup_parent: String::new(),
                shim_address: None,
                pause_pid: None,
                ips: Vec::new(),
            };
            if i != 3 {
                p.config.metadata = Some(cri::PodSandboxMetadata {
                    name: format!("n{i}"),
                    namespace: "ns".into(),
                    uid: String::new(),
                    attempt: i as u32,
                });
                p.config.labels = labels(i);
                p.config.annotations = labels(3 - i);
                p.runtime_handler = "berth".into();
            }
            let state = if i % 2 == 0 { 0 } else { 1 };
            items.pod(&p, state);
            pods.push((
                created_at,
                cri::PodSandbox {
                    id: p.id.clone(),
                    metadata: p.config.metadata.clone(),
                    state,
                    created_at,
                    labels: p.config.labels.clone(),
                    annotations: p.config.annotations.clone(),
                    runtime_handler: p.runtime_handler.clone(),
                },
            ));
        }
        pods.sort_by_key(|p| p.0);
        let want: Vec<cri::PodSandbox> = pods.into_iter().map(|p| p.1).collect();
        let response = cri::ListPodSandboxResponse {
            items: Vec::new(),
            encoded: items.into_wire().into(),
        };
        let got = cri::ListPodSandboxResponse::decode(&response.encode_to_vec()[..]).unwrap();
        assert_eq!(got.items, want);
        assert!(got.encoded.is_empty());
    }

    #[test]
    fn container_items_decode_to_the_messages() {
        let mut items = Items::default();
        let mut want = Vec::new();
        for i in 0..3i32 {
            let mut c = ContainerRecord {
                id: format!("c{i}"),
                pod_id: "p".into(),
                config: cri::ContainerConfig::default(),
                image_ref: if i == 2 {
                    String::new()
                } else {
                    format!("busybox:{i}")
                },
                image_id: "sha256:ab".into(),
                image_repo_digest: "r@sha256:ab".into(),
                state: ContainerState::Running,
                created_at: i64::from(i),
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                pid: 0,
                bundle: "/".into(),
                log_path: String::new(),
                rootfs_key: String::new(),
                user: None,
                image_volumes: Vec::new(),
            };
            c.config.metadata = Some(cri::ContainerMetadata {
                name: format!("c{i}"),
                attempt: 1,
            });
            c.config.labels = labels(i as usize);
            items.container(&c, i);
            want.push(cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(cri::ImageSpec {
                    image: c.image_ref.clone(),
                    ..Default::default()
                }),
                image_ref: c.image_repo_digest.clone(),
                state: i,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            });
        }
        let response = cri::ListContainersResponse {
            containers: Vec::new(),
            encoded: items.into_wire().into(),
        };
        let got = cri::ListContainersResponse::decode(&response.encode_to_vec()[..]).unwrap();
        assert_eq!(got.containers, want);
    }
}
