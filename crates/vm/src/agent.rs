//! The host's client of the in-guest agent (`berth.agent.v1.Agent`, served
//! by berth-agent over ttrpc), on the unix socket QEMU's virtio-serial
//! chardev listens on, or over vsock.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::agent::v1 as proto;
use prost::Message;
use tokio::net::UnixStream;
use ttrpc::proto::RequestInit;
use ttrpc::r#async::transport::Socket;

use crate::error::VmError;

pub use proto::{
    CheckResponse, CreateContainerRequest, ExecProcessRequest, MountRequest, ProcessExit,
    RunCommandRequest, RunCommandResponse, StreamData,
};

/// Cheap to clone: clones share the one channel (long polls of several
/// processes go on side by side).
#[derive(Clone)]
pub struct AgentClient {
    client: ttrpc::r#async::Client,
}

impl AgentClient {
    /// Over vsock to the guest `cid`: tried again until the agent listens
    /// or `deadline` passes (a guest without a listener resets at once).
    pub async fn connect_vsock(cid: u32, deadline: Instant) -> Result<AgentClient, VmError> {
        let address = crate::channel::AgentChannel::vsock_address(cid);
        loop {
            match ttrpc::r#async::Client::connect(&address).await {
                Ok(client) => return Ok(AgentClient { client }),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => return Err(VmError::Agent(format!("connecting to {address}: {e}"))),
            }
        }
    }

    pub async fn connect(path: &Path) -> Result<AgentClient, VmError> {
        let stream = UnixStream::connect(path).await.map_err(|e| VmError::Io {
            what: "connecting to the agent's channel",
            path: path.to_owned(),
            source: e,
        })?;
        Ok(AgentClient {
            client: ttrpc::r#async::Client::new(Socket::new(stream)),
        })
    }

    async fn call<Resp: Message + Default>(
        &self,
        method: &str,
        req: &impl Message,
        timeout: Duration,
    ) -> Result<Resp, VmError> {
        let mut creq = ttrpc::Request::init_request(
            proto::SERVICE.to_owned(),
            method.to_owned(),
            0,
            Vec::new(),
        );
        creq.set_payload(req.encode_to_vec());
        let res = tokio::time::timeout(timeout, self.client.request(creq))
            .await
            .map_err(|_| VmError::AgentTimeout {
                method: method.to_owned(),
                timeout,
            })?
            .map_err(|e| match e {
                ttrpc::Error::RpcStatus(s) => VmError::AgentStatus {
                    method: method.to_owned(),
                    code: s.code(),
                    message: s.message().to_owned(),
                },
                e => VmError::Agent(format!("{method}: {e}")),
            })?;
        Resp::decode(res.payload.as_slice())
            .map_err(|e| VmError::Agent(format!("{method}: decoding the answer: {e}")))
    }

    pub async fn check(&self, timeout: Duration) -> Result<CheckResponse, VmError> {
        self.call(proto::CHECK, &(), timeout).await
    }

    /// Runs a command in the guest's root; waits `timeout` beyond the
    /// command's own limit for the answer.
    pub async fn run_command(
        &self,
        req: &RunCommandRequest,
        timeout: Duration,
    ) -> Result<RunCommandResponse, VmError> {
        self.call(proto::RUN_COMMAND, req, timeout).await
    }

    /// Sets the guest's clock to the host's now, and its hostname unless
    /// `hostname` is empty.
    pub async fn setup_guest(&self, hostname: &str, timeout: Duration) -> Result<(), VmError> {
        let unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let req = proto::SetupGuestRequest {
            unix_nanos,
            hostname: hostname.to_owned(),
        };
        self.call::<()>(proto::SETUP_GUEST, &req, timeout).await
    }

    /// Gives the guest's interface the pod interface's settings.
    pub async fn configure_network(
        &self,
        info: &crate::network::InterfaceInfo,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let req = proto::InterfaceConfig {
            mac: info.mac.clone(),
            addresses: info.addresses.clone(),
            gateway: info.gateway.clone().unwrap_or_default(),
            gateway6: info.gateway6.clone().unwrap_or_default(),
            mtu: info.mtu,
        };
        self.call::<()>(proto::CONFIGURE_NETWORK, &req, timeout)
            .await
    }

    pub async fn mount(&self, req: &MountRequest, timeout: Duration) -> Result<(), VmError> {
        self.call::<()>(proto::MOUNT, req, timeout).await
    }

    /// Creates a container; its init's PID in the guest.
    pub async fn create_container(
        &self,
        req: &CreateContainerRequest,
        timeout: Duration,
    ) -> Result<u32, VmError> {
        let started: proto::ProcessStarted =
            self.call(proto::CREATE_CONTAINER, req, timeout).await?;
        Ok(started.pid)
    }

    pub async fn start_container(&self, id: &str, timeout: Duration) -> Result<(), VmError> {
        let req = proto::ContainerRef { id: id.to_owned() };
        self.call::<()>(proto::START_CONTAINER, &req, timeout).await
    }

    /// Starts an extra process in a container; its PID in the guest.
    pub async fn exec_process(
        &self,
        req: &ExecProcessRequest,
        timeout: Duration,
    ) -> Result<u32, VmError> {
        let started: proto::ProcessStarted = self.call(proto::EXEC_PROCESS, req, timeout).await?;
        Ok(started.pid)
    }

    pub async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let req = proto::SignalProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
        };
        self.call::<()>(proto::SIGNAL_PROCESS, &req, timeout).await
    }

    fn process_ref(id: &str, exec_id: &str) -> proto::ProcessRef {
        proto::ProcessRef {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        }
    }

    /// Waits (up to `timeout`) for a process's exit.
    pub async fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<ProcessExit, VmError> {
        self.call(
            proto::WAIT_PROCESS,
            &Self::process_ref(id, exec_id),
            timeout,
        )
        .await
    }

    /// The next output of a process's stdout; `eof` once it ended.
    pub async fn read_stdout(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<StreamData, VmError> {
        self.call(proto::READ_STDOUT, &Self::process_ref(id, exec_id), timeout)
            .await
    }

    pub async fn read_stderr(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<StreamData, VmError> {
        self.call(proto::READ_STDERR, &Self::process_ref(id, exec_id), timeout)
            .await
    }

    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), VmError> {
        let req = proto::StdinData {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            data: data.to_vec(),
        };
        self.call::<()>(proto::WRITE_STDIN, &req, timeout).await
    }

    pub async fn close_stdin(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<(), VmError> {
        self.call::<()>(proto::CLOSE_STDIN, &Self::process_ref(id, exec_id), timeout)
            .await
    }

    /// Sets the size of a process's terminal.
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let req = proto::ResizePtyRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            width,
            height,
        };
        self.call::<()>(proto::RESIZE_PTY, &req, timeout).await
    }

    pub async fn pause_container(&self, id: &str, timeout: Duration) -> Result<(), VmError> {
        let req = proto::ContainerRef { id: id.to_owned() };
        self.call::<()>(proto::PAUSE_CONTAINER, &req, timeout).await
    }

    pub async fn resume_container(&self, id: &str, timeout: Duration) -> Result<(), VmError> {
        let req = proto::ContainerRef { id: id.to_owned() };
        self.call::<()>(proto::RESUME_CONTAINER, &req, timeout)
            .await
    }

    /// New limits: `resources` is an OCI LinuxResources object in JSON.
    pub async fn update_container(
        &self,
        id: &str,
        resources: &[u8],
        timeout: Duration,
    ) -> Result<(), VmError> {
        let req = proto::UpdateContainerRequest {
            id: id.to_owned(),
            resources: resources.to_vec(),
        };
        self.call::<()>(proto::UPDATE_CONTAINER, &req, timeout)
            .await
    }

    /// The container's cgroup statistics: runc's stats event `data` (JSON).
    pub async fn stats_container(&self, id: &str, timeout: Duration) -> Result<Vec<u8>, VmError> {
        let req = proto::ContainerRef { id: id.to_owned() };
        let stats: proto::ContainerStats = self.call(proto::STATS_CONTAINER, &req, timeout).await?;
        Ok(stats.stats)
    }

    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), VmError> {
        let req = proto::ContainerRef { id: id.to_owned() };
        self.call::<()>(proto::REMOVE_CONTAINER, &req, timeout)
            .await
    }

    pub async fn shutdown(&self, timeout: Duration) -> Result<(), VmError> {
        self.call::<()>(proto::SHUTDOWN, &(), timeout).await
    }
}
