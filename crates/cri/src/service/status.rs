//! ContainerStatus and ListContainers.

use prost::bytes::Bytes;
use std::collections::HashMap;

use k8s_cri::v1 as cri;
use serde_json::json;

use crate::error::{Error, Result};
use crate::store::{ContainerRecord, ContainerState};
use crate::util::{self};

use super::Cri;

impl Cri {
    pub fn container_status_of(&self, c: &ContainerRecord) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: container_state_cri(c.state) as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(cri::ImageSpec {
                image: c.image_ref.clone(),
                ..Default::default()
            }),
            image_ref: c.image_repo_digest.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: super::image_volumes::reported_mounts(c),
            log_path: c.log_path.clone(),
            resources: c
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: c.image_id.clone(),
            user: c
                .user
                .as_ref()
                .map(|(uid, gid, groups)| cri::ContainerUser {
                    linux: Some(cri::LinuxContainerUser {
                        uid: *uid as i64,
                        gid: *gid as i64,
                        supplemental_groups: groups.iter().map(|g| *g as i64).collect(),
                    }),
                }),
        }
    }

    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse> {
        let id = self.store.resolve_container(id)?;
        let c = self
            .store
            .container(&id)
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?;
        let mut info = HashMap::new();
        if verbose {
            let spec: serde_json::Value = std::fs::read(c.bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let v = json!({
                "sandboxID": c.pod_id,
                "pid": c.pid,
                "bundle": c.bundle,
                "runtimeSpec": spec,
                "config": c.config,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(self.container_status_of(&c)),
            info,
        })
    }

    /// The containers `filter` keeps, oldest first, in wire form (see
    /// [`wire`](super::wire)).
    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Bytes {
        let f = filter.unwrap_or_default();
        let write = |containers: &mut dyn Iterator<Item = &ContainerRecord>| {
            let mut items = super::wire::Items::default();
            for c in containers {
                let state = container_state_cri(c.state) as i32;
                let keep = (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                    && f.state.as_ref().is_none_or(|s| state == s.state)
                    && util::labels_match(&c.config.labels, &f.label_selector);
                if keep {
                    items.container(c, state);
                }
            }
            items.into_wire()
        };
        // kubelet's PLEG asks for all of them, every second.
        if f == cri::ContainerFilter::default() {
            return self.store.container_list(write);
        }
        Bytes::from(self.store.with_containers(write))
    }
}

fn container_state_cri(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}
