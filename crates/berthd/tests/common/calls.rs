//! The harness's CRI calls, each panicking with berthd's log when it
//! fails (the `try_` ones return the status instead), and the checks that
//! a test left nothing behind.

use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;

use super::*;

impl Berthd {
    pub async fn try_run_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .await
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    pub async fn run_pod(&self, config: &cri::PodSandboxConfig, handler: &str) -> String {
        self.try_run_pod(config, handler)
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", self.log_tail()))
    }

    pub async fn try_create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .await
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config.clone()),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> String {
        self.try_create(pod, pod_config, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", self.log_tail()))
    }

    pub async fn try_start(&self, id: &str) -> Result<(), tonic::Status> {
        self.runtime()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map(|_| ())
    }

    pub async fn start_container(&self, id: &str) {
        self.try_start(id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e:?}\n{}", self.log_tail()))
    }

    /// CreateContainer then StartContainer.
    pub async fn run_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod, pod_config, config).await;
        self.start_container(&id).await;
        id
    }

    /// A busybox container running `sleep 1000` (or `command`).
    pub async fn sleeper(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
    ) -> String {
        let cfg = self.container_config(name, &images().busybox, &["sleep", "1000"]);
        self.run_container(pod, pod_config, &cfg).await
    }

    pub async fn try_exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn exec(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.try_exec(id, cmd, 20)
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e:?}\n{}", self.log_tail()))
    }

    /// A streaming Exec URL for `cmd`: stdout, and stderr apart unless
    /// `tty`.
    pub async fn exec_url(
        &self,
        id: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .await
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .map(|r| r.into_inner().url)
    }

    /// A streaming Attach URL: stdout, and stderr apart unless `tty`.
    pub async fn attach_url(
        &self,
        id: &str,
        tty: bool,
        stdin: bool,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .await
            .attach(cri::AttachRequest {
                container_id: id.into(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .map(|r| r.into_inner().url)
    }

    /// A streaming PortForward URL for `ports` of `pod`.
    pub async fn port_forward_url(
        &self,
        pod: &str,
        ports: Vec<i32>,
    ) -> Result<String, tonic::Status> {
        self.runtime()
            .await
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.into(),
                port: ports,
            })
            .await
            .map(|r| r.into_inner().url)
    }

    /// `sh -c script` in a container; asserts exit 0, returns stdout trimmed.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let r = self.exec(id, &["sh", "-c", script]).await;
        assert_eq!(
            r.exit_code,
            0,
            "`{script}` failed: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).trim().to_owned()
    }

    /// `sh -c script`: (exit code, stdout + stderr).
    pub async fn sh_any(&self, id: &str, script: &str) -> (i32, String) {
        let r = self.exec(id, &["sh", "-c", script]).await;
        (
            r.exit_code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ),
        )
    }

    pub async fn status(&self, id: &str) -> cri::ContainerStatus {
        self.status_verbose(id, false).await.status.unwrap()
    }

    pub async fn status_verbose(&self, id: &str, verbose: bool) -> cri::ContainerStatusResponse {
        self.runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:?}\n{}", self.log_tail()))
            .into_inner()
    }

    pub async fn pod_status(&self, id: &str, verbose: bool) -> cri::PodSandboxStatusResponse {
        self.runtime()
            .await
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose,
            })
            .await
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e:?}\n{}", self.log_tail()))
            .into_inner()
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) {
        self.runtime()
            .await
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e:?}\n{}", self.log_tail()));
    }

    pub async fn remove_container(&self, id: &str) {
        self.runtime()
            .await
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e:?}\n{}", self.log_tail()));
    }

    pub async fn stop_pod(&self, id: &str) {
        self.runtime()
            .await
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e:?}\n{}", self.log_tail()));
    }

    pub async fn remove_pod(&self, id: &str) {
        self.runtime()
            .await
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e:?}\n{}", self.log_tail()));
    }

    pub async fn pods(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        self.runtime()
            .await
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await
            .unwrap()
            .into_inner()
            .items
    }

    pub async fn containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        self.runtime()
            .await
            .list_containers(cri::ListContainersRequest { filter })
            .await
            .unwrap()
            .into_inner()
            .containers
    }

    /// Stops and removes every pod (and so every container) as a kubelet
    /// would, then asserts nothing is listed or left on the host.
    pub async fn remove_all_and_check(&self) {
        for p in self.pods(None).await {
            self.stop_pod(&p.id).await;
            self.remove_pod(&p.id).await;
        }
        for c in self.containers(None).await {
            self.remove_container(&c.id).await;
        }
        assert!(self.pods(None).await.is_empty());
        assert!(self.containers(None).await.is_empty());
        self.assert_no_leftovers().await;
    }

    /// Unmounts what the test mounted itself (innermost first), then as
    /// [`Berthd::remove_all_and_check`].
    pub async fn remove_all_and_check_with_unmount(&self, own_mounts: &[PathBuf]) {
        for p in self.pods(None).await {
            self.stop_pod(&p.id).await;
            self.remove_pod(&p.id).await;
        }
        for m in own_mounts {
            rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH)
                .unwrap_or_else(|e| panic!("unmounting {}: {e}", m.display()));
        }
        self.remove_all_and_check().await;
    }

    /// Waits a little for processes to be reaped, then asserts that nothing
    /// of this daemon's pods is left on the host.
    pub async fn assert_no_leftovers(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("leftovers: {left:?}\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pid of a running container's init, from the verbose status.
    pub async fn container_pid(&self, id: &str) -> u32 {
        let r = self.status_verbose(id, true).await;
        let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
        info["pid"].as_u64().unwrap() as u32
    }

    /// The cgroups path (`<parent>/<id>`) of a container.
    pub fn container_cgroup(&self, id: &str) -> String {
        format!("{}/{id}", self.cgroup_parent)
    }
}
