//! `berth.agent.v1.Agent`: the methods the host calls, over ttrpc with the
//! prost messages of berth_api::agent::v1.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_api::agent::v1 as proto;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use ttrpc::proto::ResponseInit;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

use crate::containers::Containers;
use crate::reaper::{Exit, Reaper};

/// Output kept per stream when the request names no limit.
const DEFAULT_OUTPUT_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Failed(String),
}

impl AgentError {
    fn status(&self) -> ttrpc::Status {
        let code = match self {
            AgentError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            AgentError::Failed(_) => ttrpc::Code::UNKNOWN,
        };
        ttrpc::get_status(code, self.to_string())
    }
}

pub struct Agent {
    reaper: Reaper,
    containers: Containers,
    modules: Vec<String>,
    pid1: bool,
}

impl Agent {
    pub fn new(
        reaper: Reaper,
        berth: std::path::PathBuf,
        modules: Vec<String>,
        pid1: bool,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            containers: Containers::new(reaper.clone(), berth),
            reaper,
            modules,
            pid1,
        })
    }

    fn check(&self) -> proto::CheckResponse {
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        proto::CheckResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            uptime_seconds: uptime,
            modules: self.modules.clone(),
            unix_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
        }
    }

    async fn run_command(
        &self,
        r: proto::RunCommandRequest,
    ) -> Result<proto::RunCommandResponse, AgentError> {
        let Some((program, args)) = r.args.split_first() else {
            return Err(AgentError::InvalidArgument(
                "RunCommand: args is empty".into(),
            ));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !r.env.is_empty() {
            command.env_clear();
            for pair in &r.env {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    AgentError::InvalidArgument(format!(
                        "RunCommand: env entry {pair:?} is not KEY=VALUE"
                    ))
                })?;
                command.env(k, v);
            }
        }
        let (mut child, exited) = self
            .reaper
            .spawn(&mut command)
            .map_err(|e| AgentError::Failed(format!("starting {program:?}: {e}")))?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            return Err(AgentError::Failed("the child's pipes are missing".into()));
        };
        let limit = match r.output_limit {
            0 => DEFAULT_OUTPUT_LIMIT,
            n => n as usize,
        };
        let async_pipe = |fd: OwnedFd| pipe::Receiver::from_owned_fd(fd);
        let stdout = async_pipe(stdout.into()).map_err(|e| AgentError::Failed(e.to_string()))?;
        let stderr = async_pipe(stderr.into()).map_err(|e| AgentError::Failed(e.to_string()))?;
        let mut stdin = pipe::Sender::from_owned_fd(OwnedFd::from(stdin))
            .map_err(|e| AgentError::Failed(e.to_string()))?;
        let input = r.stdin;
        let feed = async move {
            // A command that does not read its input closes the pipe early.
            let _ = stdin.write_all(&input).await;
        };
        let pid = child.id();
        let wait = async {
            let limit = (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms));
            match limit {
                None => (exited.await, false),
                Some(limit) => {
                    let mut exited = exited;
                    match tokio::time::timeout(limit, &mut exited).await {
                        Ok(exit) => (exit, false),
                        Err(_) => {
                            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                                let _ = rustix::process::kill_process(
                                    pid,
                                    rustix::process::Signal::KILL,
                                );
                            }
                            (exited.await, true)
                        }
                    }
                }
            }
        };
        let (((exit, timed_out), out, err), ()) = tokio::join!(
            async { tokio::join!(wait, collect(stdout, limit), collect(stderr, limit)) },
            feed
        );
        let exit = exit.map_err(|_| AgentError::Failed("the reaper stopped".into()))?;
        let Exit { code, signal } = exit;
        Ok(proto::RunCommandResponse {
            exit_code: code,
            signal,
            stdout: out,
            stderr: err,
            timed_out,
        })
    }

    fn setup_guest(&self, r: proto::SetupGuestRequest) -> Result<(), AgentError> {
        if r.unix_nanos <= 0 {
            return Err(AgentError::InvalidArgument(
                "SetupGuest: unix_nanos must be positive".into(),
            ));
        }
        if !r.hostname.is_empty() {
            if r.hostname.len() > 64
                || !r
                    .hostname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(AgentError::InvalidArgument(format!(
                    "SetupGuest: hostname {:?} is not a host name",
                    r.hostname
                )));
            }
            if self.pid1 {
                rustix::system::sethostname(r.hostname.as_bytes()).map_err(|e| {
                    AgentError::Failed(format!("SetupGuest: setting the hostname: {e}"))
                })?;
            }
        }
        if self.pid1 {
            let now = rustix::time::Timespec {
                tv_sec: r.unix_nanos / 1_000_000_000,
                tv_nsec: (r.unix_nanos % 1_000_000_000) as _,
            };
            rustix::time::clock_settime(rustix::time::ClockId::Realtime, now)
                .map_err(|e| AgentError::Failed(format!("SetupGuest: setting the clock: {e}")))?;
        }
        Ok(())
    }

    fn mount(&self, r: proto::MountRequest) -> Result<(), AgentError> {
        const ALLOWED: [&str; 5] = ["virtiofs", "9p", "overlay", "tmpfs", "ext4"];
        if !ALLOWED.contains(&r.fstype.as_str()) {
            return Err(AgentError::InvalidArgument(format!(
                "Mount: file system type {:?} is not one of {ALLOWED:?}",
                r.fstype
            )));
        }
        let target = std::path::Path::new(&r.target);
        let plain = target.is_absolute()
            && target.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !plain || target == std::path::Path::new("/") {
            return Err(AgentError::InvalidArgument(format!(
                "Mount: target {:?} must be an absolute path below / without \"..\"",
                r.target
            )));
        }
        std::fs::create_dir_all(target)
            .map_err(|e| AgentError::Failed(format!("Mount: creating {}: {e}", r.target)))?;
        // Nothing is stacked: a second mount would hide what the first holds
        // (a pod's memory volume asked for again by its next container).
        if is_mount_point(target)
            .map_err(|e| AgentError::Failed(format!("Mount: {}: {e}", r.target)))?
        {
            return Err(AgentError::AlreadyExists(format!(
                "Mount: {} is a mount point already",
                r.target
            )));
        }
        let mut flags = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV;
        if r.read_only {
            flags |= rustix::mount::MountFlags::RDONLY;
        }
        let data = std::ffi::CString::new(r.options.join(","))
            .map_err(|_| AgentError::InvalidArgument("Mount: an option holds a NUL byte".into()))?;
        rustix::mount::mount(
            r.source.as_str(),
            target,
            r.fstype.as_str(),
            flags,
            Some(data.as_c_str()),
        )
        .map_err(|e| {
            AgentError::Failed(format!(
                "Mount: {} {:?} on {}: {e}",
                r.fstype, r.source, r.target
            ))
        })
    }

    fn shutdown(&self) {
        if self.pid1 {
            // After the reply is on its way.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                crate::init::power_off();
            });
        }
    }
}

/// Whether `path` is the root of a mount: another device than its
/// parent's, or (a bind of the same file system) listed in mountinfo.
fn is_mount_point(path: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(path);
    if std::fs::metadata(path)?.dev() != std::fs::metadata(parent)?.dev() {
        return Ok(true);
    }
    let wanted = path.to_string_lossy();
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*wanted)))
}

/// Reads `from` to its end, keeping the first `limit` bytes.
async fn collect(mut from: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return kept,
        }
    }
}

fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, AgentError> {
    M::decode(payload)
        .map_err(|e| AgentError::InvalidArgument(format!("decoding the request: {e}")))
}

type Method = fn(
    Arc<Agent>,
    Vec<u8>,
) -> futures_util::future::BoxFuture<'static, Result<Vec<u8>, AgentError>>;

struct Handler {
    agent: Arc<Agent>,
    call: Method,
}

#[async_trait]
impl MethodHandler for Handler {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        Ok(
            match (self.call)(Arc::clone(&self.agent), req.payload).await {
                Ok(payload) => {
                    let mut res = ttrpc::Response::init_status(ttrpc::get_status(
                        ttrpc::Code::OK,
                        String::new(),
                    ));
                    res.set_payload(payload);
                    res
                }
                Err(e) => ttrpc::Response::init_status(e.status()),
            },
        )
    }
}

pub fn services(agent: Arc<Agent>) -> HashMap<String, Service> {
    use futures_util::FutureExt;
    let calls: [(&str, Method); 21] = [
        (proto::CHECK, |a, _| {
            async move { Ok(a.check().encode_to_vec()) }.boxed()
        }),
        (proto::RUN_COMMAND, |a, p| {
            async move {
                let r = decode(&p)?;
                Ok(a.run_command(r).await?.encode_to_vec())
            }
            .boxed()
        }),
        (proto::SETUP_GUEST, |a, p| {
            async move {
                a.setup_guest(decode(&p)?)?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::CONFIGURE_NETWORK, |_, p| {
            async move {
                crate::netconf::configure(&decode(&p)?).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::MOUNT, |a, p| {
            async move {
                a.mount(decode(&p)?)?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::CREATE_CONTAINER, |a, p| {
            async move {
                let r: proto::CreateContainerRequest = decode(&p)?;
                let pid = a
                    .containers
                    .create(&r.id, &r.spec, &r.rootfs, r.stdin, r.rootfs_writable)
                    .await?;
                Ok(proto::ProcessStarted { pid }.encode_to_vec())
            }
            .boxed()
        }),
        (proto::START_CONTAINER, |a, p| {
            async move {
                let r: proto::ContainerRef = decode(&p)?;
                a.containers.start(&r.id).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::EXEC_PROCESS, |a, p| {
            async move {
                let r: proto::ExecProcessRequest = decode(&p)?;
                let pid = a
                    .containers
                    .exec(&r.container_id, &r.exec_id, &r.process, r.stdin)
                    .await?;
                Ok(proto::ProcessStarted { pid }.encode_to_vec())
            }
            .boxed()
        }),
        (proto::SIGNAL_PROCESS, |a, p| {
            async move {
                let r: proto::SignalProcessRequest = decode(&p)?;
                a.containers
                    .signal(&r.container_id, &r.exec_id, r.signal)
                    .await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::WAIT_PROCESS, |a, p| {
            async move {
                let r: proto::ProcessRef = decode(&p)?;
                let process = a.containers.process(&r.container_id, &r.exec_id)?;
                let exit = process.wait().await;
                Ok(proto::ProcessExit {
                    exit_code: exit.code,
                    signal: exit.signal,
                    oom_killed: process.oom_killed(),
                }
                .encode_to_vec())
            }
            .boxed()
        }),
        (proto::READ_STDOUT, |a, p| {
            async move {
                let r: proto::ProcessRef = decode(&p)?;
                let process = a.containers.process(&r.container_id, &r.exec_id)?;
                let (data, eof) = process.stdout.read().await;
                Ok(proto::StreamData { data, eof }.encode_to_vec())
            }
            .boxed()
        }),
        (proto::READ_STDERR, |a, p| {
            async move {
                let r: proto::ProcessRef = decode(&p)?;
                let process = a.containers.process(&r.container_id, &r.exec_id)?;
                let (data, eof) = process.stderr.read().await;
                Ok(proto::StreamData { data, eof }.encode_to_vec())
            }
            .boxed()
        }),
        (proto::WRITE_STDIN, |a, p| {
            async move {
                let r: proto::StdinData = decode(&p)?;
                let process = a.containers.process(&r.container_id, &r.exec_id)?;
                process.write_stdin(&r.data).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::CLOSE_STDIN, |a, p| {
            async move {
                let r: proto::ProcessRef = decode(&p)?;
                a.containers
                    .process(&r.container_id, &r.exec_id)?
                    .close_stdin()
                    .await;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::RESIZE_PTY, |a, p| {
            async move {
                let r: proto::ResizePtyRequest = decode(&p)?;
                let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
                a.containers
                    .process(&r.container_id, &r.exec_id)?
                    .resize(clamp(r.width), clamp(r.height))?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::PAUSE_CONTAINER, |a, p| {
            async move {
                let r: proto::ContainerRef = decode(&p)?;
                a.containers.pause(&r.id).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::RESUME_CONTAINER, |a, p| {
            async move {
                let r: proto::ContainerRef = decode(&p)?;
                a.containers.resume(&r.id).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::UPDATE_CONTAINER, |a, p| {
            async move {
                let r: proto::UpdateContainerRequest = decode(&p)?;
                a.containers.update(&r.id, &r.resources).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::STATS_CONTAINER, |a, p| {
            async move {
                let r: proto::ContainerRef = decode(&p)?;
                let stats = a.containers.stats(&r.id).await?;
                Ok(proto::ContainerStats { stats }.encode_to_vec())
            }
            .boxed()
        }),
        (proto::REMOVE_CONTAINER, |a, p| {
            async move {
                let r: proto::ContainerRef = decode(&p)?;
                a.containers.remove(&r.id).await?;
                Ok(Vec::new())
            }
            .boxed()
        }),
        (proto::SHUTDOWN, |a, _| {
            async move {
                a.shutdown();
                Ok(Vec::new())
            }
            .boxed()
        }),
    ];
    let methods = calls
        .into_iter()
        .map(|(name, call)| {
            let handler: Box<dyn MethodHandler + Send + Sync> = Box::new(Handler {
                agent: Arc::clone(&agent),
                call,
            });
            (name.to_owned(), handler)
        })
        .collect();
    HashMap::from([(
        proto::SERVICE.to_owned(),
        Service {
            methods,
            streams: HashMap::new(),
        },
    )])
}
