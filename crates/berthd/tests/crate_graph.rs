//! The daemon side never links the code that forks and execs containers:
//! berthd talks to shims, and only shims (through `berth-runtime`) run
//! containers. This walks Cargo's resolved graph, so a new dependency
//! that brings the runtime in by any path fails here.

use std::collections::{HashMap, HashSet};
use std::process::Command;

/// The platform the graph is resolved for: only the host's dependencies
/// matter, and others need not be downloaded.
const HOST_TARGET: &str = if cfg!(target_arch = "aarch64") {
    "aarch64-unknown-linux-gnu"
} else {
    "x86_64-unknown-linux-gnu"
};

/// Packages the daemon side may not depend on (normal or build deps).
const FORBIDDEN: &[&str] = &["berth-runtime", "berth-shim", "libseccomp"];

fn metadata() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            HOST_TARGET,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON")
}

/// Every package `root` reaches through normal and build dependencies,
/// with the path that first reached it.
fn reachable(meta: &serde_json::Value, root: &str) -> HashMap<String, Vec<String>> {
    let name_of: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = *name_of
        .iter()
        .find(|(_, n)| **n == root)
        .unwrap_or_else(|| panic!("{root} is not in the workspace"))
        .0;
    let mut seen = HashSet::from([root_id]);
    let mut paths = HashMap::new();
    let mut stack = vec![(root_id, vec![root.to_owned()])];
    while let Some((id, path)) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let not_dev = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].as_str() != Some("dev"));
            let dep_id = dep["pkg"].as_str().unwrap();
            if !not_dev || !seen.insert(dep_id) {
                continue;
            }
            let mut dep_path = path.clone();
            dep_path.push(name_of[dep_id].to_owned());
            paths.insert(name_of[dep_id].to_owned(), dep_path.clone());
            stack.push((dep_id, dep_path));
        }
    }
    paths
}

#[test]
fn the_daemon_side_does_not_link_the_runtime() {
    let meta = metadata();
    for root in ["berthd", "berth-cri", "berthctl"] {
        let deps = reachable(&meta, root);
        // The walk sees the daemon's own libraries (a check of the walk).
        assert!(
            root == "berthctl" || deps.contains_key("berth-common"),
            "{root} should reach berth-common; the walk found {:?}",
            deps.keys().collect::<Vec<_>>()
        );
        for forbidden in FORBIDDEN {
            if let Some(path) = deps.get(*forbidden) {
                panic!("{root} depends on {forbidden}: {}", path.join(" -> "));
            }
        }
    }
}
