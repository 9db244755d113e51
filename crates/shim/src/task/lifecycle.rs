//! Creating, starting, signalling, updating and deleting containers and
//! their execs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::Status;
use oci_spec::runtime::{LinuxResources, Process};

use super::backend_choice::backend_for;
use super::deadline::arm_deadline;
use super::options::parse_options;
use super::process::{no_exec, Container, Exit, Proc};
use super::rootfs::{mount_rootfs, unmount_rootfs};
use super::Service;
use crate::backend::Backend;
use crate::error::{Context, Result, ShimError};
use crate::events::{timestamp, Event};
use crate::stdio::{self, StdioSpec};

impl Service {
    pub(super) fn create(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        if self.lock().containers.contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.join("config.json").is_file() {
            return Err(ShimError::InvalidArgument(format!(
                "bundle {}: no config.json",
                bundle.display()
            )));
        }
        let backend = Arc::new(match &self.vm_pod {
            Some(slot) => Backend::Vm(self.vm_container(slot, req, &bundle)?),
            None => backend_for(&req.options, &self.state_root, &self.namespace)?,
        });
        let spec = StdioSpec {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let (io, pending) =
            stdio::prepare(&spec).context(|| format!("setting up stdio of {}", req.id))?;
        let mounted = mount_rootfs(&bundle, &req.rootfs)?;
        let (no_pivot, no_new_keyring) = parse_options(&req.options)
            .map(|o| (o.no_pivot_root, o.no_new_keyring))
            .unwrap_or_default();
        let stdin = !req.stdin.is_empty();
        let pid = match backend.create(&req.id, &bundle, io, stdin, no_pivot, no_new_keyring) {
            Ok(pid) => pid,
            Err(e) => {
                if mounted {
                    unmount_rootfs(&bundle);
                }
                return Err(e).context(|| format!("creating container {}", req.id));
            }
        };
        let mut init = Proc::new(spec);
        init.pid = pid;
        init.io = pending.start();
        let oom = match &*backend {
            Backend::Vm(vm) => Arc::clone(&vm.oom),
            _ => Arc::new(AtomicBool::new(false)),
        };
        self.lock().containers.insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                backend: Arc::clone(&backend),
                init,
                execs: HashMap::new(),
                rootfs_mounted: mounted,
                oom_killed: Arc::clone(&oom),
                stats: Default::default(),
            },
        );
        if backend.host_pids() {
            self.register_pid(pid, &req.id, "");
        }
        self.watch_oom(&req.id, &backend, pid, oom);
        let mut e = ev::TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.clone();
        e.pid = pid as u32;
        let mut io = ev::TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        e.io = MessageField::some(io);
        self.publisher.publish(Event::Create(e));
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid as u32;
        Ok(r)
    }

    pub(super) fn start(self: &Arc<Self>, req: &api::StartRequest) -> Result<api::StartResponse> {
        let pid = if req.exec_id.is_empty() {
            self.start_init(&req.id)?
        } else {
            self.start_exec(&req.id, &req.exec_id)?
        };
        let mut r = api::StartResponse::new();
        r.pid = pid as u32;
        Ok(r)
    }

    fn start_init(self: &Arc<Self>, id: &str) -> Result<i32> {
        let backend = self.backend(id)?;
        let (pid, st, _, _, bundle) = self.process_status(id, "")?;
        if st != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not created"
            )));
        }
        backend
            .start(id, &bundle)
            .context(|| format!("starting {id}"))?;
        if let Some(wait) = backend.exit_waiter(id) {
            // The sandbox's process is not the container's: ask the
            // runtime when the container ends.
            self.wait_outside(id, "", pid, wait);
        }
        if let Some(c) = self.lock().containers.get_mut(id) {
            if c.init.status == Status::CREATED {
                c.init.status = Status::RUNNING;
            }
        }
        let mut e = ev::TaskStart::new();
        e.container_id = id.to_owned();
        e.pid = pid as u32;
        self.publisher.publish(Event::Start(e));
        Ok(pid)
    }

    fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<i32> {
        let backend = self.backend(id)?;
        let (spec, stdio_spec, bundle) = {
            let inner = self.lock();
            let c = inner.container(id)?;
            let p = c.execs.get(exec_id).ok_or_else(|| no_exec(id, exec_id))?;
            let spec = p.spec.clone().ok_or_else(|| {
                ShimError::FailedPrecondition(format!("exec {exec_id} was already started"))
            })?;
            (spec, p.stdio.clone(), c.bundle.clone())
        };
        let (io, pending) = stdio::prepare(&stdio_spec)
            .context(|| format!("setting up stdio of exec {exec_id}"))?;
        let pid = backend
            .exec(
                id,
                exec_id,
                &bundle,
                &spec,
                io,
                !stdio_spec.stdin.is_empty(),
            )
            .context(|| format!("exec {exec_id} in {id}"))?;
        let handle = pending.start();
        if let Ok(p) = self.lock().process_mut(id, exec_id) {
            p.pid = pid;
            p.spec = None;
            p.status = Status::RUNNING;
            p.io = handle;
            if let Some(limit) = p.timeout {
                arm_deadline(id, exec_id, limit, p, Arc::clone(&backend));
            }
        }
        match backend.exec_exit_waiter(id, exec_id) {
            Some(wait) => self.wait_outside(id, exec_id, pid, wait),
            None => self.register_pid(pid, id, exec_id),
        }
        let mut e = ev::TaskExecStarted::new();
        e.container_id = id.to_owned();
        e.exec_id = exec_id.to_owned();
        e.pid = pid as u32;
        self.publisher.publish(Event::ExecStarted(e));
        Ok(pid)
    }

    pub(super) fn delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (pid, st, _, exit, bundle) = self.process_status(&req.id, &req.exec_id)?;
        if !req.exec_id.is_empty() {
            if st == Status::RUNNING && exit.is_none() {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} is still running",
                    req.exec_id
                )));
            }
            if let Some(c) = self.lock().containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
            let mut r = api::DeleteResponse::new();
            r.pid = pid as u32;
            if let Some(e) = exit {
                r.exit_status = e.status;
                r.exited_at = MessageField::some(timestamp(e.at));
            }
            return Ok(r);
        }
        if (st == Status::RUNNING || st == Status::PAUSED) && exit.is_none() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is still running: stop it first",
                req.id
            )));
        }
        let backend = self.backend(&req.id)?;
        if let Err(e) = backend.delete(&req.id, true) {
            log::warn!("deleting {}: {e}", req.id);
        }
        let (removed, last) = {
            let mut inner = self.lock();
            let removed = inner.containers.remove(&req.id);
            (removed, inner.containers.is_empty())
        };
        if last {
            // The pod's VM ends with its last container.
            if let Some(slot) = &self.vm_pod {
                if let Some(pod) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    pod.stop();
                }
            }
        }
        if removed.as_ref().is_some_and(|c| c.rootfs_mounted) {
            unmount_rootfs(&bundle);
        }
        let exit = exit.unwrap_or(Exit {
            status: 137,
            at: SystemTime::now(),
        });
        let mut e = ev::TaskDelete::new();
        e.container_id = req.id.clone();
        e.pid = pid as u32;
        e.exit_status = exit.status;
        e.exited_at = MessageField::some(timestamp(exit.at));
        self.publisher.publish(Event::Delete(e));
        let mut r = api::DeleteResponse::new();
        r.pid = pid as u32;
        r.exit_status = exit.status;
        r.exited_at = MessageField::some(timestamp(exit.at));
        Ok(r)
    }

    /// Adds an exec, to be run by Start.
    pub(super) fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let spec_any = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        let spec: Process = serde_json::from_slice(&spec_any.value).map_err(|e| {
            ShimError::InvalidArgument(format!("exec {}: process spec: {e}", req.exec_id))
        })?;
        {
            let mut inner = self.lock();
            let c = inner.container_mut(&req.id)?;
            if c.init.exited().is_some() || c.init.status == Status::STOPPED {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is stopped: cannot exec",
                    req.id
                )));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {} already exists",
                    req.exec_id
                )));
            }
            let mut p = Proc::new(StdioSpec {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
        }
        let mut e = ev::TaskExecAdded::new();
        e.container_id = req.id.clone();
        e.exec_id = req.exec_id.clone();
        self.publisher.publish(Event::ExecAdded(e));
        Ok(())
    }

    pub(super) fn kill(&self, req: &api::KillRequest) -> Result<()> {
        let (pid, _, _, exit, _) = self.process_status(&req.id, &req.exec_id)?;
        if exit.is_some() {
            return Err(ShimError::NotFound(format!(
                "process {} of {} already exited",
                if req.exec_id.is_empty() {
                    "init"
                } else {
                    &req.exec_id
                },
                req.id
            )));
        }
        if req.exec_id.is_empty() {
            return self
                .backend(&req.id)?
                .kill(&req.id, req.signal as i32, req.all);
        }
        self.backend(&req.id)?
            .kill_exec(&req.id, &req.exec_id, pid, req.signal as i32)
    }

    /// The backend of a container of a `vm` class shim: in the pod's VM,
    /// booted now for the pod's first container.
    fn vm_container(
        &self,
        slot: &std::sync::Mutex<Option<Arc<crate::vm::VmPod>>>,
        req: &api::CreateTaskRequest,
        bundle: &std::path::Path,
    ) -> Result<crate::vm::VmContainer> {
        let mut pod = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*pod {
            if !p.is_running() {
                return Err(ShimError::FailedPrecondition(
                    "the pod's VM has stopped: no container can run in it".into(),
                ));
            }
            return Ok(crate::vm::VmContainer::new(Arc::clone(p), &req.id));
        }
        let options = parse_options(&req.options)?.vm.unwrap_or_default();
        let group = crate::start::group_id(bundle, &req.id);
        let booted = crate::vm::VmPod::boot(&self.namespace, &group, &req.id, bundle, &options)
            .context(|| format!("booting the VM of pod {group}"))?;
        *pod = Some(Arc::clone(&booted));
        Ok(crate::vm::VmContainer::new(booted, &req.id))
    }

    /// Pauses (`pause`) or resumes a container.
    pub(super) fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let backend = self.backend(id)?;
        if pause {
            backend.pause(id)?;
        } else {
            backend.resume(id)?;
        }
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.init.status = if pause {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
        let container_id = id.to_owned();
        self.publisher.publish(if pause {
            Event::Paused(ev::TaskPaused {
                container_id,
                ..Default::default()
            })
        } else {
            Event::Resumed(ev::TaskResumed {
                container_id,
                ..Default::default()
            })
        });
        Ok(())
    }

    /// Changes a container's resources. The runtime's refusal is an
    /// invalid argument whatever its kind (as the shim has always said).
    pub(super) fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| ShimError::InvalidArgument(format!("resources: {e}")))?;
        self.backend(&req.id)?
            .update(&req.id, &resources)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))
    }
}
