//! Resources on real cgroups (this host is hybrid: v1 controllers plus a
//! cgroup2 hierarchy), update, pause/resume, ps, events, seccomp, devices,
//! and the other process attributes of issue 3.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{cgroup_dirs_of, Env};

fn v1_dir(id: &str, controller: &str) -> std::path::PathBuf {
    cgroup_dirs_of(id)
        .into_iter()
        .find(|d| d.starts_with(format!("/sys/fs/cgroup/{controller}")))
        .unwrap_or_else(|| {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            let path = own
                .lines()
                .find_map(|l| {
                    let mut p = l.splitn(3, ':');
                    p.next();
                    let keys = p.next()?;
                    keys.split(',')
                        .any(|k| k == controller)
                        .then(|| p.next().unwrap().to_owned())
                })
                .unwrap();
            std::path::Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'))
                .join(id)
        })
}

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{dir:?}/{file}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn limits_land_in_cgroup_files_and_update_changes_them() {
    let env = Env::new("reslimits");
    let bundle = env.bundle("b", &["sleep", "60"], |c| {
        c["linux"]["resources"] = json!({
            "memory": {"limit": 67108864, "reservation": 33554432, "swappiness": 10},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 64}
        });
    });
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let mem = v1_dir(&id, "memory");
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(&mem, "memory.soft_limit_in_bytes"), "33554432");
    assert_eq!(read(&mem, "memory.swappiness"), "10");
    let cpu = v1_dir(&id, "cpu");
    assert_eq!(read(&cpu, "cpu.shares"), "512");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&v1_dir(&id, "cpuset"), "cpuset.cpus"), "0");
    assert_eq!(read(&v1_dir(&id, "pids"), "pids.max"), "64");

    env.ok(&[
        "update",
        "--memory",
        "128m",
        "--pids-limit",
        "20",
        "--cpu-quota",
        "20000",
        &id,
    ]);
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "134217728");
    assert_eq!(read(&v1_dir(&id, "pids"), "pids.max"), "20");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "20000");
    // --resources - reads the LinuxResources JSON from stdin.
    let mut child = env
        .cmd(&["update", "--resources", "-", &id])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"memory": {"limit": 100663296}, "cpu": {"shares": 256}}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "100663296");
    assert_eq!(read(&cpu, "cpu.shares"), "256");
    // Bad values are refused and change nothing.
    let err = env.fails(&["update", "--cpu-share", "1", &id]);
    assert!(err.contains("cpu.shares"), "{err}");
    assert_eq!(read(&cpu, "cpu.shares"), "256");
    let err = env.fails(&["update", "--memory", "12q", &id]);
    assert!(err.contains("12q"), "{err}");
    env.ok(&["delete", "--force", &id]);
    assert!(!mem.exists());
}

/// Block I/O weights exist only under the CFQ or BFQ scheduler; hosts with
/// none, mq-deadline or kyber have no weight file, and there berth refuses
/// the weight by name (as runc and crun fail) rather than start a container
/// whose weight nobody enforces.
#[test]
fn block_io_weight_lands_or_is_refused_by_name() {
    let env = Env::new("resblkio");
    let bundle = env.bundle("b", &["sleep", "60"], |c| {
        c["linux"]["resources"] = json!({"blockIO": {"weight": 300}});
    });
    let id = env.id("c");
    let root = std::path::Path::new("/sys/fs/cgroup/blkio");
    let file = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .find(|f| root.join(f).exists());
    match file {
        Some(file) => {
            env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
            assert_eq!(read(&v1_dir(&id, "blkio"), file), "300");
            env.ok(&["delete", "--force", &id]);
        }
        None => {
            let err = env.fails(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
            assert!(
                err.contains("blockIO.weight") && err.contains("scheduler"),
                "{err}"
            );
            assert!(!env.state_dir_exists(&id), "state left for {id}");
            for dir in cgroup_dirs_of(&id) {
                assert!(!dir.exists(), "{dir:?} left");
            }
            assert!(!v1_dir(&id, "blkio").exists(), "blkio cgroup left");
        }
    }
}

#[test]
fn memory_limit_oom_kills_and_events_report_it() {
    let env = Env::new("resoom");
    let bundle = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "sleep 1; x=$(head -c 96m /dev/zero | tr '\\0' a); echo survived ${#x}",
        ],
        |c| {
            c["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
        },
    );
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let out_path = env.dir.join("events.out");
    let mut events = env
        .cmd(&["events", "--interval", "200ms", &id])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    env.wait_status(&id, "stopped");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while events.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = events.kill();
    let text = std::fs::read_to_string(&out_path).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(kinds.contains(&"stats".to_string()), "{text}");
    assert!(
        kinds.contains(&"oom".to_string()),
        "events must report the OOM: {text}"
    );
    let stats: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(stats["id"], id.as_str());
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], 33554432);
    env.ok(&["delete", &id]);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let env = Env::new("respids");
    let bundle = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done 2>/dev/null; wait",
        ],
        |c| {
            c["linux"]["resources"] = json!({"pids": {"limit": 10}});
        },
    );
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    std::thread::sleep(Duration::from_millis(800));
    let pids = v1_dir(&id, "pids");
    let current: u64 = read(&pids, "pids.current").parse().unwrap();
    assert!(current <= 10, "pids.current {current} above the limit");
    let refused: u64 = read(&pids, "pids.events")
        .trim_start_matches("max ")
        .parse()
        .unwrap();
    assert!(refused > 0, "forks beyond the limit were refused");
    // null (as runc prints no pids) if the shell gave up and the container stopped.
    let listed: Option<Vec<i64>> =
        serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(listed.unwrap_or_default().len() <= 10);
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let env = Env::new("respause");
    let shared = env.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let bundle = env.bundle("b", &["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /shared/count; sleep 0.01; done"], |c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind"]}));
    });
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    std::thread::sleep(Duration::from_millis(300));
    env.ok(&["pause", &id]);
    assert_eq!(env.state(&id)["status"], "paused");
    assert!(read(&v1_dir(&id, "freezer"), "freezer.state") == "FROZEN");
    let frozen_at = std::fs::read_to_string(shared.join("count")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        std::fs::read_to_string(shared.join("count")).unwrap(),
        frozen_at,
        "a frozen container does not run"
    );
    let err = env.fails(&["exec", &id, "true"]);
    assert!(err.contains("paused"), "{err}");
    // runc's words for a pause of a paused container.
    let err = env.fails(&["pause", &id]);
    assert!(err.contains("container not running"), "{err}");
    env.ok(&["resume", &id]);
    assert_eq!(env.state(&id)["status"], "running");
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        std::fs::read_to_string(shared.join("count")).unwrap(),
        frozen_at,
        "it runs again"
    );
    let err = env.fails(&["resume", &id]);
    assert!(err.contains("container not paused"), "{err}");
    // A paused container can be force-deleted.
    env.ok(&["pause", &id]);
    env.ok(&["delete", "--force", &id]);
    assert!(!env.state_dir_exists(&id));
}

#[test]
fn ps_and_stats() {
    let env = Env::new("resps");
    let bundle = env.bundle("b", &["sh", "-c", "sleep 60 & sleep 61; true"], |_| {});
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    std::thread::sleep(Duration::from_millis(200));
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.contains(&env.state(&id)["pid"].as_i64().unwrap()));
    let table = env.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert!(
        table.contains("sleep 60") && table.contains("sleep 61"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 4, "{table}");
    let stats: Value = serde_json::from_str(&env.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert!(stats["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert_eq!(stats["data"]["pids"]["current"], 3);
    assert!(stats["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0);
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn seccomp_profile_sets_the_errno() {
    let env = Env::new("resseccomp");
    let out = env.run_ok("c", &["sh", "-c", "mkdir /tmp/x 2>&1; ls /tmp"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 40},
                {"names": ["not_a_syscall_anywhere"], "action": "SCMP_ACT_KILL"}
            ]
        });
    });
    assert!(
        out.contains("Too many levels of symbolic links"),
        "mkdir must fail with errno 40 (ELOOP): {out}"
    );
    // The RuntimeDefault profile: user namespaces cannot be created without CAP_SYS_ADMIN.
    let profile = serde_json::to_value(berth_common::seccomp_profile::runtime_default(&[
        "CAP_CHOWN".into(),
    ]))
    .unwrap();
    let out = env.run_ok(
        "d",
        &["sh", "-c", "unshare -U true 2>&1; echo rc=$?"],
        |c| c["linux"]["seccomp"] = profile.clone(),
    );
    assert!(
        out.contains("rc=1") && out.contains("not permitted"),
        "{out}"
    );
    let out = env.run_ok(
        "e",
        &["sh", "-c", "unshare -U true 2>&1; echo rc=$?"],
        |_| {},
    );
    assert!(out.contains("rc=0"), "without seccomp it works: {out}");
    // An invalid action or architecture is a clear error, nothing left behind.
    for seccomp in [
        json!({"defaultAction": "SCMP_ACT_BOOM"}),
        json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}),
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
    ] {
        let bundle = env.bundle("bad", &["true"], |c| {
            c["linux"]["seccomp"] = seccomp.clone()
        });
        let id = env.id("bad");
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
        assert!(err.contains("SCMP_") || err.contains("seccomp"), "{err}");
        assert!(!env.state_dir_exists(&id));
    }
}

#[test]
fn denied_devices_cannot_be_opened() {
    let env = Env::new("resdevices");
    let tun =
        json!([{"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438}]);
    let out = env.run_ok(
        "deny",
        &[
            "sh",
            "-c",
            "cat /dev/net/tun 2>&1; cat /dev/null && echo null-ok",
        ],
        |c| {
            c["linux"]["devices"] = tun.clone();
            c["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
        },
    );
    assert!(
        out.contains("Operation not permitted"),
        "tun is denied: {out}"
    );
    assert!(
        out.contains("null-ok"),
        "the default devices stay usable: {out}"
    );
    let out = env.run_ok("allow", &["sh", "-c", "cat /dev/net/tun 2>&1; true"], |c| {
        c["linux"]["devices"] = tun.clone();
        c["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]});
    });
    assert!(
        !out.contains("Operation not permitted"),
        "tun is allowed: {out}"
    );
    let bundle = env.bundle("bad", &["true"], |c| {
        c["linux"]["resources"] =
            json!({"devices": [{"allow": true, "type": "c", "access": "rwz"}]});
    });
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("bad")]);
    assert!(err.contains("rwz"), "{err}");
}

#[test]
fn bad_resources_leave_nothing_behind() {
    let env = Env::new("resbad");
    for (resources, cgroups_path, expect) in [
        (json!({"memory": {"limit": -7}}), None, "memory.limit"),
        (json!({"cpu": {"period": 5}}), None, "cpu.period"),
        (json!({}), Some("/a/../../escape"), "escape"),
        (
            json!({"hugepageLimits": [{"pageSize": "3XB", "limit": 1}]}),
            None,
            "page size",
        ),
        // Passes the checks, refused by the kernel when written: on a host
        // with v1 hierarchies that is while the init sets up (its cgroups
        // are made then), and the init goes with them.
        (json!({"cpu": {"cpus": "97"}}), None, "cpuset.cpus"),
    ] {
        let bundle = env.bundle("b", &["true"], |c| {
            c["linux"]["resources"] = resources.clone();
            if let Some(p) = cgroups_path {
                c["linux"]["cgroupsPath"] = json!(p);
            }
        });
        let id = env.id("c");
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(!env.state_dir_exists(&id));
        for dir in cgroup_dirs_of(&id) {
            assert!(!dir.exists(), "{dir:?} left");
        }
    }
    assert!(!std::path::Path::new("/sys/fs/cgroup/pids/escape").exists());
}

/// The init joins its cgroup in every hierarchy before its program runs.
/// Without a cgroup namespace the v1 cgroups are made (on this hybrid host)
/// while the init sets up; with one, before the namespace is made, whose
/// root is then the container's cgroup everywhere.
#[test]
fn the_program_runs_in_the_containers_cgroup_in_every_hierarchy() {
    let env = Env::new("cgjoin");
    let host = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for cgroupns in [false, true] {
        let id = env.id("c");
        let bundle = env.bundle("b", &["cat", "/proc/self/cgroup"], |c| {
            let namespaces = c["linux"]["namespaces"].as_array_mut().unwrap();
            namespaces.retain(|n| n["type"] != "cgroup");
            if cgroupns {
                namespaces.push(json!({"type": "cgroup"}));
            }
        });
        let out = env.ok(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
        assert_eq!(out.lines().count(), host.lines().count(), "{out}");
        let want = if cgroupns {
            ":/".to_string()
        } else {
            format!("/{id}")
        };
        for line in out.lines() {
            assert!(line.ends_with(&want), "{line} in {out}");
        }
        assert!(!env.state_dir_exists(&id));
        for dir in cgroup_dirs_of(&id) {
            assert!(!dir.exists(), "{dir:?} left");
        }
    }
}

#[test]
fn personality_scheduler_io_priority_and_lsm() {
    let env = Env::new("resattrs");
    let out = env.run_ok(
        "c",
        &[
            "sh",
            "-c",
            "uname -m; cut -d' ' -f41 /proc/self/stat; ionice -p $$",
        ],
        |c| {
            c["linux"]["personality"] = json!({"domain": "LINUX32"});
            c["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 5});
            c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "i686", "LINUX32 personality: {out}");
    assert_eq!(lines[1], "3", "SCHED_BATCH is policy 3: {out}");
    assert!(lines[2].contains("idle"), "{out}");
    if !std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists() {
        let bundle = env.bundle("aa", &["true"], |c| {
            c["process"]["apparmorProfile"] = json!("berth-test")
        });
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("aa")]);
        assert!(err.contains("AppArmor is not enabled"), "{err}");
    }
    if !std::path::Path::new("/sys/fs/selinux").exists() {
        let bundle = env.bundle("se", &["true"], |c| {
            c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0")
        });
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("se")]);
        assert!(err.contains("SELinux is not enabled"), "{err}");
    }
    let bundle = env.bundle("sched", &["true"], |c| {
        c["process"]["scheduler"] = json!({"policy": "SCHED_FIFO", "priority": 0})
    });
    let err = env.fails(&[
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        &env.id("sched"),
    ]);
    assert!(err.contains("1..99"), "{err}");
}

/// A private mount namespace whose /sys/fs/cgroup is this machine's cgroup2
/// hierarchy alone: the view a v2-only host gives. Commands run in it
/// through nsenter.
struct V2Namespace {
    holder: std::process::Child,
}

impl V2Namespace {
    fn new() -> V2Namespace {
        let holder = std::process::Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && echo ready && exec sleep 600",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut holder = holder;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        V2Namespace { holder }
    }

    fn berth(&self, env: &Env, args: &[&str]) -> std::process::Output {
        let out = env.dir.join("v2.out");
        let err = env.dir.join("v2.err");
        let status = std::process::Command::new("nsenter")
            .args([
                "-t",
                &self.holder.id().to_string(),
                "-m",
                crate::common::BERTH,
                "--root",
                env.root.to_str().unwrap(),
            ])
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        std::process::Output {
            status,
            stdout: std::fs::read(&out).unwrap(),
            stderr: std::fs::read(&err).unwrap(),
        }
    }

    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let out = self.berth(env, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file of the cgroup2 hierarchy, as seen from inside.
    fn cgroup_file(&self, rel: &str) -> String {
        let path = format!("/proc/{}/root/sys/fs/cgroup/{rel}", self.holder.id());
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    }
}

impl Drop for V2Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn cgroup_v2_devices_hugetlb_and_freezer() {
    let env = Env::new("resv2");
    let ns = V2Namespace::new();
    let shared = env.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let cg = format!("berth-test-v2res-{}", std::process::id());
    let bundle = env.bundle("b", &["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /shared/count; sleep 0.01; done"], |c| {
        c["linux"]["cgroupsPath"] = json!(format!("/{cg}"));
        c["linux"]["devices"] = json!([{"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438}]);
        c["linux"]["resources"] = json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]
        });
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind"]}));
    });
    let id = env.id("c");
    ns.ok(
        &env,
        &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id],
    );
    assert_eq!(ns.cgroup_file(&format!("{cg}/hugetlb.2MB.max")), "4194304");
    // The eBPF device program denies tun and keeps the defaults usable.
    let out = ns.ok(
        &env,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "cat /dev/net/tun 2>&1; echo x > /dev/null && echo null-ok",
        ],
    );
    assert!(
        out.contains("Operation not permitted") && out.contains("null-ok"),
        "{out}"
    );
    // Updating replaces the program: tun becomes usable.
    let rules = env.dir.join("rules.json");
    std::fs::write(
        &rules,
        json!({"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]}).to_string(),
    )
    .unwrap();
    ns.ok(
        &env,
        &["update", "--resources", rules.to_str().unwrap(), &id],
    );
    let out = ns.ok(
        &env,
        &["exec", &id, "sh", "-c", "cat /dev/net/tun 2>&1; true"],
    );
    assert!(!out.contains("Operation not permitted"), "{out}");
    // cgroup.freeze
    ns.ok(&env, &["pause", &id]);
    assert_eq!(ns.cgroup_file(&format!("{cg}/cgroup.freeze")), "1");
    assert!(ns.ok(&env, &["state", &id]).contains("\"paused\""));
    let frozen_at = std::fs::read_to_string(shared.join("count")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(shared.join("count")).unwrap(),
        frozen_at
    );
    ns.ok(&env, &["resume", &id]);
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        std::fs::read_to_string(shared.join("count")).unwrap(),
        frozen_at
    );
    let stats: Value = serde_json::from_str(&ns.ok(&env, &["events", "--stats", &id])).unwrap();
    assert_eq!(stats["data"]["hugetlb"]["2MB"]["max"], 4194304, "{stats}");
    ns.ok(&env, &["delete", "--force", &id]);
    assert!(
        !std::path::Path::new(&format!("/proc/{}/root/sys/fs/cgroup/{cg}", ns.holder.id()))
            .exists()
    );
}

#[test]
fn seccomp_notify_hands_the_fd_to_the_listener() {
    let env = Env::new("resnotify");
    let sock = env.dir.join("listener.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || {
        let (state, fd) = crate::common::receive_console(&listener);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // Answer the first intercepted syscall with ENOTSUP (95).
        let req = libseccomp::ScmpNotifReq::receive(raw).unwrap();
        libseccomp::ScmpNotifResp::new_error(req.id, -95, libseccomp::ScmpNotifRespFlags::empty())
            .respond(raw)
            .unwrap();
        state
    });
    let out = env.run_ok("c", &["sh", "-c", "mkdir /tmp/x 2>&1; true"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock,
            "listenerMetadata": "agent-meta",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    assert!(
        out.contains("not supported"),
        "the listener's answer reaches the container: {out}"
    );
    let state: Value = serde_json::from_str(&agent.join().unwrap()).unwrap();
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["metadata"], "agent-meta");
    assert_eq!(state["state"]["id"], env.id("c").as_str());
    assert!(state["pid"].as_i64().unwrap() > 0);
}

#[test]
fn memory_policy_and_exec_cpu_affinity() {
    let env = Env::new("resnuma");
    let out = env.run_ok("c", &["sh", "-c", "head -1 /proc/self/numa_maps"], |c| {
        c["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND", "nodes": "0"});
    });
    assert!(out.contains("bind:0"), "{out}");
    let bundle = env.bundle("bad", &["true"], |c| {
        c["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND"})
    });
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("bad")]);
    assert!(err.contains("needs nodes"), "{err}");

    let bundle = env.bundle("aff", &["sleep", "60"], |_| {});
    let id = env.id("aff");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let process = env.dir.join("p.json");
    std::fs::write(
        &process,
        json!({"args": ["sh", "-c", "grep Cpus_allowed_list /proc/self/status"], "cwd": "/", "user": {"uid": 0, "gid": 0},
               "env": ["PATH=/bin"], "execCPUAffinity": {"initial": "0", "final": "0"}})
        .to_string(),
    )
    .unwrap();
    let out = env.ok(&["exec", "--process", process.to_str().unwrap(), &id]);
    assert!(
        out.trim().ends_with("\t0"),
        "exec'd process pinned to CPU 0: {out}"
    );
    env.ok(&["delete", "--force", &id]);
}
