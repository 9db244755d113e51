//! Which backend runs a container: berth in this process unless the
//! runtime options name another runtime binary.

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;

use super::options::parse_options;
use crate::backend::{Backend, Cli};
use crate::error::{Result, ShimError};

/// The backend for a container of `namespace`; an unknown runtime binary
/// is an invalid argument (the options name it).
pub(super) fn backend_for(
    options: &MessageField<Any>,
    state_root: &Path,
    namespace: &str,
) -> Result<Backend> {
    let opts = parse_options(options)?;
    if opts.binary_name.is_empty() {
        return Ok(Backend::in_process(
            &state_root.join(namespace),
            opts.systemd_cgroup,
        ));
    }
    let binary = which(&opts.binary_name).ok_or_else(|| {
        ShimError::InvalidArgument(format!("runtime binary {:?} not found", opts.binary_name))
    })?;
    let root = if opts.root.is_empty() {
        PathBuf::from("/run/containerd")
            .join(binary.file_name().unwrap_or_default())
            .join(namespace)
    } else {
        PathBuf::from(&opts.root).join(namespace)
    };
    Ok(Backend::Cli(Cli {
        binary,
        root,
        systemd_cgroup: opts.systemd_cgroup,
        args: opts.runtime_args,
        init_stdio: std::sync::Mutex::new(None),
    }))
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
