//! berthd: the CRI daemon. Flags override berth.toml; see berth-cri.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_cri::config::{Config, DEFAULT_CONFIG};

const USAGE: &str = "usage: berthd [--config FILE] [--root DIR] [--state DIR] [--socket PATH] [--log-level LEVEL] [--version]";

struct Flags {
    config: Option<PathBuf>,
    root: Option<PathBuf>,
    state: Option<PathBuf>,
    socket: Option<PathBuf>,
    log_level: String,
}

fn parse_flags() -> Result<Flags> {
    let mut f = Flags {
        config: None,
        root: None,
        state: None,
        socket: None,
        log_level: std::env::var("BERTHD_LOG").unwrap_or_else(|_| "info".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--config" | "-c" => f.config = Some(value()?.into()),
            "--root" => f.root = Some(value()?.into()),
            "--state" => f.state = Some(value()?.into()),
            "--socket" | "--address" => f.socket = Some(value()?.into()),
            "--log-level" => f.log_level = value()?,
            "--version" | "-v" => {
                println!("berthd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(f)
}

fn main() -> Result<()> {
    // Descriptors berthd inherited are not for the shims and runtimes it
    // starts (a leaked directory fd lets a container escape through
    // /proc/self/fd, runc CVE-2024-21626).
    berth_cri::mark_inherited_fds_cloexec()
        .context("marking inherited descriptors close-on-exec")?;
    let flags = parse_flags()?;
    // Before any thread: pods come and go, and free memory kept in a dozen
    // arenas looks like growth to the node (berth_common::memory).
    berth_common::memory::limit_arenas(2);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&flags.log_level).context("--log-level")?,
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let (path, required) = match &flags.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut config =
        Config::load(&path, required).with_context(|| format!("loading {}", path.display()))?;
    if let Some(r) = flags.root {
        config.root = r;
    }
    if let Some(s) = flags.state {
        if flags.socket.is_none() && config.socket == Config::default().socket {
            config.socket = s.join("berth.sock");
        }
        config.state = s;
    }
    if let Some(s) = flags.socket {
        config.socket = s;
    }
    berth_cri::busy_poll::CRI.set_budget(config.grpc.busy_poll()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_park(|| berth_cri::busy_poll::CRI.before_sleep())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let cri = berth_cri::Cri::new(config).await.context("starting")?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down; containers keep running in their shims");
        };
        berth_cri::serve(cri, shutdown)
            .await
            .context("serving CRI")?;
        Ok(())
    })
}
