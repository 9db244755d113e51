//! berthctl's command line: crictl's commands and flags, where berthctl has
//! them.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default CRI endpoint: berthd's socket.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/berth/berth.sock";

#[derive(Parser, Debug)]
#[command(
    name = "berthctl",
    version,
    about = "berthctl: client for CRI v1 container runtimes (berthd, containerd, CRI-O), with crictl's commands",
    propagate_version = true
)]
pub struct Cli {
    /// Endpoint of the CRI runtime service (unix:///path or tcp://host:port)
    #[arg(
        short = 'r',
        long,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = DEFAULT_ENDPOINT
    )]
    pub runtime_endpoint: String,

    /// Endpoint of the CRI image service (default: the runtime endpoint)
    #[arg(short = 'i', long, env = "IMAGE_SERVICE_ENDPOINT")]
    pub image_endpoint: Option<String>,

    /// Timeout of connecting and of each call, in seconds (or 500ms, 2m);
    /// image pulls are not limited
    #[arg(short = 't', long, default_value = "10", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print requests and responses on stderr
    #[arg(short = 'D', long)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// A duration: bare seconds ("10", "1.5") or with a unit (ms, s, m, h).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use seconds, or 500ms, 10s, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Json,
    Yaml,
    Table,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataFormat {
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Display runtime version information
    Version,
    /// Display information of the container runtime
    Info(InfoArgs),
    /// Run a new pod
    Runp(RunpArgs),
    /// Stop one or more running pods
    Stopp(IdsArgs),
    /// Remove one or more pods
    Rmp(RmpArgs),
    /// List pods
    Pods(PodsArgs),
    /// Display the status of one or more pods
    Inspectp(InspectArgs),
    /// Create a new container
    Create(CreateArgs),
    /// Start one or more created containers
    Start(IdsArgs),
    /// Run a new container inside a new pod
    Run(RunArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// List containers
    Ps(PsArgs),
    /// Display the status of one or more containers
    Inspect(InspectArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Attach to a running container
    Attach(AttachArgs),
    /// Forward local ports to a pod
    #[command(name = "port-forward")]
    PortForward(PortForwardArgs),
    /// List container(s) resource usage statistics
    Stats(StatsArgs),
    /// List pod statistics
    Statsp(StatspArgs),
    /// Update one or more running containers
    Update(UpdateArgs),
    /// Pull an image from a registry
    Pull(PullArgs),
    /// List images
    #[command(visible_aliases = ["image", "img"])]
    Images(ImagesArgs),
    /// Return the status of one or more images
    Inspecti(InspectiArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Return image filesystem info
    Imagefsinfo(ImagefsinfoArgs),
    /// Stream the events of containers
    #[command(visible_alias = "event")]
    Events(EventsArgs),
    /// Retrieve the container runtime configuration
    RuntimeConfig,
    /// Checkpoint one or more running containers
    Checkpoint(CheckpointArgs),
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: DataFormat,
    /// Do not show verbose information
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RunpArgs {
    /// Runtime handler to use
    #[arg(short, long)]
    pub runtime: Option<String>,
    /// pod-config.[json|yaml]
    pub config: String,
}

#[derive(Args, Debug)]
pub struct IdsArgs {
    /// IDs (or unique prefixes, where the runtime takes them)
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmpArgs {
    /// Force removal of the pod, stopping it if it runs
    #[arg(short, long)]
    pub force: bool,
    /// Remove all pods
    #[arg(short, long)]
    pub all: bool,
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PodsArgs {
    /// Filter by pod id
    #[arg(long)]
    pub id: Option<String>,
    /// Filter by pod name regular expression pattern
    #[arg(long)]
    pub name: Option<String>,
    /// Filter by pod namespace regular expression pattern
    #[arg(long)]
    pub namespace: Option<String>,
    /// Filter by pod state (ready, notready)
    #[arg(short, long)]
    pub state: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Show verbose info for pods
    #[arg(short, long)]
    pub verbose: bool,
    /// List only pod IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: ListFormat,
    /// Show the most recently created pod
    #[arg(short, long)]
    pub latest: bool,
    /// Show last n recently created pods (0: unlimited)
    #[arg(short = 'n', long, default_value_t = 0)]
    pub last: usize,
    /// Show output without truncating the ID
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: StatusFormat,
    /// Do not show verbose information
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PullFlags {
    /// Do not pull the image before creating the container
    #[arg(long, conflicts_with = "with_pull")]
    pub no_pull: bool,
    /// Pull the image even if it is present
    #[arg(long)]
    pub with_pull: bool,
    /// Use USERNAME[:PASSWORD] for accessing the registry
    #[arg(long, env = "CRICTL_CREDS")]
    pub creds: Option<String>,
    /// Use AUTH_STRING (base64 'USERNAME[:PASSWORD]') for accessing the registry
    #[arg(long, env = "CRICTL_AUTH")]
    pub auth: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub pull: PullFlags,
    /// The pod to create the container in
    pub pod_id: String,
    /// container-config.[json|yaml]
    pub container_config: String,
    /// pod-config.[json|yaml]
    pub pod_config: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub pull: PullFlags,
    /// Runtime handler to use
    #[arg(short, long)]
    pub runtime: Option<String>,
    /// container-config.[json|yaml]
    pub container_config: String,
    /// pod-config.[json|yaml]
    pub pod_config: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait to kill the container after a graceful stop is requested
    #[arg(short, long, default_value_t = 0)]
    pub timeout: i64,
    /// Stop all running containers
    #[arg(short, long)]
    pub all: bool,
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force removal of the container, stopping it if it runs
    #[arg(short, long)]
    pub force: bool,
    /// Remove all containers
    #[arg(short, long)]
    pub all: bool,
    /// Preserve the container log file and its rotations
    #[arg(short, long)]
    pub keep_logs: bool,
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running ones)
    #[arg(short, long)]
    pub all: bool,
    /// Filter by container id
    #[arg(long)]
    pub id: Option<String>,
    /// Filter by container name regular expression pattern
    #[arg(long)]
    pub name: Option<String>,
    /// Filter by pod id
    #[arg(short, long)]
    pub pod: Option<String>,
    /// Filter by pod namespace regular expression pattern
    #[arg(long)]
    pub namespace: Option<String>,
    /// Filter by container state (created, running, exited, unknown)
    #[arg(short, long)]
    pub state: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Show verbose information for containers
    #[arg(short, long)]
    pub verbose: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: ListFormat,
    /// Show the most recently created container (all states)
    #[arg(short, long)]
    pub latest: bool,
    /// Show last n recently created containers (all states; 0: unlimited)
    #[arg(short = 'n', long, default_value_t = 0)]
    pub last: usize,
    /// Show output without truncating the ID
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs (default: all)
    #[arg(long, allow_negative_numbers = true, default_value_t = -1)]
    pub tail: i64,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Ask the runtime to reopen the container's log file first (after it
    /// was rotated)
    #[arg(short, long)]
    pub reopen: bool,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run the command synchronously (ExecSync) instead of streaming
    #[arg(short, long)]
    pub sync: bool,
    /// Timeout in seconds (0: none)
    #[arg(long, default_value_t = 0)]
    pub timeout: i64,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Keep STDIN open
    #[arg(short, long)]
    pub interactive: bool,
    pub id: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Allocate a pseudo-TTY (the container must have one)
    #[arg(short, long)]
    pub tty: bool,
    /// Keep STDIN open
    #[arg(short, long)]
    pub interactive: bool,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct PortForwardArgs {
    pub pod: String,
    /// [LOCAL_PORT:]REMOTE_PORT, one or more
    #[arg(required = true)]
    pub ports: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Show all containers (default: running ones)
    #[arg(short, long)]
    pub all: bool,
    /// Filter by container id
    #[arg(long)]
    pub id: Option<String>,
    /// Filter by pod id
    #[arg(short, long)]
    pub pod: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: ListFormat,
    /// Sample duration for CPU usage in seconds
    #[arg(short, long, default_value_t = 1)]
    pub seconds: u64,
    /// Container id (same as --id)
    pub container: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatspArgs {
    /// Filter by pod id
    #[arg(long)]
    pub id: Option<String>,
    /// Filter by key=value label
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: ListFormat,
    /// Sample duration for CPU usage in seconds
    #[arg(short, long, default_value_t = 1)]
    pub seconds: u64,
    /// Pod id (same as --id)
    pub pod: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// CPU CFS period (microseconds)
    #[arg(long, default_value_t = 0)]
    pub cpu_period: i64,
    /// CPU CFS quota (microseconds per period)
    #[arg(long, default_value_t = 0)]
    pub cpu_quota: i64,
    /// CPU shares (relative weight)
    #[arg(long, default_value_t = 0)]
    pub cpu_share: i64,
    /// Memory limit in bytes
    #[arg(long, default_value_t = 0)]
    pub memory: i64,
    /// CPUs to use
    #[arg(long, default_value = "")]
    pub cpuset_cpus: String,
    /// Memory nodes to use
    #[arg(long, default_value = "")]
    pub cpuset_mems: String,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Use USERNAME[:PASSWORD] for accessing the registry
    #[arg(long, env = "CRICTL_CREDS")]
    pub creds: Option<String>,
    /// Use AUTH_STRING (base64 'USERNAME[:PASSWORD]') for accessing the registry
    #[arg(long, env = "CRICTL_AUTH")]
    pub auth: Option<String>,
    /// pod-config.[json|yaml] to pull the image for
    #[arg(long)]
    pub pod_config: Option<String>,
    /// Annotation (key=value) to set on the pulled image
    #[arg(short, long = "annotation")]
    pub annotations: Vec<String>,
    /// Progress on stderr (berthd only): auto is a bar on a terminal
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: crate::progress::ProgressMode,
    /// NAME[:TAG|@DIGEST]
    pub image: String,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Show verbose info for images
    #[arg(short, long)]
    pub verbose: bool,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: ListFormat,
    /// Show output without truncating the ID
    #[arg(long)]
    pub no_trunc: bool,
    /// Show whether the image is pinned or not
    #[arg(long)]
    pub pinned: bool,
    /// REPOSITORY[:TAG]
    pub image: Option<String>,
}

#[derive(Args, Debug)]
pub struct InspectiArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: StatusFormat,
    /// Do not show verbose information
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Remove all images
    #[arg(short, long)]
    pub all: bool,
    /// Remove all images no container uses
    #[arg(short = 'q', long)]
    pub prune: bool,
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImagefsinfoArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: StatusFormat,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "json")]
    pub output: DataFormat,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// Name of the tar archive (/path/to/checkpoint.tar) to export the checkpoint to
    #[arg(short, long, default_value = "")]
    pub export: String,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn exec_takes_the_command_verbatim() {
        let cli =
            Cli::try_parse_from(["berthctl", "exec", "-s", "abc", "ls", "-l", "--all"]).unwrap();
        let Command::Exec(e) = cli.command else {
            panic!()
        };
        assert!(e.sync);
        assert_eq!(e.id, "abc");
        assert_eq!(e.cmd, vec!["ls", "-l", "--all"]);
    }

    #[test]
    fn global_flags() {
        let cli = Cli::try_parse_from([
            "berthctl",
            "-r",
            "unix:///x.sock",
            "-t",
            "3",
            "--debug",
            "ps",
            "-a",
            "-q",
        ])
        .unwrap();
        assert_eq!(cli.runtime_endpoint, "unix:///x.sock");
        assert_eq!(cli.timeout, Duration::from_secs(3));
        assert!(cli.debug);
        let Command::Ps(ps) = cli.command else {
            panic!()
        };
        assert!(ps.all && ps.quiet);
    }
}
