//! berthctl reads CRI configs through a copy of CRI's `api.proto`
//! (proto/api.proto) while its gRPC types come from the `k8s-cri` crate:
//! the two must describe the same API. This fails when they drift apart
//! (a k8s-cri upgrade without a new copy, or an edit to the copy), comparing
//! every line that is not a comment or blank.

use std::path::PathBuf;

/// The v1 proto of the k8s-cri version Cargo.lock pins, in cargo's
/// registry sources (where the build of k8s-cri itself read it).
fn k8s_cri_proto() -> PathBuf {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
        .expect("reading the workspace's Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"k8s-cri\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("k8s-cri in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    std::fs::read_dir(cargo_home.join("registry/src"))
        .expect("cargo's registry sources")
        .flatten()
        .map(|index| {
            index
                .path()
                .join(format!("k8s-cri-{version}/proto/v1.proto"))
        })
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "k8s-cri {version}'s proto/v1.proto is not in {}",
                cargo_home.display()
            )
        })
}

/// The lines that define the API: no comments, no blank lines, trimmed.
fn definition(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let mut l = line.trim();
        if in_block {
            match l.find("*/") {
                Some(end) => {
                    in_block = false;
                    l = l[end + 2..].trim();
                }
                None => continue,
            }
        }
        if let Some(start) = l.find("/*") {
            in_block = !l[start..].contains("*/");
            l = l[..start].trim();
        }
        if let Some(start) = l.find("//") {
            l = l[..start].trim();
        }
        if !l.is_empty() {
            out.push(l.to_owned());
        }
    }
    out
}

#[test]
fn berthctls_copy_of_the_cri_proto_matches_k8s_cri() {
    let upstream = k8s_cri_proto();
    let theirs = definition(&std::fs::read_to_string(&upstream).unwrap());
    let ours = definition(include_str!("../proto/api.proto"));
    assert!(theirs.len() > 500, "{} looks empty", upstream.display());
    if let Some(i) = (0..theirs.len().max(ours.len())).find(|&i| theirs.get(i) != ours.get(i)) {
        panic!(
            "crates/berthctl/proto/api.proto differs from {} at definition line {i}:\n  k8s-cri: {:?}\n  copy:    {:?}",
            upstream.display(),
            theirs.get(i),
            ours.get(i)
        );
    }
}
