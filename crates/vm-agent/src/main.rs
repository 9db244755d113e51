//! berth-agent: the in-guest half of the `vm` runtime class. It runs as
//! PID 1 of the pod's virtual machine (the initramfs's /init): it sets the
//! guest up (file systems, the kernel modules the build listed), then
//! serves `berth.agent.v1.Agent` over ttrpc on the virtio-serial port
//! "berth.agent" (or vsock port 1024, when the kernel command line says
//! `berth.channel=vsock`) for the shim on the host, reaping every process
//! the guest leaves behind.
//!
//! `berth-agent --listen PATH [--berth PATH]` serves on a unix socket
//! instead, without setting a system up: how its service is tested on the
//! host.

mod channel;
mod containers;
mod fdio;
mod init;
mod netconf;
mod reaper;
mod service;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

fn main() {
    let pid1 = rustix::process::getpid().is_init();
    if let Err(e) = run(pid1) {
        eprintln!("berth-agent: {e:#}");
        if pid1 {
            // PID 1 must not exit (the kernel would panic): power off, so
            // the host sees the VM end rather than hang.
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(pid1: bool) -> Result<()> {
    let mut listen: Option<PathBuf> = None;
    let mut berth = PathBuf::from("/bin/berth");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().context("--listen needs a path")?.into()),
            "--berth" => berth = args.next().context("--berth needs a path")?.into(),
            "--version" => {
                println!("berth-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            other => bail!(
                "unknown argument {other:?} (usage: berth-agent [--listen PATH] [--berth PATH])"
            ),
        }
    }
    let setup = if pid1 && listen.is_none() {
        Some(init::setup().context("setting the guest up")?)
    } else {
        None
    };
    let vsock = setup.as_ref().is_some_and(|s| s.vsock);
    let modules = setup.map(|s| s.modules).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        if !pid1 {
            // Containers' processes are left to the agent when `berth`
            // exits, as to PID 1 in the guest.
            rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                .context("becoming a subreaper")?;
        }
        let reaper = reaper::Reaper::start().context("starting the reaper")?;
        let service = service::Agent::new(reaper, berth, modules, pid1);
        let listener = match listen {
            Some(path) => channel::unix_listener(&path)?,
            None if vsock => channel::vsock_listener(berth_api::agent::v1::VSOCK_PORT)?,
            None => channel::serial_listener(berth_api::agent::v1::PORT_NAME)?,
        };
        let mut server = ttrpc::r#async::Server::new()
            .add_listener(listener)
            .register_service(service::services(service));
        server.start().await.context("serving ttrpc")?;
        // start() returns once the listener runs; the agent lives until
        // power-off (or, with --listen, until killed).
        std::future::pending::<()>().await;
        Ok(())
    })
}
