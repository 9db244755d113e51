//! ExecSync: a command run to completion in a container, its output
//! bounded as the kubelet bounds it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use k8s_cri::v1 as cri;
use serde_json::json;

use crate::error::{Error, Result};
use crate::shims::SECOND;
use crate::store::{ContainerRecord, ContainerState};
use crate::util::{self};

use super::Cri;

/// Output ExecSync keeps per stream, as kubelet bounds it.
const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// An exec process about to run: its container, shim, id, process spec
/// and the private directory of its FIFOs.
pub(crate) struct ExecTarget {
    pub id: String,
    pub address: String,
    pub exec_id: String,
    pub process: serde_json::Value,
    pub dir: PathBuf,
}

impl Cri {
    /// A container by id or prefix, which must be running.
    pub(crate) fn running_container(&self, id: &str) -> Result<ContainerRecord> {
        self.with_running_container(id, ContainerRecord::clone)
    }

    /// What `f` makes of a running container (by id or prefix), without
    /// copying its record.
    pub(crate) fn with_running_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&ContainerRecord) -> T,
    ) -> Result<T> {
        let id = self.store.resolve_container(id)?;
        self.store
            .with_container(&id, |c| {
                if c.state != ContainerState::Running {
                    return Err(Error::FailedPrecondition(format!(
                        "container {id} is not running"
                    )));
                }
                Ok(f(c))
            })
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?
    }

    /// The container's process spec with `cmd`, and a fresh exec id and
    /// FIFO directory.
    pub(crate) fn exec_target(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
    ) -> Result<ExecTarget> {
        let c = self.running_container(container_id)?;
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec: cmd is empty".into()));
        }
        let address = self.shim_address_of(&c)?;
        let spec: serde_json::Value = std::fs::read(c.bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::Internal(format!("container {}: its config.json is unreadable", c.id))
            })?;
        let mut process = spec["process"].clone();
        process["args"] = json!(cmd);
        process["terminal"] = json!(tty);
        let exec_id = util::new_id()[..32].to_owned();
        let dir = self.config.state.join("exec").join(&exec_id);
        util::create_private_dir(&dir)?;
        Ok(ExecTarget {
            id: c.id,
            address,
            exec_id,
            process,
            dir,
        })
    }

    /// Removes an exec's FIFOs and its process from the shim.
    pub(crate) async fn end_exec(&self, t: &ExecTarget) {
        let _ = std::fs::remove_dir_all(&t.dir);
        let mut del = api::DeleteRequest::new();
        del.id = t.id.clone();
        del.exec_id = t.exec_id.clone();
        let _ = self.shims.delete_task(&t.address, &del, 10 * SECOND).await;
    }

    pub async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
        let t = self.exec_target(&req.container_id, &req.cmd, false)?;
        let result = self
            .exec_sync_inner(
                &t.address,
                &t.id,
                &t.exec_id,
                &t.dir,
                t.process.clone(),
                req.timeout,
            )
            .await;
        self.end_exec(&t).await;
        result
    }

    pub(super) async fn exec_sync_inner(
        &self,
        address: &str,
        id: &str,
        exec_id: &str,
        dir: &Path,
        process: serde_json::Value,
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse> {
        let out = dir.join("stdout");
        let err = dir.join("stderr");
        let mut readers = Vec::new();
        let mut holders = Vec::new();
        for p in [&out, &err] {
            util::mkfifo(p)?;
            let r = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(p)
                .map_err(|e| Error::internal(p.display(), e))?;
            // Held until the shim has its write end, so that the reader
            // does not see EOF before the process even started.
            let w = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(p)
                .map_err(|e| Error::internal(p.display(), e))?;
            readers.push(r);
            holders.push(w);
        }
        // Output is gathered into shared buffers: what was read stays even
        // when a background child keeps the pipe open past the grace time.
        let read_all = |mut r: tokio::net::unix::pipe::Receiver| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&buf);
            let task = tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut b = sink.lock().unwrap_or_else(|e| e.into_inner());
                            let room = MAX_EXEC_OUTPUT.saturating_sub(b.len());
                            b.extend_from_slice(&chunk[..n.min(room)]);
                        }
                    }
                }
            });
            (task, buf)
        };
        let mut it = readers.into_iter();
        let (out_task, out_buf) = read_all(it.next().expect("two readers"));
        let (err_task, err_buf) = read_all(it.next().expect("two readers"));

        let mut exec = api::ExecProcessRequest::new();
        exec.id = id.to_owned();
        exec.exec_id = exec_id.to_owned();
        exec.stdout = out.display().to_string();
        exec.stderr = err.display().to_string();
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&process).unwrap_or_default();
        exec.spec = containerd_shim_protos::protobuf::MessageField::some(any);
        let _: Empty = self.shims.exec(address, &exec, 30 * SECOND).await?;
        let client = self.shims.client(address).await?;
        if timeout_s > 0 {
            client
                .set_exec_timeout(id, exec_id, Duration::from_secs(timeout_s as u64))
                .await
                .map_err(|e| Error::from_ttrpc("SetExecTimeout", e))?;
        }
        let mut start = api::StartRequest::new();
        start.id = id.to_owned();
        start.exec_id = exec_id.to_owned();
        let _: api::StartResponse = self.shims.start_task(address, &start, 30 * SECOND).await?;
        drop(holders);
        let mut wait = api::WaitRequest::new();
        wait.id = id.to_owned();
        wait.exec_id = exec_id.to_owned();
        let r: api::WaitResponse = self.shims.wait(address, &wait, 0).await?;
        let timed_out = client
            .report(id, exec_id)
            .await
            .map(|r| r.timed_out)
            .unwrap_or(false);
        // Output still held open by a background child is cut short.
        let grace = Duration::from_secs(2);
        let deadline = tokio::time::Instant::now() + grace;
        for task in [out_task, err_task] {
            let mut task = task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
        };
        let (stdout, stderr) = (take(&out_buf), take(&err_buf));
        if timed_out {
            return Err(Error::DeadlineExceeded(format!(
                "command {:?} timed out after {timeout_s}s",
                process["args"]
            )));
        }
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: r.exit_status as i32,
        })
    }
}
