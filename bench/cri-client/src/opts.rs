//! berth-cri-bench's command line: the options of every command and their
//! checks.

use std::path::PathBuf;
use std::time::Duration;

use crate::stream;

pub(crate) const USAGE: &str = "usage: berth-cri-bench --socket PATH [--rpc-timeout SECONDS] \
(version | pull IMAGE... | run --pods N --image REF --tag TAG --cgroup-parent CG \
--log-dir DIR [--ids-file FILE] [--hold] [--pod-network] [--runtime-handler NAME] | cleanup --tag TAG \
| probe --tag TAG [--count K] [--seconds S] [--rpcs RPC,...] | concurrent --count N --pods P --image REF --tag TAG \
--cgroup-parent CG --log-dir DIR [--ids-file FILE] | up --name NAME --image REF --tag TAG --cgroup-parent CG --log-dir DIR [--ids-file FILE] \
[--port PORT] | stream --pod ID --container ID [--port PORT] [--order KIND,...] [--rtts N] \
[--payload BYTES] [--pod-ip IP] [--relay-port PORT] [--check])";

/// The parsed command line.
pub(crate) struct Opts {
    pub(crate) socket: PathBuf,
    pub(crate) rpc_timeout: Duration,
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    pub(crate) pods: usize,
    pub(crate) image: String,
    pub(crate) tag: String,
    pub(crate) cgroup_parent: String,
    pub(crate) log_dir: PathBuf,
    pub(crate) ids_file: Option<PathBuf>,
    pub(crate) hold: bool,
    /// `run`: pods on the pod network (CNI) instead of the host's.
    pub(crate) pod_network: bool,
    /// `run`: the pods' runtime handler (the daemon's default if empty).
    pub(crate) runtime_handler: String,
    /// `up`: the pod's name (after the tag).
    pub(crate) name: String,
    /// `stream`: the pod and the container to measure in.
    pub(crate) pod: String,
    pub(crate) container: String,
    /// `up`: where the echo container listens; `stream`: the port forwarded.
    pub(crate) port: u16,
    /// `stream`: the measurements, in this order.
    pub(crate) order: Vec<String>,
    /// `stream`: port-forward round trips, and their payload size.
    pub(crate) rtts: usize,
    pub(crate) payload: usize,
    /// `stream`: the pod's IP, for `direct`.
    pub(crate) pod_ip: Option<std::net::IpAddr>,
    /// `stream`: the port of bench/helpers/minimal-relay on 127.0.0.1, for
    /// `relay`.
    pub(crate) relay_port: Option<u16>,
    /// `stream`: the untimed checks of every transport's output first.
    pub(crate) check: bool,
    /// `probe`: calls of each RPC.
    pub(crate) count: usize,
    /// `probe`: and each RPC called for at least this long.
    pub(crate) seconds: Duration,
    /// `probe`: only these RPCs (all if empty), to profile one.
    pub(crate) rpcs: Vec<String>,
}

pub(crate) fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        socket: PathBuf::new(),
        rpc_timeout: Duration::from_secs(120),
        command: String::new(),
        args: Vec::new(),
        pods: 1,
        image: String::new(),
        tag: String::new(),
        cgroup_parent: String::new(),
        log_dir: PathBuf::new(),
        ids_file: None,
        hold: false,
        pod_network: false,
        runtime_handler: String::new(),
        name: String::new(),
        pod: String::new(),
        container: String::new(),
        port: 8080,
        order: stream::KINDS.iter().map(|k| k.to_string()).collect(),
        rtts: 50,
        pod_ip: None,
        relay_port: None,
        payload: 64,
        check: false,
        count: 100,
        seconds: Duration::ZERO,
        rpcs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--socket" => o.socket = value("--socket")?.into(),
            "--rpc-timeout" => {
                let s: u64 = value("--rpc-timeout")?
                    .parse()
                    .map_err(|e| format!("--rpc-timeout: {e}"))?;
                o.rpc_timeout = Duration::from_secs(s);
            }
            "--pods" => {
                o.pods = value("--pods")?
                    .parse()
                    .map_err(|e| format!("--pods: {e}"))?
            }
            "--image" => o.image = value("--image")?,
            "--tag" => o.tag = value("--tag")?,
            "--cgroup-parent" => o.cgroup_parent = value("--cgroup-parent")?,
            "--log-dir" => o.log_dir = value("--log-dir")?.into(),
            "--ids-file" => o.ids_file = Some(value("--ids-file")?.into()),
            "--hold" => o.hold = true,
            "--pod-network" => o.pod_network = true,
            "--runtime-handler" => o.runtime_handler = value("--runtime-handler")?,
            "--check" => o.check = true,
            "--name" => o.name = value("--name")?,
            "--pod" => o.pod = value("--pod")?,
            "--container" => o.container = value("--container")?,
            "--port" => {
                o.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--order" => {
                o.order = value("--order")?
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--rpcs" => {
                o.rpcs = value("--rpcs")?
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--count" => {
                o.count = value("--count")?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?
            }
            "--seconds" => {
                let s: f64 = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
                o.seconds =
                    Duration::try_from_secs_f64(s).map_err(|e| format!("--seconds: {e}"))?;
            }
            "--rtts" => {
                o.rtts = value("--rtts")?
                    .parse()
                    .map_err(|e| format!("--rtts: {e}"))?
            }
            "--pod-ip" => {
                o.pod_ip = Some(
                    value("--pod-ip")?
                        .parse()
                        .map_err(|e| format!("--pod-ip: {e}"))?,
                )
            }
            "--relay-port" => {
                o.relay_port = Some(
                    value("--relay-port")?
                        .parse()
                        .map_err(|e| format!("--relay-port: {e}"))?,
                )
            }
            "--payload" => {
                o.payload = value("--payload")?
                    .parse()
                    .map_err(|e| format!("--payload: {e}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            _ if o.command.is_empty() => o.command = a,
            _ => o.args.push(a),
        }
    }
    if o.socket.as_os_str().is_empty() || o.command.is_empty() {
        return Err("--socket and a command are required".into());
    }
    match o.command.as_str() {
        "run" => {
            if o.pods == 0
                || o.image.is_empty()
                || o.tag.is_empty()
                || o.cgroup_parent.is_empty()
                || o.log_dir.as_os_str().is_empty()
            {
                return Err(
                    "run needs --pods >= 1, --image, --tag, --cgroup-parent, --log-dir".into(),
                );
            }
        }
        "up" => {
            if o.name.is_empty()
                || o.image.is_empty()
                || o.tag.is_empty()
                || o.cgroup_parent.is_empty()
                || o.log_dir.as_os_str().is_empty()
                || o.port == 0
            {
                return Err(
                    "up needs --name, --image, --tag, --cgroup-parent, --log-dir, --port >= 1"
                        .into(),
                );
            }
        }
        "stream" => {
            if o.pod.is_empty() || o.container.is_empty() || o.port == 0 || o.payload == 0 {
                return Err("stream needs --pod, --container, --port >= 1, --payload >= 1".into());
            }
            if let Some(k) = o
                .order
                .iter()
                .find(|k| !stream::KINDS.contains(&k.as_str()))
            {
                return Err(format!(
                    "--order: unknown measurement {k} (known: {})",
                    stream::KINDS.join(", ")
                ));
            }
        }
        "cleanup" if o.tag.is_empty() => return Err("cleanup needs --tag".into()),
        "probe" if o.tag.is_empty() || o.count == 0 => {
            return Err("probe needs --tag and --count >= 1".into())
        }
        "probe" => {}
        "concurrent" => {
            if o.count == 0
                || o.image.is_empty()
                || o.tag.is_empty()
                || o.cgroup_parent.is_empty()
                || o.log_dir.as_os_str().is_empty()
            {
                return Err(
                    "concurrent needs --count >= 1, --image, --tag, --cgroup-parent, \
                     --log-dir"
                        .into(),
                );
            }
        }
        "pull" if o.args.is_empty() => return Err("pull needs an image".into()),
        "version" | "pull" | "cleanup" => {}
        c => return Err(format!("unknown command {c}")),
    }
    Ok(o)
}
