//! The QEMU `microvm` driver: one QEMU process per VM, started with the
//! guest kernel and initramfs, its devices on virtio-mmio, controlled over
//! QMP; the agent's channel is a virtio-serial port whose host end is a
//! unix socket QEMU listens on; a directory of the host is shared with the
//! guest over virtio-fs ([`SharedDir`]).

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::agent::AgentClient;
use crate::channel::AgentChannel;
use crate::error::VmError;
use crate::network::{self, InterfaceInfo, PodNetwork};
use crate::process::{tail, Process};
use crate::qmp::Qmp;
use crate::virtiofs::{SharedDir, Transport};

/// Where Debian's qemu-system-common puts QEMU's virtiofsd.
pub const DEFAULT_VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// How the guest's CPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (VMX/SVM through /dev/kvm).
    Kvm,
    /// QEMU's emulator: slow, but everywhere.
    Tcg,
}

impl Accel {
    /// KVM when /dev/kvm is usable and backed by real hardware
    /// virtualisation; TCG otherwise, with the reason.
    pub fn detect() -> (Accel, &'static str) {
        if File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return (Accel::Tcg, "/dev/kvm cannot be opened");
        }
        // kvm_pvm runs guests by paravirtualised paging: stock guest
        // kernels crawl under it.
        if Path::new("/sys/module/kvm_pvm").exists() {
            return (
                Accel::Tcg,
                "/dev/kvm is kvm_pvm (no hardware virtualisation)",
            );
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hardware = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if !hardware {
            return (Accel::Tcg, "the CPU has no vmx or svm flag");
        }
        (Accel::Kvm, "/dev/kvm with hardware virtualisation")
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Names the VM (QEMU's -name, log lines).
    pub id: String,
    /// A directory of this VM's own, created now (0700): QMP and agent
    /// sockets, the console log. Removed when the VM ends.
    pub dir: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// An ELF kernel with a PVH entry point (scripts/build-guest).
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Appended to the kernel command line.
    pub kernel_args: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Detected when `None`.
    pub accel: Option<Accel>,
    /// From QEMU's start to the agent's first answer.
    pub boot_timeout: Duration,
    /// How a directory is shared with the guest ([`Vm::shared`]); none
    /// without.
    pub share: Option<Transport>,
    /// The pod's network to carry into the guest; loopback only without.
    pub network: Option<PodNetwork>,
    /// The channel to the agent; chosen for the host when None
    /// ([`AgentChannel::choose`]: vsock under KVM with vhost-vsock).
    pub channel: Option<AgentChannel>,
    /// The network namespace QEMU is born in when `network` is None (a
    /// pod without interfaces still has its namespace: whoever looks at
    /// the pod's reported pid, QEMU's, finds the pod's network there).
    pub netns: Option<PathBuf>,
    /// Block devices, in order: the guest sees them as /dev/vda, vdb, ...
    /// (microvm has no hotplug: disks are given at boot).
    pub disks: Vec<Disk>,
    /// Under TCG: the translation cache's size, MiB (QEMU's default grows
    /// to ~64 MiB of each VM's host memory; 16 MiB costs some retranslation
    /// time). None: QEMU's default. Unused under KVM.
    pub tcg_cache_mib: Option<u32>,
}

/// A raw image file given to the guest as a virtio block device.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

impl VmConfig {
    pub fn new(id: &str, dir: PathBuf, kernel: PathBuf, initramfs: PathBuf) -> VmConfig {
        VmConfig {
            id: id.to_owned(),
            dir,
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel,
            initramfs,
            kernel_args: Vec::new(),
            vcpus: 1,
            memory_mib: 256,
            accel: None,
            boot_timeout: Duration::from_secs(30),
            // virtio-fs where QEMU's virtiofsd is installed, 9p otherwise.
            share: Some(if Path::new(DEFAULT_VIRTIOFSD).is_file() {
                Transport::VirtioFs {
                    virtiofsd: PathBuf::from(DEFAULT_VIRTIOFSD),
                }
            } else {
                Transport::NineP
            }),
            network: None,
            channel: None,
            netns: None,
            disks: Vec::new(),
            tcg_cache_mib: None,
        }
    }
}

/// The kernel command line every guest gets: console on the serial port,
/// a panic or reboot ends QEMU (-no-reboot), and what Kata and Firecracker
/// also pass to skip probing that costs boot time in a VM.
const KERNEL_ARGS: &[&str] = &[
    "console=ttyS0",
    "reboot=t",
    "panic=-1",
    "quiet",
    "noreplace-smp",
    "cryptomgr.notests",
    "i8042.direct=1",
    "i8042.dumbkbd=1",
    "i8042.nopnp=1",
    "i8042.noaux=1",
];

/// The guest's module groups (scripts/build-guest) this VM's devices need
/// beyond the agent's own: the agent loads only these, since under
/// emulation every module costs tens of milliseconds of boot.
fn module_groups(config: &VmConfig) -> Vec<&'static str> {
    let mut groups = Vec::new();
    match &config.share {
        Some(Transport::VirtioFs { .. }) => groups.push("virtiofs"),
        Some(Transport::NineP) => groups.push("9p"),
        None => {}
    }
    if config.network.is_some() {
        groups.push("net");
    }
    if !config.disks.is_empty() {
        groups.push("blk");
    }
    groups
}

/// Under TCG the guest's TSC runs at the host's rate, but a guest that
/// must measure it against the emulated PIT fails when the host is busy
/// (seen here with three VMs booting on two CPUs: "Unable to calibrate
/// against PIT", then a hang with the clock stopped). Tell it the rate.
fn emulated_tsc_args() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok());
    match mhz {
        Some(mhz) if mhz > 0.0 => vec![
            format!("tsc_early_khz={}", (mhz * 1000.0) as u64),
            // No other clock to check it against.
            "tsc=reliable".to_owned(),
        ],
        _ => Vec::new(),
    }
}

/// A running VM.
/// Dropping a `Vm` that was not stopped kills it and frees what it held
/// (an owner that panics or returns early leaves nothing); an owner that
/// hands the VM to a successor calls [`Vm::detach`].
pub struct Vm {
    id: String,
    dir: PathBuf,
    /// Set once stopped, killed or detached: nothing left for Drop.
    released: bool,
    qemu: Process,
    shared: Option<SharedDir>,
    network: Option<(PodNetwork, InterfaceInfo)>,
    qmp: Qmp,
    agent: AgentClient,
    boot_time: Duration,
}

impl Vm {
    /// Starts QEMU and waits until the guest's agent answers; on any
    /// failure nothing is left (QEMU killed, its directory removed).
    pub async fn boot(config: VmConfig) -> Result<Vm, VmError> {
        for (what, path) in [("kernel", &config.kernel), ("initramfs", &config.initramfs)] {
            if !path.is_file() {
                return Err(VmError::Config(format!(
                    "the guest {what} {} does not exist (build it with scripts/build-guest)",
                    path.display()
                )));
            }
        }
        for disk in &config.disks {
            if !disk.path.is_file() {
                return Err(VmError::Config(format!(
                    "disk image {} does not exist",
                    disk.path.display()
                )));
            }
        }
        if config.vcpus == 0 || config.memory_mib < 64 {
            return Err(VmError::Config(format!(
                "{} vCPUs and {} MiB: at least 1 vCPU and 64 MiB are needed",
                config.vcpus, config.memory_mib
            )));
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| VmError::Io {
                what: "creating the VM's directory",
                path: config.dir.clone(),
                source: e,
            })?;
        // A boot abandoned half-way (its future dropped: a cancelled
        // request) ends what it started, from what it recorded.
        let mut unfinished = CleanupOnDrop(Some(config.dir.clone()));
        let accel = config.accel.unwrap_or_else(|| Accel::detect().0);
        let channel = config
            .channel
            .unwrap_or_else(|| AgentChannel::choose(accel, &config.dir));
        if let Err(e) = channel.record(&config.dir) {
            let _ = std::fs::remove_dir_all(&config.dir);
            return Err(VmError::Io {
                what: "recording the agent's channel",
                path: config.dir.clone(),
                source: e,
            });
        }
        let shared = match &config.share {
            Some(transport) => match SharedDir::start(&config.dir, transport).await {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&config.dir);
                    return Err(e);
                }
            },
            None => None,
        };
        let network = match &config.network {
            Some(net) => match record_network(&config.dir, net)
                .and_then(|()| network::in_netns(&net.netns, || network::attach(&net.interface)))
            {
                Ok(info) => Some((net.clone(), info)),
                Err(e) => {
                    if let Some(shared) = &shared {
                        shared.stop().await;
                    }
                    let _ = std::fs::remove_dir_all(&config.dir);
                    return Err(e);
                }
            },
            None => None,
        };
        let started = Instant::now();
        let nic = network.as_ref().map(|(_, info)| info);
        // Born in the pod's namespace: the tap is there.
        let spawned = match network
            .as_ref()
            .map(|(net, _)| &net.netns)
            .or(config.netns.as_ref())
        {
            Some(netns) => {
                let runtime = tokio::runtime::Handle::current();
                network::in_netns(netns, || {
                    // The pidfd's watch registers with this runtime.
                    let _entered = runtime.enter();
                    spawn(&config, accel, channel, shared.as_ref(), nic)
                })
            }
            None => spawn(&config, accel, channel, shared.as_ref(), None),
        };
        let spawned = spawned.and_then(|qemu| match qemu.record(&config.dir.join("qemu.pid")) {
            Ok(()) => Ok(qemu),
            Err(e) => {
                qemu.signal(rustix::process::Signal::KILL);
                Err(e)
            }
        });
        let booted = match spawned {
            Ok(qemu) => {
                let deadline = started + config.boot_timeout;
                let connected = match connect(&config, channel, qemu.exited(), deadline).await {
                    Ok((qmp, agent)) => match &network {
                        Some((_, info)) => {
                            let left = deadline.saturating_duration_since(Instant::now());
                            agent
                                .configure_network(info, left)
                                .await
                                .map(|()| (qmp, agent))
                        }
                        None => Ok((qmp, agent)),
                    },
                    Err(e) => Err(e),
                };
                match connected {
                    Ok(channels) => Ok((qemu, channels)),
                    Err(e) => {
                        qemu.kill().await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        match booted {
            Ok((qemu, (qmp, agent))) => {
                let vm = Vm {
                    id: config.id.clone(),
                    dir: config.dir.clone(),
                    released: false,
                    qemu,
                    shared,
                    network,
                    qmp,
                    agent,
                    boot_time: started.elapsed(),
                };
                tracing::debug!(id = %vm.id, pid = vm.pid(), boot_ms = vm.boot_time.as_millis() as u64, "VM booted");
                unfinished.0 = None;
                Ok(vm)
            }
            Err(e) => {
                if let Some((net, _)) = &network {
                    let _ = network::in_netns(&net.netns, || {
                        network::detach(&net.interface);
                        Ok(())
                    });
                }
                if let Some(shared) = &shared {
                    shared.stop().await;
                }
                let _ = std::fs::remove_dir_all(&config.dir);
                Err(e)
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// QEMU's PID.
    pub fn pid(&self) -> i32 {
        self.qemu.pid()
    }

    /// From QEMU's start to the agent's first answer.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// Freezes the whole VM (its vCPUs stop; memory stays).
    pub async fn pause(&self) -> Result<(), VmError> {
        self.qmp.execute("stop", None).await.map(drop)
    }

    /// Thaws it, and sets the guest's clock again: it stood still while
    /// the vCPUs did.
    pub async fn resume(&self, timeout: Duration) -> Result<(), VmError> {
        self.qmp.execute("cont", None).await?;
        self.agent.setup_guest("", timeout).await
    }

    /// Drops the channel to the agent and makes a new one (what a restarted
    /// owner does): the agent serves the next connection once the last
    /// one closed.
    pub async fn reconnect_agent(&mut self, timeout: Duration) -> Result<(), VmError> {
        let placeholder = match AgentChannel::recorded(&self.dir) {
            // The old client's socket must be closed before the agent
            // reopens its port: replace it with the new one only after.
            AgentChannel::Serial => AgentClient::connect(&agent_socket(&self.dir)).await,
            AgentChannel::Vsock { cid } => {
                AgentClient::connect_vsock(cid, Instant::now() + timeout).await
            }
        };
        drop(std::mem::replace(&mut self.agent, placeholder?));
        self.agent.check(timeout).await.map(drop)
    }

    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The directory shared with the guest, if the VM has one.
    pub fn shared(&self) -> Option<&SharedDir> {
        self.shared.as_ref()
    }

    /// Has the agent mount the shared directory at
    /// [`GUEST_SHARED_DIR`](crate::GUEST_SHARED_DIR), whatever its transport.
    pub async fn mount_shared(&self, timeout: Duration) -> Result<(), VmError> {
        let shared = self
            .shared
            .as_ref()
            .ok_or_else(|| VmError::Config("the VM has no shared directory".into()))?;
        self.agent.mount(&shared.guest_mount(), timeout).await
    }

    pub fn is_running(&self) -> bool {
        self.qemu.is_running()
    }

    /// Becomes true when QEMU has exited.
    pub fn exited(&self) -> tokio::sync::watch::Receiver<bool> {
        self.qemu.exited()
    }

    /// Resolves when QEMU has exited.
    pub async fn wait(&self) {
        self.qemu.wait().await;
    }

    /// Asks the guest to power off, then QEMU to quit, then kills it,
    /// each within `grace`; stops virtiofsd, removes the VM's directory.
    pub async fn stop(mut self, grace: Duration) {
        if self.is_running() {
            let _ = self.agent.shutdown(grace).await;
            if tokio::time::timeout(grace, self.wait()).await.is_err() {
                let _ = tokio::time::timeout(grace, self.qmp.execute("quit", None)).await;
                if tokio::time::timeout(grace, self.wait()).await.is_err() {
                    self.qemu.kill().await;
                }
            }
        }
        self.release().await;
    }

    /// Ends what is left of a VM whose handle is lost (its owner died and
    /// a new one cleans up): QEMU and virtiofsd recorded in `dir` (only if
    /// their command lines still name `dir`), the tap and redirection in the
    /// pod's namespace, the shared directory's mounts, `dir` itself.
    pub fn cleanup(dir: &Path) {
        crate::process::kill_recorded(&dir.join("qemu.pid"), dir);
        crate::process::kill_recorded(&dir.join("virtiofsd.pid"), dir);
        if let Some(net) = recorded_network(dir) {
            let _ = network::in_netns(&net.netns, || {
                network::detach(&net.interface);
                Ok(())
            });
        }
        crate::virtiofs::unmount_leftovers(dir);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Kills QEMU at once; stops virtiofsd, removes the VM's directory.
    pub async fn kill(mut self) {
        self.qemu.kill().await;
        self.release().await;
    }

    /// Leaves the VM running for another owner, who finds it by its
    /// directory (and ends it with [`Vm::cleanup`] if it cannot use it).
    pub fn detach(mut self) {
        self.released = true;
    }

    async fn release(&mut self) {
        self.released = true;
        if let Some((net, _)) = &self.network {
            let _ = network::in_netns(&net.netns, || {
                network::detach(&net.interface);
                Ok(())
            });
        }
        if let Some(shared) = &self.shared {
            shared.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct CleanupOnDrop(Option<PathBuf>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if dir.exists() {
                Vm::cleanup(&dir);
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Not awaited here: the processes' pidfd watches reap them.
        self.qemu.signal(rustix::process::Signal::KILL);
        if let Some((net, _)) = &self.network {
            let _ = network::in_netns(&net.netns, || {
                network::detach(&net.interface);
                Ok(())
            });
        }
        if let Some(shared) = &self.shared {
            shared.abandon();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn network_record(dir: &Path) -> PathBuf {
    dir.join("network.json")
}

/// Written before the namespace is touched, so a cleanup knows where to
/// undo it.
fn record_network(dir: &Path, net: &PodNetwork) -> Result<(), VmError> {
    let doc = serde_json::json!({"netns": net.netns, "interface": net.interface});
    std::fs::write(network_record(dir), doc.to_string()).map_err(|e| VmError::Io {
        what: "writing",
        path: network_record(dir),
        source: e,
    })
}

fn recorded_network(dir: &Path) -> Option<PodNetwork> {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(network_record(dir)).ok()?).ok()?;
    Some(PodNetwork {
        netns: PathBuf::from(doc["netns"].as_str()?),
        interface: doc["interface"].as_str()?.to_owned(),
    })
}

fn qmp_socket(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

fn agent_socket(dir: &Path) -> PathBuf {
    dir.join("agent.sock")
}

fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

fn qemu_log(dir: &Path) -> PathBuf {
    dir.join("qemu.log")
}

fn spawn(
    config: &VmConfig,
    accel: Accel,
    channel: AgentChannel,
    shared: Option<&SharedDir>,
    nic: Option<&InterfaceInfo>,
) -> Result<Process, VmError> {
    let dir = &config.dir;
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut cmdline: Vec<String> = KERNEL_ARGS.iter().map(|s| s.to_string()).collect();
    if accel == Accel::Tcg {
        cmdline.extend(emulated_tsc_args());
    }
    let mut groups = module_groups(config);
    if let Some((param, group)) = channel.guest_args() {
        cmdline.push(param.into());
        groups.push(group);
    }
    cmdline.push(format!("berth.modules={}", groups.join(",")));
    cmdline.extend(config.kernel_args.iter().cloned());
    let memory = format!("{}M", config.memory_mib);
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("berth-{}", config.id),
        // Devices on virtio-mmio, described to the guest by ACPI.
        "-M".into(),
        "microvm,memory-backend=mem,rtc=on".into(),
        // Shared, file-backed guest memory: what virtio-fs's daemon maps.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={memory},share=on"),
        "-m".into(),
        memory,
        "-smp".into(),
        config.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", path(console_log(dir))),
        "-kernel".into(),
        path(config.kernel.clone()),
        "-initrd".into(),
        path(config.initramfs.clone()),
        "-append".into(),
        cmdline.join(" "),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path(qmp_socket(dir))),
        // QEMU's own seccomp filter: a guest that escapes into QEMU cannot
        // exec, raise privileges, change resource controls or use
        // obsolete system calls.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        // Modern virtio-mmio: what virtio-fs needs.
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
    ];
    args.extend(channel.qemu_args(&agent_socket(dir)));
    if let Some(shared) = shared {
        args.extend(shared.qemu_args());
    }
    if let Some(nic) = nic {
        args.extend(network::qemu_args(nic));
    }
    for (i, disk) in config.disks.iter().enumerate() {
        // A comma in a path would end QEMU's option value: doubled, as its
        // option syntax wants.
        let file = disk.path.to_string_lossy().replace(',', ",,");
        let read_only = if disk.read_only { "on" } else { "off" };
        args.extend([
            "-drive".into(),
            format!("file={file},if=none,id=disk{i},format=raw,read-only={read_only}"),
            "-device".into(),
            format!("virtio-blk-device,drive=disk{i}"),
        ]);
    }
    match accel {
        Accel::Kvm => args.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
        Accel::Tcg => args.extend([
            "-accel".into(),
            match config.tcg_cache_mib {
                Some(mib) => format!("tcg,tb-size={mib}"),
                None => "tcg".into(),
            },
            "-cpu".into(),
            "max".into(),
        ]),
    }
    Process::spawn(&config.qemu, &args, &qemu_log(dir))
}

/// QMP, then the agent's first answer, before `deadline`, unless QEMU
/// exits first.
async fn connect(
    config: &VmConfig,
    channel: AgentChannel,
    exited: watch::Receiver<bool>,
    deadline: Instant,
) -> Result<(Qmp, AgentClient), VmError> {
    let dir = &config.dir;
    let died = |dir: &Path| VmError::ExitedDuringBoot {
        status: "exited".into(),
        output: tail(&qemu_log(dir)) + &tail(&console_log(dir)),
    };
    let timed_out = |dir: &Path| VmError::BootTimeout {
        seconds: config.boot_timeout.as_secs_f64(),
        console: tail(&console_log(dir)),
    };
    let work = async {
        // QEMU creates its sockets before the guest starts.
        let serial = channel == AgentChannel::Serial;
        while !(qmp_socket(dir).exists() && (!serial || agent_socket(dir).exists())) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let qmp = Qmp::connect(&qmp_socket(dir)).await?;
        let agent = match channel {
            AgentChannel::Serial => AgentClient::connect(&agent_socket(dir)).await?,
            AgentChannel::Vsock { cid } => AgentClient::connect_vsock(cid, deadline).await?,
        };
        // The request waits in the channel until the agent opens its port.
        let left = deadline.saturating_duration_since(Instant::now());
        agent.check(left).await?;
        // The guest's clock starts from the emulated RTC (whole seconds).
        let left = deadline.saturating_duration_since(Instant::now());
        agent.setup_guest("", left).await?;
        Ok::<_, VmError>((qmp, agent))
    };
    let mut exit_seen = exited.clone();
    tokio::select! {
        r = work => match r {
            Ok(done) => Ok(done),
            Err(e) => {
                // A channel that closed is most often QEMU going away: say
                // that, with its last words, if it is so.
                let mut watch = exited.clone();
                let ended = tokio::time::timeout(Duration::from_millis(500), async move {
                    watch.wait_for(|gone| *gone).await.is_ok()
                })
                .await;
                if ended == Ok(true) {
                    Err(died(dir))
                } else if Instant::now() >= deadline {
                    Err(timed_out(dir))
                } else {
                    Err(e)
                }
            }
        },
        // (The guard wait_for returns must not live in select's output:
        // it is not Send.)
        () = async { let _ = exit_seen.wait_for(|gone| *gone).await; } => Err(died(dir)),
        () = tokio::time::sleep_until(deadline.into()) => Err(timed_out(dir)),
    }
}
