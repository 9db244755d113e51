//! Setting a new container up: state directory, cgroups, the init's
//! handshake, hooks, and its state once it is ready.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::time::SystemTime;

use berth_cgroups::Part;
use rustix::fs::{Mode, OFlags};

use super::{write_pid_file, CreateOptions, Launch, Launched, ProcessIo, Runtime};
use crate::error::Context;
use crate::handshake::{
    connect_console, foreground_signals, Cleanup, Forked, Handshake, Kind, Seccomp,
};
use crate::init::{self, InitContext, StartGate};
use crate::namespaces::NsPlan;
use crate::spec::Bundle;
use crate::state::{hook_state, State, Status};
use crate::{cloned_exe, id, util, Error, Result};

impl Runtime {
    pub(super) fn launch(
        &self,
        opts: &CreateOptions,
        mode: Launch,
        io: ProcessIo,
    ) -> Result<Launched> {
        let ProcessIo { stdio, console } = io;
        id::validate_id(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let spec = &bundle.spec;
        let process = spec.process().as_ref().expect("validated");
        crate::attrs::validate(spec)?;
        let mut seccomp = Seccomp::compile(spec)?;
        let terminal = process.terminal() == Some(true);
        let has_console = opts.console_socket.is_some() || console.is_some();
        if terminal && !has_console && mode != Launch::RunForeground {
            return Err(Error::InvalidConfig(
                "process.terminal is true: a detached container needs --console-socket to hand the terminal to".into(),
            ));
        }
        if !terminal && has_console {
            return Err(Error::InvalidConfig(
                "--console-socket was given but process.terminal is false".into(),
            ));
        }
        let plan = NsPlan::for_container(spec)?;
        // `create`'s callers run sealed already (the CLI seals `create`
        // before it parses anything, the shim when it starts). `run` seals
        // here when it must, before anything is made: re-executing starts
        // over.
        let unsealed_exe = if mode == Launch::Create {
            None
        } else if cloned_exe::run_needs_sealed_copy(spec, &plan) {
            cloned_exe::ensure_sealed()?;
            None
        } else {
            cloned_exe::unsealed_identity()
        };

        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .ctx(|| format!("creating runtime root {}", self.root.display()))?;
        let dir = self.state_dir(&opts.id);
        // A user namespace's root opens the exec FIFO in here (as runc, the
        // directory is searchable; the FIFO itself is the mapped root's).
        let mapped_root = mapped_root(spec);
        let dir_mode = if mapped_root.is_some() { 0o711 } else { 0o700 };
        match std::fs::DirBuilder::new().mode(dir_mode).create(&dir.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::ContainerExists(opts.id.clone()))
            }
            Err(e) => {
                return Err(e).ctx(|| format!("creating state directory {}", dir.path.display()))
            }
        }
        let mut cleanup = Cleanup {
            state_dir: Some(dir.path.clone()),
            cgroups: None,
            children: Vec::new(),
        };

        let linux = spec.linux().as_ref().expect("validated");
        let cg_path = berth_cgroups::resolve_cgroups_path(
            linux.cgroups_path().as_ref().and_then(|p| p.to_str()),
            &opts.id,
            self.systemd_cgroup,
        )?;
        let cgroups = berth_cgroups::Manager::new(&cg_path)?;
        // On a host with v1 hierarchies, their cgroups are made while the
        // init sets up its mounts, and it joins them before the first step
        // that needs them. Not when it must join them earlier: before it
        // becomes a user namespace's root (which may not write the host's
        // cgroup files), or before its cgroup namespace is made (whose root
        // is the cgroup it is in then).
        let defer_v1 =
            cgroups.has_v1() && !plan.has(libc::CLONE_NEWUSER) && !plan.has(libc::CLONE_NEWCGROUP);
        let first_part = if defer_v1 { Part::Unified } else { Part::All };
        cgroups.create_part(first_part)?;
        cleanup.cgroups = Some(cgroups.clone());
        // Limits are in place before any process of the container runs.
        let resources = linux.resources().as_ref();
        if let Some(resources) = resources {
            cgroups.check_resources(resources)?;
            cgroups.apply_part(resources, first_part)?;
        }
        let make_v1_cgroups = || -> Result<()> {
            cgroups.create_part(Part::V1)?;
            if let Some(resources) = resources {
                cgroups.apply_part(resources, Part::V1)?;
            }
            Ok(())
        };

        let console_socket = connect_console(opts.console_socket.as_deref(), console)?;
        let state_dir_fd = if mode == Launch::Create {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dir.fifo_path(),
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o622),
                0,
            )
            .ctx(|| "creating the exec FIFO".into())?;
            if let Some((uid, gid)) = mapped_root {
                rustix::fs::chown(
                    dir.fifo_path(),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .ctx(|| "giving the exec FIFO to the container's root".into())?;
            }
            Some(
                rustix::fs::open(
                    &dir.path,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ctx(|| format!("opening {}", dir.path.display()))?,
            )
        } else {
            None
        };

        seccomp.connect_listener()?;
        // Id-mapped trees are made here, in berth's user namespace (mapping a
        // mount needs privilege over its filesystem); the init attaches them.
        let idmapped = crate::idmap::prepare_trees(spec, &bundle.dir)?;
        let signals = (mode == Launch::RunForeground)
            .then(|| foreground_signals(true))
            .transpose()?;
        let annotations: BTreeMap<String, String> = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let run_hooks = |init_pid| {
            let state = hook_state(
                &opts.id,
                Status::Creating,
                init_pid,
                &bundle.dir,
                &annotations,
            );
            let hooks = spec.hooks().as_ref().expect("hooks were announced");
            #[allow(deprecated)]
            init::run_parent_hooks("prestart", hooks.prestart().as_ref(), &state)?;
            init::run_parent_hooks("createRuntime", hooks.create_runtime().as_ref(), &state)
        };
        let new_state = |init_pid, init_start_time| {
            let hooks = spec.hooks().as_ref();
            State {
                id: opts.id.clone(),
                init_pid,
                init_start_time,
                bundle: bundle.dir.clone(),
                rootfs: bundle.rootfs.clone(),
                created: berth_common::time::rfc3339_nano_padded(SystemTime::now()),
                owner: owner_name(),
                annotations: annotations.clone(),
                cgroup_paths: cgroups.paths().to_vec(),
                own_pid_ns: plan.new_pid,
                poststart: hooks
                    .and_then(|h| h.poststart().clone())
                    .unwrap_or_default(),
                poststop: hooks.and_then(|h| h.poststop().clone()).unwrap_or_default(),
                unsealed_exe,
            }
        };
        // While the init sets up: its config copy, and its state file under
        // a name no reader looks for, put in place once the init is ready
        // (with a two-stage init, whose pid comes later, it is written then).
        let staged = RefCell::new(None);
        let meanwhile = |pid: i32| -> Result<()> {
            // The config holds the container's environment: root-only.
            util::write_atomic(&dir.config_path(), &bundle.raw, 0o600)
                .ctx(|| format!("writing {}", dir.config_path().display()))?;
            if plan.two_stage {
                return Ok(());
            }
            // A child gone already is reported by the handshake.
            if let Some((_, start_time)) = util::proc_stat(pid) {
                let state = new_state(pid, start_time);
                let file = dir.stage(&state)?;
                *staged.borrow_mut() = Some((state, file));
            }
            Ok(())
        };
        let handshake = Handshake {
            kind: Kind::Init,
            spec,
            plan: &plan,
            cgroups: &cgroups,
            terminal,
            console: console_socket.as_ref(),
            stdio: stdio.as_ref(),
            preserve_fds: opts.preserve_fds,
            seccomp: &seccomp,
            run_hooks: Some(&run_hooks),
            deferred_cgroups: defer_v1.then_some(&make_v1_cgroups as &dyn Fn() -> Result<()>),
            meanwhile: Some(&meanwhile),
        };
        let init = match handshake.run(&mut cleanup)? {
            Forked::Parent(init) => init,
            Forked::Child(side) => init::container_init(
                &side,
                &InitContext {
                    id: &opts.id,
                    bundle: &bundle,
                    annotations: &annotations,
                    state_dir: state_dir_fd.as_ref(),
                    gate: if mode == Launch::Create {
                        StartGate::Fifo
                    } else {
                        StartGate::Channel
                    },
                    no_pivot: opts.no_pivot,
                    no_new_keyring: opts.no_new_keyring,
                    idmapped: &idmapped,
                },
            ),
        };

        let state = match staged.into_inner() {
            Some((state, file)) if state.init_pid == init.pid => {
                dir.commit(file)?;
                state
            }
            _ => {
                let start_time = util::proc_stat(init.pid)
                    .map(|(_, t)| t)
                    .ok_or_else(|| Error::Init("the container init exited during setup".into()))?;
                let state = new_state(init.pid, start_time);
                dir.save(&state)?;
                state
            }
        };
        if let Some(pid_file) = &opts.pid_file {
            write_pid_file(pid_file, init.pid)?;
        }
        cleanup.disarm();
        Ok(Launched {
            state,
            init,
            signals,
        })
    }
}

fn owner_name() -> String {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return "root".into();
    }
    uid.to_string()
}

/// The host uid and gid of a user-namespaced container's root (container
/// id 0 in linux.uidMappings/gidMappings), if it has mappings.
fn mapped_root(spec: &oci_spec::runtime::Spec) -> Option<(u32, u32)> {
    let linux = spec.linux().as_ref()?;
    let host_of_root = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find_map(|m| (m.container_id() == 0 && m.size() > 0).then_some(m.host_id()))
    };
    Some((
        host_of_root(linux.uid_mappings())?,
        host_of_root(linux.gid_mappings())?,
    ))
}
