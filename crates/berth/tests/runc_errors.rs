//! berth's errors as runc's clients read them. containerd and its shims
//! decide what a runtime error means from its text and exit code, so for
//! every command they run, in every state a container can be in, berth must
//! say what runc says. What the clients look for (containerd 1.6):
//!
//! - `pkg/process` checkKillError (every Kill of a task, e.g. the SIGKILL of
//!   StopPodSandbox): "os: process already finished", "container not
//!   running", "no such process" mean the process is gone (NotFound),
//!   "does not exist" means the container is gone; anything else is
//!   "unknown error after kill" and fails the request.
//! - `pkg/process` Init.delete (task Delete): "does not exist" is ignored.
//! - `runtimeError`: the message of the last `"level":"error"` line of the
//!   `--log` file (JSON lines, each one parsed) becomes the task's error.
//! - go-runc: a command failed if its exit status is non-zero; its
//!   combined output is appended to the error (`exit status 1: <stderr>`).
//!
//! Each case runs on a fresh container, with berth and, where it is
//! installed (Debian's runc 1.1.5), with runc: berth's exit code must be
//! runc's, and both must print the table's text in a `level=error` line.
//! Needs root. Run: `cargo test -p berth --test runc_errors -- --nocapture`

#[allow(dead_code)]
#[path = "integration/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::prelude as support;
use serde_json::{json, Value};
use support::{find_tool, remove_cgroup_tree, require_root, run_in, unique, Outcome, TempDir};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Created,
    Running,
    Paused,
    Stopped,
    Missing,
}

const STATES: [St; 5] = [
    St::Created,
    St::Running,
    St::Paused,
    St::Stopped,
    St::Missing,
];

/// What a command must do: exit code, a text its stderr must carry (the
/// part of runc's message a client matches, or all of it), and the
/// container's status afterwards ("gone" when it no longer exists).
#[derive(Debug, Clone, Copy)]
struct Want {
    code: i32,
    text: &'static str,
    after: Option<&'static str>,
}

const fn ok(after: Option<&'static str>) -> Want {
    Want {
        code: 0,
        text: "",
        after,
    }
}

const fn fail(code: i32, text: &'static str) -> Want {
    Want {
        code,
        text,
        after: None,
    }
}

const GONE: &str = "container does not exist";
const NOT_RUNNING: &str = "container not running";
const NOT_PAUSED: &str = "container not paused";

/// A runtime binary with its own state root.
struct Rt {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
}

impl Rt {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }

    fn run(&self, scratch: &Path, args: &[&str]) -> Outcome {
        run_in(scratch, &mut self.cmd(args), Duration::from_secs(30))
    }

    fn ok(&self, scratch: &Path, args: &[&str]) {
        let out = self.run(scratch, args);
        assert!(out.success(), "{}: {}", self.name, out.describe());
    }

    /// The container's status, or "gone".
    fn status(&self, scratch: &Path, id: &str) -> String {
        let out = self.run(scratch, &["state", id]);
        if !out.success() {
            return "gone".into();
        }
        let v: Value = serde_json::from_str(&out.stdout).expect("state is JSON");
        v["status"].as_str().unwrap_or_default().to_owned()
    }

    fn wait_status(&self, scratch: &Path, id: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.status(scratch, id);
            if now == want || Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One test's world: berth (and runc, if installed), each with a root in a
/// temporary directory, a shared busybox rootfs, and a cgroup parent of
/// their own. Drop force-deletes every container either left, then kills
/// and removes whatever is still in the cgroup parent.
struct World {
    dir: TempDir,
    rootfs: PathBuf,
    cgroup_parent: String,
    runtimes: Vec<Rt>,
}

impl World {
    fn new(prefix: &str) -> World {
        require_root();
        let dir = TempDir::new(prefix);
        let rootfs = dir.join("rootfs");
        common::make_busybox_rootfs(&rootfs);
        let mut runtimes = vec![Rt {
            name: "berth",
            bin: PathBuf::from(BERTH),
            root: dir.join("berth-root"),
        }];
        match find_tool("runc", &["/usr/sbin/runc"]) {
            Some(bin) => runtimes.push(Rt {
                name: "runc",
                bin,
                root: dir.join("runc-root"),
            }),
            None => eprintln!("runc is not installed: checking berth against the table alone"),
        }
        World {
            cgroup_parent: format!("/{}", unique(prefix)),
            dir,
            rootfs,
            runtimes,
        }
    }

    fn scratch(&self) -> &Path {
        &self.dir.path
    }

    /// A bundle for container `id` running `args`, changed by `edit`.
    fn bundle(&self, id: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let bundle = self.dir.join(format!("bundle-{id}"));
        std::fs::create_dir_all(&bundle).unwrap();
        let mut config = berth_runtime::features::default_spec(false);
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["root"] = json!({"path": self.rootfs, "readonly": false});
        config["linux"]["cgroupsPath"] = json!(format!("{}/{id}", self.cgroup_parent));
        edit(&mut config);
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        bundle
    }

    /// A new container in state `st` (for `Missing`, just an unused id).
    fn prepare(&self, rt: &Rt, st: St) -> String {
        let id = unique("c");
        if st == St::Missing {
            return id;
        }
        let bundle = self.bundle(&id, &["sleep", "1000"], |_| {});
        let s = self.scratch();
        rt.ok(s, &["create", "--bundle", bundle.to_str().unwrap(), &id]);
        match st {
            St::Created => {}
            St::Running => rt.ok(s, &["start", &id]),
            St::Paused => {
                rt.ok(s, &["start", &id]);
                rt.ok(s, &["pause", &id]);
            }
            St::Stopped => {
                rt.ok(s, &["start", &id]);
                rt.ok(s, &["kill", &id, "KILL"]);
                let now = rt.wait_status(s, &id, "stopped");
                assert_eq!(now, "stopped", "{}: container {id} did not stop", rt.name);
            }
            St::Missing => unreachable!(),
        }
        let want = match st {
            St::Created => "created",
            St::Running => "running",
            St::Paused => "paused",
            _ => "stopped",
        };
        assert_eq!(rt.status(s, &id), want, "{}: preparing {id}", rt.name);
        id
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for rt in &self.runtimes {
            for e in std::fs::read_dir(&rt.root).into_iter().flatten().flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = rt.run(&self.dir.path, &["delete", "--force", &id]);
            }
        }
        let left = remove_cgroup_tree(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("runc_errors cleanup: cgroups left: {left:?}");
        }
    }
}

/// The logrus messages (`msg="..."`, unescaped) of a text-format stderr.
fn error_messages(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("level=error"))
        .filter_map(|l| {
            let quoted = &l[l.find("msg=")? + 4..];
            let end = quoted.rfind('"')?;
            serde_json::from_str::<String>(&quoted[..=end]).ok()
        })
        .collect()
}

/// Runs `args` (with `{id}` standing for the container) in every state,
/// with each runtime, and checks each against `wants` (in `STATES` order).
fn check(args: &[&str], wants: [Want; 5]) {
    let world = World::new("rerr");
    let s = world.scratch();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (st, want) in STATES.iter().zip(wants) {
        let mut codes = Vec::new();
        for rt in &world.runtimes {
            let id = world.prepare(rt, *st);
            let argv: Vec<&str> = args
                .iter()
                .map(|a| if *a == "{id}" { id.as_str() } else { a })
                .collect();
            let out = rt.run(s, &argv);
            let code = out.code.unwrap_or(-1);
            codes.push(code);
            let messages = error_messages(&out.stderr);
            report.push(format!(
                "{:<6} {:<8} {:<26} exit {:>3}  {}",
                rt.name,
                format!("{st:?}"),
                args.join(" "),
                code,
                messages.join(" | ")
            ));
            let mut problems = Vec::new();
            if code != want.code {
                problems.push(format!("exit code {code}, want {}", want.code));
            }
            if want.code != 0 && !messages.iter().any(|m| m.contains(want.text)) {
                problems.push(format!("no level=error line containing {:?}", want.text));
            }
            if let Some(after) = want.after {
                let now = rt.wait_status(s, &id, after);
                if now != after {
                    problems.push(format!("status afterwards {now:?}, want {after:?}"));
                }
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{} in state {st:?}: {}\n{}",
                    rt.name,
                    problems.join("; "),
                    out.describe()
                ));
            }
        }
        if codes.len() == 2 && codes[0] != codes[1] {
            failures.push(format!(
                "{:?} in state {st:?}: berth exits {}, runc {}",
                args, codes[0], codes[1]
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// One test per command, each row in STATES order:
// created, running, paused, stopped, nonexistent.

#[test]
fn kill() {
    let stopped = Some("stopped");
    check(
        &["kill", "{id}", "KILL"],
        [
            ok(stopped),
            ok(stopped),
            // runc thaws a paused container for SIGKILL: it must die.
            ok(stopped),
            fail(1, NOT_RUNNING),
            fail(1, GONE),
        ],
    );
}

#[test]
fn kill_all() {
    let stopped = Some("stopped");
    check(
        &["kill", "--all", "{id}", "KILL"],
        [
            ok(stopped),
            ok(stopped),
            ok(stopped),
            // Nothing left to signal is no error with --all.
            ok(stopped),
            fail(1, GONE),
        ],
    );
}

#[test]
fn kill_signal_zero() {
    check(
        &["kill", "{id}", "0"],
        [
            ok(Some("created")),
            ok(Some("running")),
            ok(Some("paused")),
            fail(1, NOT_RUNNING),
            fail(1, GONE),
        ],
    );
}

#[test]
fn delete() {
    check(
        &["delete", "{id}"],
        [
            ok(Some("gone")),
            fail(1, "that is not stopped: running"),
            fail(1, "that is not stopped: paused"),
            ok(Some("gone")),
            fail(1, GONE),
        ],
    );
}

#[test]
fn delete_force() {
    let gone = Some("gone");
    check(
        &["delete", "--force", "{id}"],
        [ok(gone), ok(gone), ok(gone), ok(gone), ok(None)],
    );
}

#[test]
fn pause() {
    check(
        &["pause", "{id}"],
        [
            ok(Some("paused")),
            ok(Some("paused")),
            fail(1, NOT_RUNNING),
            fail(1, NOT_RUNNING),
            fail(1, GONE),
        ],
    );
}

#[test]
fn resume() {
    check(
        &["resume", "{id}"],
        [
            fail(1, NOT_PAUSED),
            fail(1, NOT_PAUSED),
            ok(Some("running")),
            fail(1, NOT_PAUSED),
            fail(1, GONE),
        ],
    );
}

#[test]
fn exec() {
    check(
        &["exec", "{id}", "true"],
        [
            ok(Some("created")),
            ok(Some("running")),
            fail(
                255,
                "exec failed: cannot exec in a paused container (use --ignore-paused to override)",
            ),
            fail(255, "exec failed: cannot exec in a stopped container"),
            fail(255, "exec failed: container does not exist"),
        ],
    );
}

#[test]
fn ps() {
    check(
        &["ps", "--format", "json", "{id}"],
        [
            ok(Some("created")),
            ok(Some("running")),
            ok(Some("paused")),
            ok(Some("stopped")),
            fail(1, GONE),
        ],
    );
}

#[test]
fn state() {
    check(
        &["state", "{id}"],
        [
            ok(Some("created")),
            ok(Some("running")),
            ok(Some("paused")),
            ok(Some("stopped")),
            fail(1, GONE),
        ],
    );
}

#[test]
fn start() {
    check(
        &["start", "{id}"],
        [
            ok(Some("running")),
            fail(1, "cannot start an already running container"),
            fail(1, "cannot start a container in the paused state"),
            fail(1, "cannot start a container that has stopped"),
            fail(1, GONE),
        ],
    );
}

#[test]
fn update_and_events_of_a_stopped_container() {
    let world = World::new("rerr-upd");
    let s = world.scratch();
    for rt in &world.runtimes {
        let id = world.prepare(rt, St::Stopped);
        for (args, text) in [
            (vec!["update", "--memory", "100m", &id], NOT_RUNNING),
            (
                vec!["events", "--stats", &id],
                "is not running", // runc: "container with id X is not running"
            ),
        ] {
            let out = rt.run(s, &args);
            assert_eq!(out.code, Some(1), "{}: {}", rt.name, out.describe());
            assert!(
                error_messages(&out.stderr).iter().any(|m| m.contains(text)),
                "{}: want {text:?}: {}",
                rt.name,
                out.describe()
            );
        }
    }
}

/// A pause of a created container: runc shows it "paused" until resumed,
/// then "created" again, and refuses to start it meanwhile.
#[test]
fn paused_created_container() {
    let world = World::new("rerr-pc");
    let s = world.scratch();
    for rt in &world.runtimes {
        let id = world.prepare(rt, St::Created);
        rt.ok(s, &["pause", &id]);
        assert_eq!(rt.status(s, &id), "paused", "{}", rt.name);
        let out = rt.run(s, &["start", &id]);
        assert_eq!(out.code, Some(1), "{}: {}", rt.name, out.describe());
        rt.ok(s, &["resume", &id]);
        assert_eq!(rt.status(s, &id), "created", "{}", rt.name);
        rt.ok(s, &["start", &id]);
        assert_eq!(rt.status(s, &id), "running", "{}", rt.name);
    }
}

/// The container's init is gone (reaped by its monitor) while processes
/// it started live on in its cgroup: a container without its own PID
/// namespace. `state` says stopped, `ps` still lists them, `kill` of the
/// init is "container not running", `kill --all` reaches them, `delete`
/// (with or without --force) kills them and removes the cgroup.
#[test]
fn init_gone_processes_left() {
    let world = World::new("rerr-left");
    let s = world.scratch();
    for rt in &world.runtimes {
        for delete in [
            &["delete"][..],
            &["delete", "--force"][..],
            &["kill-all"][..],
        ] {
            let id = unique("c");
            let bundle = world.bundle(
                &id,
                &["sh", "-c", "sleep 1001 & sleep 1002 & exec sleep 1003"],
                |c| {
                    let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
                    ns.retain(|n| n["type"] != "pid");
                },
            );
            rt.ok(s, &["create", "--bundle", bundle.to_str().unwrap(), &id]);
            rt.ok(s, &["start", &id]);
            let cgroup = format!("{}/{id}", world.cgroup_parent);
            let deadline = Instant::now() + Duration::from_secs(5);
            while support::containerd::cgroup_pids(&cgroup).len() < 3 {
                assert!(
                    Instant::now() < deadline,
                    "{}: children never started",
                    rt.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let state: Value = serde_json::from_str(&rt.run(s, &["state", &id]).stdout).unwrap();
            let init = state["pid"].as_i64().unwrap() as i32;
            // SAFETY: kill(2) of the container's init, which this test made.
            unsafe { libc::kill(init, libc::SIGKILL) };
            assert_eq!(rt.wait_status(s, &id, "stopped"), "stopped", "{}", rt.name);
            let state: Value = serde_json::from_str(&rt.run(s, &["state", &id]).stdout).unwrap();
            assert_eq!(state["pid"], 0, "{}: {state}", rt.name);

            let out = rt.run(s, &["ps", "--format", "json", &id]);
            assert!(out.success(), "{}: {}", rt.name, out.describe());
            let pids: Vec<i32> = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(pids.len(), 2, "{}: the two sleeps: {}", rt.name, out.stdout);

            let out = rt.run(s, &["kill", &id, "KILL"]);
            assert_eq!(out.code, Some(1), "{}: {}", rt.name, out.describe());
            assert!(
                error_messages(&out.stderr).iter().any(|m| m == NOT_RUNNING),
                "{}: {}",
                rt.name,
                out.describe()
            );
            let out = rt.run(s, &["kill", "--all", &id, "0"]);
            assert!(out.success(), "{}: {}", rt.name, out.describe());

            if delete == ["kill-all"] {
                rt.ok(s, &["kill", "--all", &id, "KILL"]);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !support::containerd::cgroup_pids(&cgroup).is_empty() {
                    assert!(
                        Instant::now() < deadline,
                        "{}: kill --all left {:?}",
                        rt.name,
                        support::containerd::cgroup_pids(&cgroup)
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                rt.ok(s, &["delete", &id]);
            } else {
                let mut args = delete.to_vec();
                args.push(&id);
                let out = rt.run(s, &args);
                assert!(out.success(), "{}: {}", rt.name, out.describe());
            }
            assert_eq!(rt.status(s, &id), "gone", "{}", rt.name);
            for pid in &pids {
                assert!(
                    !common::alive(*pid as i64),
                    "{}: {:?} left process {pid} alive",
                    rt.name,
                    delete
                );
            }
            let left = support::wait_cgroup_gone(&cgroup, Duration::from_secs(5));
            assert!(left.is_empty(), "{}: {delete:?} left {left:?}", rt.name);
        }
    }
}

/// Where the error goes, in runc's formats: a logrus text line on stderr;
/// with --log-format json a JSON line on stderr; with --log, the line in
/// the file and the bare message on stderr. `restore` and `checkpoint`
/// are refused the same way, and `features` does not offer them.
#[test]
fn error_format() {
    let world = World::new("rerr-fmt");
    let s = world.scratch();
    for rt in &world.runtimes {
        let log = world.dir.join(format!("{}.log", rt.name));
        let out = rt.run(s, &["kill", "nope", "KILL"]);
        assert_eq!(out.code, Some(1));
        let line = out.stderr.lines().next().unwrap_or_default();
        assert!(
            line.starts_with("time=\"")
                && line.contains(" level=error msg=\"container does not exist\""),
            "{}: {line:?}",
            rt.name
        );

        let out = rt.run(s, &["--log-format", "json", "kill", "nope", "KILL"]);
        assert_eq!(out.code, Some(1));
        let v: Value = serde_json::from_str(out.stderr.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: stderr is not one JSON line ({e}): {}",
                rt.name, out.stderr
            )
        });
        assert_eq!(v["level"], "error", "{}", rt.name);
        assert_eq!(v["msg"], GONE, "{}", rt.name);

        let out = rt.run(
            s,
            &[
                "--log",
                log.to_str().unwrap(),
                "--log-format",
                "json",
                "delete",
                "nope",
            ],
        );
        assert_eq!(out.code, Some(1));
        assert_eq!(
            out.stderr.trim(),
            GONE,
            "{}: bare message on stderr",
            rt.name
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "error", "{}", rt.name);
        assert_eq!(last["msg"], GONE, "{}", rt.name);
        assert!(
            last["time"].as_str().unwrap().ends_with('Z'),
            "{}: {last}",
            rt.name
        );
    }

    let berth = &world.runtimes[0];
    for command in ["restore", "checkpoint"] {
        for json in [false, true] {
            let mut args = vec![];
            if json {
                args.extend(["--log-format", "json"]);
            }
            args.extend([command, "--image-path", "/nowhere", "some-id"]);
            let out = berth.run(s, &args);
            assert_eq!(out.code, Some(1), "{}", out.describe());
            let msg = if json {
                let v: Value = serde_json::from_str(out.stderr.trim()).unwrap();
                assert_eq!(v["level"], "error");
                v["msg"].as_str().unwrap().to_owned()
            } else {
                error_messages(&out.stderr).join("")
            };
            assert!(msg.contains("not implemented"), "{}", out.describe());
        }
    }
    let out = berth.run(s, &["features"]);
    assert!(out.success(), "{}", out.describe());
    let mut features: Value = serde_json::from_str(&out.stdout).unwrap();
    // CAP_CHECKPOINT_RESTORE is a capability, not an offer to restore.
    features["linux"]["capabilities"] = Value::Null;
    let text = features.to_string().to_lowercase();
    for word in ["restore", "checkpoint", "criu"] {
        assert!(!text.contains(word), "features offers {word}: {text}");
    }
    let out = berth.run(s, &["--help"]);
    assert!(!out.stdout.contains("restore"), "{}", out.stdout);
}
