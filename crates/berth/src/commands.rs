//! berth's subcommands: flags in, runtime library calls out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use berth_runtime::{CreateOptions, ExecOptions, Runtime};
use oci_spec::runtime::{Capability, LinuxCapabilities, Process};

use crate::args::{flag, opt, parse, Flag, Parsed};

pub(crate) use crate::args::Parsed as Args;

pub const GLOBAL_FLAGS: &[Flag] = &[
    opt(&["root"]),
    opt(&["log"]),
    opt(&["log-format"]),
    flag(&["debug"]),
    flag(&["systemd-cgroup"]),
    opt(&["criu"]),
    opt(&["rootless"]),
    flag(&["help", "h"]),
    flag(&["version", "v"]),
];

const CREATE_FLAGS: &[Flag] = &[
    opt(&["bundle", "b"]),
    opt(&["pid-file"]),
    opt(&["console-socket"]),
    opt(&["pidfd-socket"]),
    flag(&["no-pivot"]),
    flag(&["no-new-keyring"]),
    opt(&["preserve-fds"]),
    flag(&["detach", "d"]),
    flag(&["keep"]),
    flag(&["no-subreaper"]),
];

const EXEC_FLAGS: &[Flag] = &[
    opt(&["process", "p"]),
    flag(&["tty", "t"]),
    opt(&["console-socket"]),
    opt(&["pidfd-socket"]),
    flag(&["detach", "d"]),
    opt(&["pid-file"]),
    opt(&["env", "e"]),
    opt(&["cwd"]),
    opt(&["user", "u"]),
    opt(&["additional-gids", "g"]),
    opt(&["cap", "c"]),
    flag(&["no-new-privs"]),
    opt(&["preserve-fds"]),
    opt(&["apparmor"]),
    opt(&["process-label"]),
    opt(&["cgroup"]),
    flag(&["ignore-paused"]),
];

const UPDATE_FLAGS: &[Flag] = &[
    opt(&["resources", "r"]),
    opt(&["blkio-weight"]),
    opt(&["cpu-period"]),
    opt(&["cpu-quota"]),
    opt(&["cpu-burst"]),
    opt(&["cpu-share"]),
    opt(&["cpu-rt-period"]),
    opt(&["cpu-rt-runtime"]),
    opt(&["cpu-idle"]),
    opt(&["cpuset-cpus"]),
    opt(&["cpuset-mems"]),
    opt(&["memory"]),
    opt(&["memory-reservation"]),
    opt(&["memory-swap"]),
    opt(&["pids-limit"]),
    opt(&["l3-cache-schema"]),
    opt(&["mem-bw-schema"]),
];

pub const USAGE: &str = "berth: an OCI container runtime (runc-compatible command line)

usage: berth [global options] command [command options] [arguments...]

commands:
   create    create a container (its init waits for start)
   start     start the user process of a created container
   run       create and start a container
   exec      run a new process inside a container
   state     print the state of a container as JSON
   list      list containers
   kill      send a signal to a container's init (or, with --all, every process)
   delete    delete a container and everything it holds
   pause     freeze every process of a container
   resume    thaw a paused container
   update    change a container's resource limits
   ps        list the processes of a container
   events    print resource usage and OOM events of a container
   spec      write a default config.json
   features  print the OCI features this runtime supports

global options:
   --root DIR            state directory (default: /run/berth)
   --log FILE            log file (default: stderr)
   --log-format FORMAT   text or json (default: text)
   --debug               log debug messages
   --systemd-cgroup      use the systemd cgroup driver
   --version, -v         print the version
";

/// An error that ends berth with an exit code other than 1, as runc's do:
/// 255 for a failed `exec` (its message prefixed "exec failed: "), 3 for
/// an unknown command.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Which commands create processes inside containers and re-execute from a
/// sealed copy of the binary before anything else. `run` decides once it
/// has read the config: an init alone in a new PID namespace needs no copy
/// (`berth_runtime::cloned_exe::run_needs_sealed_copy`).
pub fn seals_up_front(command: &str) -> bool {
    matches!(command, "create" | "exec")
}

pub fn version() -> String {
    format!(
        "berth version {}\nspec: {}\n",
        env!("CARGO_PKG_VERSION"),
        berth_runtime::OCI_VERSION
    )
}

fn one_id(p: &Parsed, command: &str) -> Result<String> {
    match p.positionals.as_slice() {
        [id] => Ok(id.clone()),
        [] => bail!("{command}: a container id is required"),
        _ => bail!(
            "{command}: expected one container id, got {:?}",
            p.positionals
        ),
    }
}

fn preserve_fds(p: &Parsed) -> Result<u32> {
    p.get("preserve-fds")
        .map(|v| {
            v.parse()
                .map_err(|_| anyhow!("--preserve-fds {v:?} is not a number"))
        })
        .transpose()
        .map(|v| v.unwrap_or(0))
}

fn create_options(p: &Parsed, command: &str) -> Result<CreateOptions> {
    Ok(CreateOptions {
        id: one_id(p, command)?,
        bundle: PathBuf::from(p.get("bundle").unwrap_or(".")),
        pid_file: p.get("pid-file").map(PathBuf::from),
        console_socket: p.get("console-socket").map(PathBuf::from),
        no_pivot: p.is_set("no-pivot"),
        no_new_keyring: p.is_set("no-new-keyring"),
        preserve_fds: preserve_fds(p)?,
    })
}

/// Runs `command` with its arguments; returns the process exit code.
pub fn dispatch(rt: &Runtime, command: &str, args: &[String]) -> Result<i32> {
    match command {
        "create" => {
            let p = parse(args, CREATE_FLAGS, None)?;
            rt.create(&create_options(&p, command)?)?;
            Ok(0)
        }
        "run" => {
            let p = parse(args, CREATE_FLAGS, None)?;
            let code = rt.run(&create_options(&p, command)?, p.is_set("detach"))?;
            Ok(code)
        }
        "start" => {
            let p = parse(args, &[], None)?;
            rt.start(&one_id(&p, command)?)?;
            Ok(0)
        }
        "state" => {
            let p = parse(args, &[], None)?;
            let state = rt.state(&one_id(&p, command)?)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        "kill" => {
            let p = parse(args, &[flag(&["all", "a"])], None)?;
            let (id, sig) = match p.positionals.as_slice() {
                [id] => (id, "SIGTERM"),
                [id, sig] => (id, sig.as_str()),
                _ => bail!("kill: usage: berth kill [--all] <container-id> [signal]"),
            };
            // runc looks the container up before it reads the signal, and
            // takes 0 (an existence check).
            let signal = match sig {
                "0" => 0,
                other => match berth_common::signal::parse_signal(other) {
                    Ok(n) => n,
                    Err(e) => {
                        rt.state(id)?;
                        return Err(e.into());
                    }
                },
            };
            rt.kill(id, signal, p.is_set("all"))?;
            Ok(0)
        }
        "delete" => {
            let p = parse(args, &[flag(&["force", "f"])], None)?;
            if p.positionals.is_empty() {
                bail!("delete: a container id is required");
            }
            for id in &p.positionals {
                rt.delete(id, p.is_set("force"))?;
            }
            Ok(0)
        }
        "list" => {
            let p = parse(args, &[opt(&["format", "f"]), flag(&["quiet", "q"])], None)?;
            list(rt, p.get("format").unwrap_or("table"), p.is_set("quiet"))?;
            Ok(0)
        }
        "exec" => {
            let p = parse(args, EXEC_FLAGS, Some(1))?;
            // Usage errors exit 1; everything after, 255 (runc's codes).
            let needed = if p.get("process").is_some() { 1 } else { 2 };
            if p.positionals.len() < needed {
                bail!("exec: usage: berth exec [options] <container-id> <command> [args...] (or --process FILE)");
            }
            exec(rt, &p).map_err(|e| {
                anyhow::Error::new(Exit {
                    code: 255,
                    message: format!("exec failed: {e:#}"),
                })
            })
        }
        "spec" => {
            let p = parse(args, &[opt(&["bundle", "b"]), flag(&["rootless"])], None)?;
            let dir = PathBuf::from(p.get("bundle").unwrap_or("."));
            let path = dir.join("config.json");
            if path.exists() {
                bail!("file {} exists: remove it first", path.display());
            }
            let spec = berth_runtime::features::default_spec(p.is_set("rootless"));
            std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(0)
        }
        "features" => {
            parse(args, &[], None)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&berth_runtime::features::features())?
            );
            Ok(0)
        }
        "pause" => {
            let p = parse(args, &[], None)?;
            rt.pause(&one_id(&p, command)?)?;
            Ok(0)
        }
        "resume" => {
            let p = parse(args, &[], None)?;
            rt.resume(&one_id(&p, command)?)?;
            Ok(0)
        }
        "update" => {
            let p = parse(args, UPDATE_FLAGS, None)?;
            let id = one_id(&p, command)?;
            rt.update(&id, &crate::manage::resources_from_flags(&p)?)?;
            Ok(0)
        }
        "ps" => {
            let p = parse(args, &[opt(&["format", "f"])], Some(1))?;
            crate::manage::ps(rt, &p)?;
            Ok(0)
        }
        "events" => {
            let p = parse(args, &[flag(&["stats"]), opt(&["interval"])], None)?;
            crate::manage::events(rt, &p)?;
            Ok(0)
        }
        // Refused before their flags are read: nothing of them is supported.
        "checkpoint" | "restore" => bail!("{command} is not implemented by this version of berth"),
        other => Err(anyhow::Error::new(Exit {
            code: 3,
            message: format!("No help topic for '{other}'"),
        })),
    }
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> Result<()> {
    let states = rt.list()?;
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(());
    }
    match format {
        "json" => writeln!(out, "{}", serde_json::to_string(&states)?)?,
        "table" => {
            let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                .map(String::from)
                .to_vec()];
            for s in &states {
                rows.push(vec![
                    s.id.clone(),
                    s.pid.to_string(),
                    s.status.clone(),
                    s.bundle.display().to_string(),
                    s.created.clone(),
                    s.owner.clone(),
                ]);
            }
            write!(out, "{}", table(&rows))?;
        }
        other => bail!("invalid --format {other:?}: table or json"),
    }
    Ok(())
}

/// Columns padded as Go's tabwriter(minwidth 12, padding 3) pads them.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            (rows
                .iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
                + 3)
            .max(12)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}", width = widths[c]));
            }
        }
        text.push('\n');
    }
    text
}

fn exec(rt: &Runtime, p: &Parsed) -> Result<i32> {
    let Some((id, command)) = p.positionals.split_first() else {
        bail!("exec: usage: berth exec [options] <container-id> <command> [args...]");
    };
    let process = match p.get("process") {
        Some(file) => {
            let raw =
                std::fs::read(file).with_context(|| format!("reading process file {file}"))?;
            serde_json::from_slice::<Process>(&raw)
                .with_context(|| format!("parsing process file {file}"))?
        }
        None => {
            if command.is_empty() {
                bail!("exec: a command to run is required (or --process FILE)");
            }
            exec_process_from_flags(rt, id, command, p)?
        }
    };
    let sub_cgroups = p
        .all("cgroup")
        .into_iter()
        .map(|v| match v.split_once(':') {
            Some((controllers, path)) => (
                Some(controllers.split(',').map(str::to_owned).collect()),
                PathBuf::from(path),
            ),
            None => (None, PathBuf::from(&v)),
        })
        .collect();
    let opts = ExecOptions {
        process,
        detach: p.is_set("detach"),
        pid_file: p.get("pid-file").map(PathBuf::from),
        console_socket: p.get("console-socket").map(PathBuf::from),
        preserve_fds: preserve_fds(p)?,
        ignore_paused: p.is_set("ignore-paused"),
        sub_cgroups,
    };
    Ok(rt.exec(id, &opts)?)
}

/// The process of `berth exec id cmd...`: the container's own process as a
/// template, changed by the flags, as runc builds it.
fn exec_process_from_flags(
    rt: &Runtime,
    id: &str,
    command: &[String],
    p: &Parsed,
) -> Result<Process> {
    let spec = rt.container_config(id)?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(command.to_vec()));
    process.set_terminal(Some(p.is_set("tty")));
    process.set_console_size(None);
    let mut env = process.env().clone().unwrap_or_default();
    for entry in p.all("env") {
        let key = entry.split('=').next().unwrap_or("").to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    process.set_env(Some(env));
    if let Some(cwd) = p.get("cwd") {
        process.set_cwd(PathBuf::from(cwd));
    }
    let mut user = process.user().clone();
    if let Some(u) = p.get("user") {
        let (uid, gid) = match u.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (u, None),
        };
        user.set_uid(
            uid.parse()
                .map_err(|_| anyhow!("--user {u:?}: uid must be numeric"))?,
        );
        if let Some(gid) = gid {
            user.set_gid(
                gid.parse()
                    .map_err(|_| anyhow!("--user {u:?}: gid must be numeric"))?,
            );
        }
    }
    let gids = p.all("additional-gids");
    if !gids.is_empty() {
        let parsed: Result<Vec<u32>> = gids
            .iter()
            .flat_map(|g| g.split(','))
            .map(|g| {
                g.parse()
                    .map_err(|_| anyhow!("--additional-gids {g:?} is not a number"))
            })
            .collect();
        user.set_additional_gids(Some(parsed?));
    }
    process.set_user(user);
    let added = p.all("cap");
    if !added.is_empty() {
        let mut caps: LinuxCapabilities = process.capabilities().clone().unwrap_or_default();
        for name in &added {
            let cap: Capability = serde_json::from_value(serde_json::Value::String(name.clone()))
                .map_err(|_| anyhow!("--cap {name:?}: unknown capability"))?;
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
                caps.inheritable().clone(),
                caps.ambient().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut s = set.1.clone().unwrap_or_default();
                s.insert(cap);
                match set.0 {
                    0 => caps.set_bounding(Some(s)),
                    1 => caps.set_effective(Some(s)),
                    2 => caps.set_permitted(Some(s)),
                    3 => caps.set_inheritable(Some(s)),
                    _ => caps.set_ambient(Some(s)),
                };
            }
        }
        process.set_capabilities(Some(caps));
    }
    if p.is_set("no-new-privs") {
        process.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = p.get("apparmor") {
        process.set_apparmor_profile(Some(profile.to_owned()));
    }
    if let Some(label) = p.get("process-label") {
        process.set_selinux_label(Some(label.to_owned()));
    }
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_like_tabwriter() {
        let rows = vec![
            vec!["ID".to_string(), "PID".to_string(), "OWNER".to_string()],
            vec![
                "a-long-container-id".to_string(),
                "1".to_string(),
                "root".to_string(),
            ],
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("{:<22}{:<12}OWNER", "ID", "PID"));
        assert_eq!(
            lines[1],
            format!("{:<22}{:<12}root", "a-long-container-id", "1")
        );
    }
}
