//! Resources applied to temporary cgroupfs-shaped trees: every file written,
//! with the v1-to-v2 conversions. (The real-kernel tests live with berth.)

use std::path::{Path, PathBuf};

use berth_cgroups::Manager;
use oci_spec::runtime::LinuxResources;

struct Tree(PathBuf);

impl Tree {
    fn new(name: &str, files: &[(&str, &str)]) -> Tree {
        let dir = std::env::temp_dir().join(format!("berth-cgtree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, content) in files {
            std::fs::write(dir.join(f), content).unwrap();
        }
        Tree(dir)
    }
    fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.0.join(f)).unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

const V2_FILES: &[&str] = &[
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.weight",
    "io.max",
    "io.bfq.weight",
    "hugetlb.2MB.max",
    "hugetlb.1GB.max",
    "memory.oom.group",
    "memory.high",
];

fn v2_tree(name: &str) -> Tree {
    let mut files: Vec<(&str, &str)> = V2_FILES.iter().map(|f| (*f, "")).collect();
    files.push((
        "cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma",
    ));
    Tree::new(name, &files)
}

#[test]
fn v2_every_file_with_conversions() {
    let t = v2_tree("v2all");
    let m = Manager::from_paths(vec![(String::new(), t.0.clone())]);
    m.apply(&resources(
        r#"{
        "memory": {"limit": 104857600, "swap": 209715200, "reservation": 52428800},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000, "idle": 0, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 64},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "unified": {"memory.high": "90000000"}
    }"#,
    ))
    .unwrap();
    assert_eq!(t.read("memory.max"), "104857600");
    assert_eq!(
        t.read("memory.swap.max"),
        "104857600",
        "v2 swap is memory+swap minus memory"
    );
    assert_eq!(t.read("memory.low"), "52428800");
    assert_eq!(
        t.read("cpu.weight"),
        "39",
        "shares 1024 -> weight 39, as runc converts"
    );
    assert_eq!(t.read("cpu.max"), "50000 100000");
    assert_eq!(t.read("cpu.max.burst"), "1000");
    assert_eq!(t.read("cpu.idle"), "0");
    assert_eq!(t.read("cpuset.cpus"), "0-1");
    assert_eq!(t.read("cpuset.mems"), "0");
    assert_eq!(t.read("pids.max"), "64");
    assert_eq!(
        t.read("io.weight"),
        "4950",
        "blkio weight 500 -> io.weight 4950, as runc converts"
    );
    // The last io.max line written (a real cgroupfs keeps them per device).
    assert_eq!(t.read("io.max"), "8:0 wiops=100");
    assert_eq!(t.read("hugetlb.2MB.max"), "4194304");
    assert_eq!(t.read("memory.high"), "90000000");
}

#[test]
fn v2_unlimited_values() {
    let t = v2_tree("v2max");
    let m = Manager::from_paths(vec![(String::new(), t.0.clone())]);
    m.apply(&resources(r#"{"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 100000}, "pids": {"limit": -1}}"#))
        .unwrap();
    assert_eq!(t.read("memory.max"), "max");
    assert_eq!(
        t.read("memory.swap.max"),
        "max",
        "memory unlimited makes swap unlimited too"
    );
    assert_eq!(t.read("cpu.max"), "max 100000");
    assert_eq!(t.read("pids.max"), "max");
}

#[test]
fn v2_refuses_what_it_cannot_do() {
    let t = v2_tree("v2bad");
    let m = Manager::from_paths(vec![(String::new(), t.0.clone())]);
    let err = m
        .apply(&resources(r#"{"memory": {"swap": 100}}"#))
        .unwrap_err();
    assert!(err.to_string().contains("memory.limit"), "{err}");
    let err = m
        .apply(&resources(r#"{"cpu": {"realtimeRuntime": 1000}}"#))
        .unwrap_err();
    assert!(err.to_string().contains("cgroup v2"), "{err}");
    let err = m
        .apply(&resources(r#"{"unified": {"misc.max": "1"}}"#))
        .unwrap_err();
    assert!(err.to_string().contains("misc"), "{err}");
    let err = m
        .apply(&resources(r#"{"unified": {"../../etc/passwd": "x"}}"#))
        .unwrap_err();
    assert!(
        err.to_string().contains("not a cgroup interface file"),
        "{err}"
    );
    // Nothing was written by the refused requests.
    assert_eq!(t.read("memory.max"), "");
}

#[test]
fn out_of_range_values_are_refused_before_writing() {
    let t = v2_tree("v2range");
    let m = Manager::from_paths(vec![(String::new(), t.0.clone())]);
    for (json, word) in [
        (r#"{"memory": {"limit": -5}}"#, "negative"),
        (r#"{"cpu": {"shares": 1}}"#, "cpu.shares"),
        (r#"{"cpu": {"period": 10}}"#, "cpu.period"),
        (r#"{"cpu": {"quota": 10}}"#, "cpu.quota"),
        (r#"{"cpu": {"cpus": "0;rm -rf"}}"#, "cpu.cpus"),
        (r#"{"blockIO": {"weight": 5}}"#, "blockIO.weight"),
        (r#"{"memory": {"swappiness": 101}}"#, "swappiness"),
        (r#"{"memory": {"limit": 100, "swap": 50}}"#, "below"),
        (
            r#"{"hugepageLimits": [{"pageSize": "2XB", "limit": 1}]}"#,
            "page size",
        ),
        (
            r#"{"devices": [{"allow": true, "type": "c", "access": "rwx"}]}"#,
            "access",
        ),
    ] {
        let err = m.apply(&resources(json)).unwrap_err();
        assert!(err.to_string().contains(word), "{json}: {err}");
    }
    for f in V2_FILES {
        assert_eq!(t.read(f), "", "{f} must be untouched");
    }
}

#[test]
fn v1_files_and_write_order() {
    let mem = Tree::new(
        "v1mem",
        &[
            ("memory.limit_in_bytes", "9223372036854771712"),
            ("memory.memsw.limit_in_bytes", ""),
            ("memory.soft_limit_in_bytes", ""),
            ("memory.swappiness", ""),
            ("memory.oom_control", ""),
        ],
    );
    let cpu = Tree::new(
        "v1cpu",
        &[
            ("cpu.shares", ""),
            ("cpu.cfs_period_us", ""),
            ("cpu.cfs_quota_us", ""),
            ("cpu.rt_period_us", ""),
            ("cpu.rt_runtime_us", ""),
            ("cpu.idle", ""),
            ("cpu.cfs_burst_us", ""),
        ],
    );
    let pids = Tree::new("v1pids", &[("pids.max", "")]);
    let dev = Tree::new("v1dev", &[("devices.allow", ""), ("devices.deny", "")]);
    let m = Manager::from_paths(vec![
        ("memory".into(), mem.0.clone()),
        ("cpu".into(), cpu.0.clone()),
        ("pids".into(), pids.0.clone()),
        ("devices".into(), dev.0.clone()),
    ]);
    m.apply(&resources(
        r#"{"memory": {"limit": 1000000, "swap": 2000000, "reservation": 500000, "swappiness": 10, "disableOOMKiller": true},
            "cpu": {"shares": 512, "quota": 20000, "period": 50000, "realtimePeriod": 1000000, "realtimeRuntime": 950000, "idle": 1, "burst": 5},
            "pids": {"limit": 10},
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"}]}"#,
    ))
    .unwrap();
    assert_eq!(mem.read("memory.limit_in_bytes"), "1000000");
    assert_eq!(mem.read("memory.memsw.limit_in_bytes"), "2000000");
    assert_eq!(mem.read("memory.soft_limit_in_bytes"), "500000");
    assert_eq!(mem.read("memory.swappiness"), "10");
    assert_eq!(mem.read("memory.oom_control"), "1");
    assert_eq!(cpu.read("cpu.shares"), "512");
    assert_eq!(cpu.read("cpu.cfs_period_us"), "50000");
    assert_eq!(cpu.read("cpu.cfs_quota_us"), "20000");
    assert_eq!(cpu.read("cpu.rt_period_us"), "1000000");
    assert_eq!(cpu.read("cpu.rt_runtime_us"), "950000");
    assert_eq!(cpu.read("cpu.idle"), "1");
    assert_eq!(cpu.read("cpu.cfs_burst_us"), "5");
    assert_eq!(pids.read("pids.max"), "10");
    // One rule per write, in order, through one open file (a plain file
    // here, so the writes follow each other): the spec's rules, then the
    // defaults runc appends, ending with ptmx.
    assert_eq!(dev.read("devices.deny"), "a *:* rwm");
    assert_eq!(
        dev.read("devices.allow"),
        [
            "c 10:200 rw",
            "c *:* m",
            "b *:* m",
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 5:0 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:1 rwm",
            "c 136:* rwm",
            "c 5:2 rwm"
        ]
        .concat()
    );
}

#[test]
fn missing_controller_is_an_error() {
    let t = Tree::new("nomem", &[("pids.max", "")]);
    let m = Manager::from_paths(vec![("pids".into(), t.0.clone())]);
    let err = m
        .apply(&resources(r#"{"memory": {"limit": 1000}}"#))
        .unwrap_err();
    assert!(err.to_string().contains("memory controller"), "{err}");
    let _ = Path::new("/");
}

/// Block I/O weights exist only under the CFQ (blkio.weight) or BFQ
/// (blkio.bfq.weight, io.bfq.weight) scheduler: each name is used where it
/// exists, and a weight is refused by name where neither does.
#[test]
fn blkio_weight_follows_the_scheduler_or_is_refused() {
    let weight = r#"{"blockIO": {"weight": 300}}"#;
    let bfq = Tree::new("v1bfq", &[("blkio.bfq.weight", "")]);
    Manager::from_paths(vec![("blkio".into(), bfq.0.clone())])
        .apply(&resources(weight))
        .unwrap();
    assert_eq!(bfq.read("blkio.bfq.weight"), "300");

    let none = Tree::new("v1noweight", &[("blkio.throttle.read_bps_device", "")]);
    let err = Manager::from_paths(vec![("blkio".into(), none.0.clone())])
        .apply(&resources(weight))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blockIO.weight") && err.contains("scheduler"),
        "{err}"
    );
    assert!(!none.0.join("blkio.weight").exists(), "nothing created");
    // Throttles alone need no scheduler.
    Manager::from_paths(vec![("blkio".into(), none.0.clone())])
        .apply(&resources(
            r#"{"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 7}]}}"#,
        ))
        .unwrap();
    assert_eq!(none.read("blkio.throttle.read_bps_device"), "8:0 7");

    let v2 = Tree::new(
        "v2noweight",
        &[("cgroup.controllers", "io"), ("io.max", "")],
    );
    let err = Manager::from_paths(vec![(String::new(), v2.0.clone())])
        .apply(&resources(weight))
        .unwrap_err()
        .to_string();
    assert!(err.contains("io.bfq.weight"), "{err}");
}
