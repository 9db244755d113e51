//! Exec, Attach and PortForward for the kubelet: the single-use URLs of
//! the streaming server (berth-stream), and what stands behind them here:
//! an exec process in the container's shim, its stdio through FIFOs, its
//! terminal resized through ResizePty; an attach session of the shim on
//! the container's own stdio (the shim relays the output to every session
//! besides the log); a TCP connection made from inside the pod's network
//! namespace.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_stream::{AttachRequest, Backend, ExecRequest, StreamIo};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::service::Cri;
use crate::shims::SECOND;
use crate::store::PodState;
use crate::util;

/// How long a port-forward connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CriBackend {
    pub cri: Weak<Cri>,
}

impl CriBackend {
    fn cri(&self) -> std::result::Result<Arc<Cri>, String> {
        self.cri
            .upgrade()
            .ok_or_else(|| "berthd is shutting down".to_owned())
    }
}

impl Cri {
    /// An interactive exec: the command runs in the container with the
    /// client's stdio until it exits; its exit code.
    pub async fn exec_streaming(&self, req: &ExecRequest, io: StreamIo) -> Result<i32> {
        let mut t = self.exec_target(&req.container_id, &req.cmd, req.tty)?;
        if req.tty
            && !t.process["env"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|v| v.as_str().is_some_and(|v| v.starts_with("TERM=")))
            })
        {
            if let Some(env) = t.process["env"].as_array_mut() {
                env.push(json!("TERM=xterm"));
            }
        }
        let result = self
            .exec_streaming_inner(
                &t.address,
                &t.id,
                &t.exec_id,
                &t.dir,
                t.process.clone(),
                req.tty,
                io,
            )
            .await;
        self.end_exec(&t).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_streaming_inner(
        &self,
        address: &str,
        id: &str,
        exec_id: &str,
        dir: &std::path::Path,
        process: serde_json::Value,
        tty: bool,
        mut io: StreamIo,
    ) -> Result<i32> {
        use tokio::net::unix::pipe;
        let mut exec = api::ExecProcessRequest::new();
        exec.id = id.to_owned();
        exec.exec_id = exec_id.to_owned();
        exec.terminal = tty;
        let mut stdin_sender = None;
        if io.stdin.is_some() {
            let p = dir.join("stdin");
            util::mkfifo(&p)?;
            // Read-write: opening a FIFO's write end needs a reader.
            stdin_sender = Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&p)
                    .map_err(|e| Error::internal(p.display(), e))?,
            );
            exec.stdin = p.display().to_string();
        }
        let mut outputs = Vec::new();
        let mut holders = Vec::new();
        let wanted = [
            (io.stdout.take(), "stdout"),
            (if tty { None } else { io.stderr.take() }, "stderr"),
        ];
        for (sink, name) in wanted {
            let Some(sink) = sink else { continue };
            let p: PathBuf = dir.join(name);
            util::mkfifo(&p)?;
            let r = pipe::OpenOptions::new()
                .open_receiver(&p)
                .map_err(|e| Error::internal(p.display(), e))?;
            // Held until the shim has its write end: no early EOF.
            holders.push(
                pipe::OpenOptions::new()
                    .open_sender(&p)
                    .map_err(|e| Error::internal(p.display(), e))?,
            );
            if name == "stdout" {
                exec.stdout = p.display().to_string();
            } else {
                exec.stderr = p.display().to_string();
            }
            outputs.push((r, sink));
        }
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&process).unwrap_or_default();
        exec.spec = containerd_shim_protos::protobuf::MessageField::some(any);
        let _: Empty = self.shims.exec(address, &exec, 30 * SECOND).await?;
        let mut start = api::StartRequest::new();
        start.id = id.to_owned();
        start.exec_id = exec_id.to_owned();
        let _: api::StartResponse = self.shims.start_task(address, &start, 30 * SECOND).await?;
        drop(holders);
        let mut copies = Vec::new();
        for (mut r, mut sink) in outputs {
            copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut r, &mut sink).await;
                let _ = sink.shutdown().await;
            }));
        }
        let stdin_task = match (io.stdin.take(), stdin_sender) {
            (Some(mut client), Some(mut fifo)) => {
                let shims = Arc::clone(&self.shims);
                let (address, id, exec_id) =
                    (address.to_owned(), id.to_owned(), exec_id.to_owned());
                Some(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client, &mut fifo).await;
                    drop(fifo);
                    // The client closed stdin: the process sees EOF.
                    let mut close = api::CloseIORequest::new();
                    close.id = id;
                    close.exec_id = exec_id;
                    close.stdin = true;
                    let _ = shims.close_io(&address, &close, 10 * SECOND).await;
                }))
            }
            _ => None,
        };
        let resize_task = io.resize.take().map(|mut sizes| {
            let shims = Arc::clone(&self.shims);
            let (address, id, exec_id) = (address.to_owned(), id.to_owned(), exec_id.to_owned());
            tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let mut r = api::ResizePtyRequest::new();
                    r.id = id.clone();
                    r.exec_id = exec_id.clone();
                    r.width = size.width.into();
                    r.height = size.height.into();
                    let _ = shims.resize_pty(&address, &r, 10 * SECOND).await;
                }
            })
        });
        let mut wait = api::WaitRequest::new();
        wait.id = id.to_owned();
        wait.exec_id = exec_id.to_owned();
        let waited: Result<api::WaitResponse> = self.shims.wait(address, &wait, 0).await;
        for task in [stdin_task, resize_task].into_iter().flatten() {
            task.abort();
        }
        // What the process wrote last reaches the client; a background
        // child holding the output open is cut off after a grace time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for mut c in copies {
            if tokio::time::timeout_at(deadline, &mut c).await.is_err() {
                c.abort();
            }
        }
        Ok(waited?.exit_status as i32)
    }

    /// An attach session: the client receives the container's output from
    /// now on and feeds its stdin (if it was created with stdin open),
    /// until the container exits or the client goes away.
    pub async fn attach_streaming(&self, req: &AttachRequest, mut io: StreamIo) -> Result<()> {
        use tokio::net::unix::pipe;
        let c = self.running_container(&req.container_id)?;
        let address = self.shim_address_of(&c)?;
        let tty = c.config.tty;
        let session = util::new_id()[..32].to_owned();
        let dir = self.config.state.join("attach").join(&session);
        util::create_private_dir(&dir)?;
        let mut shim_req = berth_shim_client::AttachRequest {
            id: c.id.clone(),
            session: session.clone(),
            ..Default::default()
        };
        // The container's stdin, when it has one (as containerd, a client's
        // stdin is ignored otherwise).
        let mut stdin_fifo = None;
        if io.stdin.is_some() && c.config.stdin {
            let p = dir.join("stdin");
            util::mkfifo(&p)?;
            // Read-write: no reader yet; the shim's end sees EOF once this
            // closes.
            stdin_fifo = Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&p)
                    .map_err(|e| Error::internal(p.display(), e))?,
            );
            shim_req.stdin = p.display().to_string();
        }
        let mut outputs = Vec::new();
        let wanted = [
            (io.stdout.take(), "stdout"),
            (if tty { None } else { io.stderr.take() }, "stderr"),
        ];
        for (sink, name) in wanted {
            let Some(sink) = sink else { continue };
            let p: PathBuf = dir.join(name);
            util::mkfifo(&p)?;
            let r = pipe::OpenOptions::new()
                .open_receiver(&p)
                .map_err(|e| Error::internal(p.display(), e))?;
            if name == "stdout" {
                shim_req.stdout = p.display().to_string();
            } else {
                shim_req.stderr = p.display().to_string();
            }
            outputs.push((r, sink));
        }
        let client = self.shims.client(&address).await?;
        let attached = client.attach(&shim_req).await.map_err(|e| match e {
            ttrpc::Error::RpcStatus(s)
                if matches!(
                    s.code(),
                    ttrpc::Code::NOT_FOUND | ttrpc::Code::UNIMPLEMENTED
                ) && s.message().contains("Attach") =>
            {
                Error::FailedPrecondition(format!(
                    "container {}: its shim was started by a berthd without attach; \
                     it can be attached once the pod is recreated",
                    c.id
                ))
            }
            e => Error::from_ttrpc(format_args!("attach to {}", c.id), e),
        });
        if let Err(e) = attached {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        // Every FIFO is open on both sides now: they can go.
        let _ = std::fs::remove_dir_all(&dir);

        let mut copies = tokio::task::JoinSet::new();
        let any_output = !outputs.is_empty();
        for (mut r, mut sink) in outputs {
            copies.spawn(async move {
                let _ = tokio::io::copy(&mut r, &mut sink).await;
                let _ = sink.shutdown().await;
            });
        }
        let stdin_task = match (io.stdin.take(), stdin_fifo) {
            (Some(mut client_stdin), Some(mut fifo)) => {
                let shims = Arc::clone(&self.shims);
                let (address, id, once) = (address.clone(), c.id.clone(), c.config.stdin_once);
                Some(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_stdin, &mut fifo).await;
                    drop(fifo);
                    // stdin_once: the first session's end of input is the
                    // container's.
                    if once {
                        let mut close = api::CloseIORequest::new();
                        close.id = id;
                        close.stdin = true;
                        let _ = shims.close_io(&address, &close, 10 * SECOND).await;
                    }
                }))
            }
            _ => None,
        };
        let resize_task = io.resize.take().filter(|_| tty).map(|mut sizes| {
            let shims = Arc::clone(&self.shims);
            let (address, id) = (address.clone(), c.id.clone());
            tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let mut r = api::ResizePtyRequest::new();
                    r.id = id.clone();
                    r.width = size.width.into();
                    r.height = size.height.into();
                    let _ = shims.resize_pty(&address, &r, 10 * SECOND).await;
                }
            })
        });
        let mut wait = api::WaitRequest::new();
        wait.id = c.id.clone();
        let exited = self.shims.wait(&address, &wait, 0);
        tokio::pin!(exited);
        // The session ends when the container exits, when an output stream
        // ends (the client or the container closed it), or, with no output
        // asked for, when the client's input ends.
        tokio::select! {
            _ = &mut exited => {}
            _ = copies.join_next(), if any_output => {}
            _ = async {
                match &stdin_task {
                    Some(t) => while !t.is_finished() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    },
                    None => std::future::pending().await,
                }
            }, if !any_output => {}
        }
        if let Some(t) = resize_task {
            t.abort();
        }
        if let Some(t) = &stdin_task {
            t.abort();
        }
        let _ = client.detach(&c.id, &session).await;
        // What the container wrote last reaches the client.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, copies.join_next()).await {}
        copies.abort_all();
        Ok(())
    }

    /// A TCP connection to `port` on the pod's loopback, opened from a
    /// thread inside the pod's network namespace.
    pub async fn port_forward_connect(
        &self,
        pod_id: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream> {
        // Only what the connection needs, not a copy of the pod's record:
        // this is on the path of the connection's first byte.
        let target = self
            .store
            .with_pod(pod_id, |pod, _| {
                if pod.state != PodState::Ready {
                    return Err(Error::FailedPrecondition(format!(
                        "pod sandbox {pod_id} is not ready"
                    )));
                }
                if self.runs_in_vm(pod) {
                    return vm_pod_address(pod, port).map(PodPort::Vm);
                }
                Ok(match &pod.namespaces.net {
                    Some(netns) => PodPort::Netns(netns.clone()),
                    // A host-network pod: the host's loopback is the pod's.
                    None => PodPort::Host,
                })
            })
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {pod_id} not found")))??;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let fd = match target {
            PodPort::Vm(addr) => {
                return connect_in_time(tokio::net::TcpStream::connect(addr), port).await
            }
            PodPort::Host => crate::netns::tcp_socket()
                .map_err(|e| Error::Internal(format!("a socket for port {port}: {e}")))?,
            PodPort::Netns(netns) => {
                let ns = std::fs::File::open(&netns)
                    .map_err(|e| Error::Internal(format!("opening {}: {e}", netns.display())))?;
                crate::netns::in_network_namespace(
                    self.host_netns.as_deref(),
                    ns,
                    crate::netns::tcp_socket,
                )
                .and_then(|made| made)
                .map_err(|e| {
                    Error::Internal(format!("a socket in the pod's network namespace: {e}"))
                })?
            }
        };
        connect_in_time(crate::netns::connect_tcp(fd, loopback), port).await
    }
}

/// Where a port-forward reaches a pod's port.
enum PodPort {
    /// The host's loopback: a host-network pod's.
    Host,
    /// The loopback of this network namespace (its pinned path).
    Netns(std::path::PathBuf),
    /// A VM pod's IP, from the host.
    Vm(std::net::SocketAddr),
}

#[async_trait::async_trait]
impl Backend for CriBackend {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> std::result::Result<i32, String> {
        self.cri()?
            .exec_streaming(req, io)
            .await
            .map_err(|e| e.to_string())
    }

    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> std::result::Result<(), String> {
        self.cri()?
            .attach_streaming(req, io)
            .await
            .map_err(|e| e.to_string())
    }

    async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> std::result::Result<tokio::net::TcpStream, String> {
        self.cri()?
            .port_forward_connect(pod_id, port)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Cri {
    fn stream_server(&self) -> Result<&Arc<berth_stream::Server>> {
        self.stream
            .get()
            .ok_or_else(|| Error::Unimplemented("the streaming server is not running".into()))
    }

    /// Exec: checks the request and the container, then a single-use URL.
    pub fn exec_url(&self, r: k8s_cri::v1::ExecRequest) -> Result<String> {
        let id = self.with_running_container(&r.container_id, |c| c.id.clone())?;
        if r.cmd.is_empty() {
            return Err(Error::InvalidArgument("Exec: cmd is empty".into()));
        }
        check_stdio(r.tty, r.stdin, r.stdout, r.stderr)?;
        self.stream_server()?
            .exec_url(ExecRequest {
                container_id: id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(|e| Error::ResourceExhausted(e.to_string()))
    }

    /// Attach: checks the request and the container, then a single-use URL.
    pub fn attach_url(&self, r: k8s_cri::v1::AttachRequest) -> Result<String> {
        let (container_id, tty) =
            self.with_running_container(&r.container_id, |c| (c.id.clone(), c.config.tty))?;
        check_stdio(r.tty, r.stdin, r.stdout, r.stderr)?;
        self.stream_server()?
            .attach_url(AttachRequest {
                container_id,
                // The container's terminal decides, whatever the client said.
                tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr && !tty,
            })
            .map_err(|e| Error::ResourceExhausted(e.to_string()))
    }

    /// PortForward: checks the pod, then a single-use URL.
    pub fn port_forward_url(&self, r: k8s_cri::v1::PortForwardRequest) -> Result<String> {
        let id = self.store.resolve_pod(&r.pod_sandbox_id)?;
        self.store
            .with_pod(&id, |pod, _| {
                if pod.state != PodState::Ready {
                    return Err(Error::FailedPrecondition(format!(
                        "pod sandbox {id} is not ready"
                    )));
                }
                if self.runs_in_vm(pod) && pod.ips.is_empty() {
                    // Its listeners are in the guest, out of reach of the
                    // pod's network namespace's loopback: only its IP
                    // leads there.
                    return Err(Error::Unimplemented(format!(
                        "pod sandbox {id} runs in a VM and has no pod IP: port-forward reaches VM pods through their IP"
                    )));
                }
                Ok(())
            })
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id} not found")))??;
        let ports =
            r.port
                .iter()
                .map(|p| {
                    u16::try_from(*p).ok().filter(|p| *p > 0).ok_or_else(|| {
                        Error::InvalidArgument(format!("port {p} is not a TCP port"))
                    })
                })
                .collect::<Result<Vec<u16>>>()?;
        self.stream_server()?
            .port_forward_url(berth_stream::PortForwardRequest { pod_id: id, ports })
            .map_err(|e| Error::ResourceExhausted(e.to_string()))
    }
}

/// A connection to a VM pod's port: to its IP, from the host (the pod's
/// veth carries it to the guest's interface); the guest's loopback is out
/// of reach, as it is for Kata's pods.
fn vm_pod_address(pod: &crate::store::PodRecord, port: u16) -> Result<std::net::SocketAddr> {
    let ip: std::net::IpAddr = pod
        .ips
        .first()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "pod sandbox {} runs in a VM and has no pod IP",
                pod.id
            ))
        })?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// A connection to the pod's `port` within [`CONNECT_TIMEOUT`], sending
/// the client's small writes at once, as its own do.
async fn connect_in_time(
    connecting: impl std::future::Future<Output = std::io::Result<tokio::net::TcpStream>>,
    port: u16,
) -> Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            Error::FailedPrecondition(format!("connecting to port {port} in the pod: timed out"))
        })?
        .map_err(|e| {
            Error::FailedPrecondition(format!("connecting to port {port} in the pod: {e}"))
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The stdio combinations CRI allows.
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if !(stdin || stdout || stderr) {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout or stderr must be requested".into(),
        ));
    }
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "with a tty, stderr is part of stdout: stderr must be false".into(),
        ));
    }
    Ok(())
}
