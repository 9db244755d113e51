//! Shim lifecycle: `start` (find or spawn the pod's shim and print its
//! address), `delete` (clean up after a dead shim), and the daemon.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::protobuf::{Message, MessageField};
use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::error::{Context, Result, ShimError};
use crate::events::Publisher;
use crate::task::{Service, TaskHandler};
use crate::{SANDBOX_ID_ANNOTATION, TASK_SERVICE_V2, TASK_SERVICE_V3};

const LISTENER_FD_ENV: &str = "BERTH_SHIM_LISTENER_FD";
const SOCKET_DIR_ENV: &str = "BERTH_SHIM_SOCKET_DIR";
const STATE_ROOT_ENV: &str = "BERTH_SHIM_STATE_ROOT";

fn socket_dir() -> PathBuf {
    std::env::var_os(SOCKET_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/s"))
}

/// Where the in-process runtime keeps container state.
pub fn state_root() -> PathBuf {
    std::env::var_os(STATE_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/berth"))
}

/// The pod a container belongs to: its sandbox id annotation, else itself.
pub fn group_id(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .and_then(|v| {
            v["annotations"][SANDBOX_ID_ANNOTATION]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| id.to_owned())
}

/// The socket of a group's shim (a hash keeps the path short and unique
/// per client, namespace and pod).
pub fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{address}\0{namespace}\0{group}").as_bytes());
    socket_dir().join(hex::encode(&digest[..16]))
}

/// The bundle containerd named, else the directory it started us in.
fn bundle_of(args: &Args) -> PathBuf {
    args.bundle
        .clone()
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default())
}

/// Marks every fd the shim inherited close-on-exec.
fn close_inherited_fds() -> Result<()> {
    berth_common::fd::mark_inherited_fds_cloexec(0)
        .context(|| "marking inherited fds close-on-exec".into())
}

/// `start`: prints the address of the shim that serves this container,
/// spawning it unless the pod already has one.
pub fn start(args: &Args) -> Result<String> {
    // What containerd passed us is not for the daemon we spawn.
    close_inherited_fds()?;
    let bundle = bundle_of(args);
    // containerd sends the runtime options on stdin; they are used by Create.
    let mut _options = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut _options);
    let group = group_id(&bundle, &args.id);
    let path = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", path.display());
    if UnixStream::connect(&path).is_ok() {
        let _ = std::fs::write(bundle.join("address"), &address);
        return Ok(address);
    }
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(socket_dir())
        .context(|| format!("creating {}", socket_dir().display()))?;
    // The socket serves the task API (exec into containers as root): it is
    // never reachable by other users, not even for a moment.
    let listener = berth_common::socket::bind_unix_private(&path)
        .context(|| format!("binding {}", path.display()))?;
    let fd: OwnedFd = listener.into();
    // Handed to the daemon by number: cleared close-on-exec, named in the env.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())
        .context(|| "passing the listener on".into())?;
    let exe = std::fs::read_link("/proc/self/exe").context(|| "reading /proc/self/exe".into())?;
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    argv.retain(|a| a != "start");
    let stderr: std::process::Stdio = match std::fs::OpenOptions::new()
        .write(true)
        .open(bundle.join("log"))
    {
        Ok(f) => f.into(),
        Err(_) => std::process::Stdio::null(),
    };
    let child = std::process::Command::new(exe)
        .args(&argv)
        .env(LISTENER_FD_ENV, fd.as_raw_fd().to_string())
        .env("BERTH_SHIM_SOCKET", &path)
        .current_dir(&bundle)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .context(|| "spawning the shim daemon".into())?;
    drop(fd);
    let _ = std::fs::write(bundle.join("address"), &address);
    let _ = std::fs::write(bundle.join("shim.pid"), child.id().to_string());
    Ok(address)
}

/// `delete`: the shim is gone; make sure the container is too, and report
/// how it ended (containerd expects a DeleteResponse on stdout).
pub fn delete(args: &Args) -> Result<()> {
    let backend = crate::backend::Backend::in_process(&state_root().join(&args.namespace), false);
    if let Err(e) = backend.delete(&args.id, true) {
        log::warn!("deleting {}: {e}", args.id);
    }
    report_deleted(args)
}

/// `delete` of the `vm` class: a dead shim's VM ends with its pod's owner
/// (the sandbox, or the lone container).
pub fn delete_vm(args: &Args) -> Result<()> {
    let bundle = bundle_of(args);
    if group_id(&bundle, &args.id) == args.id {
        crate::vm::cleanup_pod(&args.namespace, &args.id);
    }
    report_deleted(args)
}

/// Unmounts the rootfs and prints how the container ended.
fn report_deleted(args: &Args) -> Result<()> {
    let bundle = bundle_of(args);
    let target = bundle.join("rootfs");
    while rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).is_ok() {}
    let recorded: Option<serde_json::Value> = std::fs::read(bundle.join("berth-exit.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut r = containerd_shim_protos::api::DeleteResponse::new();
    r.exit_status = recorded
        .as_ref()
        .and_then(|v| v["exit_status"].as_u64())
        .unwrap_or(137) as u32;
    r.exited_at = MessageField::some(crate::events::timestamp(std::time::SystemTime::now()));
    let bytes = r
        .write_to_bytes()
        .map_err(|e| ShimError::Other(format!("encoding the DeleteResponse: {e}")))?;
    std::io::stdout()
        .write_all(&bytes)
        .context(|| "writing the DeleteResponse".into())
}

/// The daemon: serves the task API on the listener `start` passed down,
/// reaps children, and exits when asked to once it holds no container.
pub fn serve(args: &Args) -> Result<()> {
    serve_class(args, crate::Class::Berth)
}

/// The daemon of a shim of `class`.
pub fn serve_class(args: &Args, class: crate::Class) -> Result<()> {
    // A container's processes start as forks of this process: run from a
    // sealed copy so none of them can reach the binary on disk.
    berth_runtime::cloned_exe::ensure_sealed()?;
    let fd: i32 = std::env::var(LISTENER_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ShimError::FailedPrecondition(
                "the shim daemon is started by `start`, with its listener".into(),
            )
        })?;
    // SAFETY: `start` created this listening socket and passed us its number.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::CLOEXEC)
        .context(|| "taking the listener".into())?;
    std::env::remove_var(LISTENER_FD_ENV);
    // Nothing else the shim inherited may reach the runtimes and containers
    // it starts (runc CVE-2024-21626: a leaked directory fd is a way out).
    close_inherited_fds()?;
    rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(std::process::id() as i32))
        .context(|| "becoming a subreaper".into())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "starting the async runtime".into())?;
    runtime.block_on(async {
        let publisher = Publisher::start(args.ttrpc_address(), args.namespace.clone());
        let service = Service::new_for(publisher, args.namespace.clone(), state_root(), class);
        let mut services = containerd_shim_protos::shim_async::create_task(Arc::new(TaskHandler(Arc::clone(&service))));
        let v3 = services.remove(TASK_SERVICE_V3).expect("the generated service");
        let mut v2 = containerd_shim_protos::shim_async::create_task(Arc::new(TaskHandler(Arc::clone(&service))));
        let v2 = v2.remove(TASK_SERVICE_V3).expect("the generated service");
        let mut map = std::collections::HashMap::new();
        map.insert(TASK_SERVICE_V3.to_owned(), v3);
        map.insert(TASK_SERVICE_V2.to_owned(), v2);
        map.extend(crate::extension::extra_services(Arc::clone(&service)));
        // SAFETY: the fd is our listening socket, owned by the server from here.
        let server = unsafe { ttrpc::r#async::Server::new().add_unix_listener(listener.into_raw_fd()) }.map_err(ttrpc_failed)?;
        let mut server = server.register_service(map);
        server.start().await.map_err(ttrpc_failed)?;
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).context(|| "handling SIGCHLD".into())?;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context(|| "handling SIGTERM".into())?;
        loop {
            tokio::select! {
                _ = sigchld.recv() => crate::reaper::reap_all(|pid, code| service.on_exit(pid, code)),
                _ = service.wait_shutdown() => break,
                _ = sigterm.recv() => {
                    if service.is_empty() { break; }
                }
            }
        }
        // Gone from the socket directory first, so that a `start` for a new
        // container of the pod spawns a new shim instead of finding this one.
        if let Some(path) = std::env::var_os("BERTH_SHIM_SOCKET") {
            let _ = std::fs::remove_file(path);
        }
        // Let the reply to Shutdown go out.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _ = server.shutdown().await;
        Ok::<(), ShimError>(())
    })?;
    if let Some(path) = std::env::var_os("BERTH_SHIM_SOCKET") {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn ttrpc_failed(e: ttrpc::Error) -> ShimError {
    ShimError::Other(format!("ttrpc server: {e}"))
}
