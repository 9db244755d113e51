//! Escape classes: the sealed runtime copy (CVE-2019-5736) and leaked host
//! file descriptors.

use serde_json::json;

use crate::common::{Env, BERTH};

/// How the init's executable is protected: "overlay" (a read-only
/// overlayfs view nobody can reach) or "memfd" (a sealed copy).
fn exe_protection(pid: i64) -> &'static str {
    let exe = std::fs::File::open(format!("/proc/{pid}/exe")).unwrap();
    let seals = rustix::fs::fcntl_get_seals(&exe);
    if seals.is_ok_and(|s| s.contains(rustix::fs::SealFlags::WRITE | rustix::fs::SealFlags::SEAL)) {
        return "memfd";
    }
    let fs = rustix::fs::fstatfs(&exe).unwrap();
    let ro = rustix::fs::fstatvfs(&exe)
        .unwrap()
        .f_flag
        .contains(rustix::fs::StatVfsMountFlags::RDONLY);
    assert!(
        fs.f_type as u64 == 0x794c_7630 && ro,
        "init exe is neither sealed nor read-only overlayfs"
    );
    "overlay"
}

#[test]
fn init_runs_from_a_sealed_copy_and_cannot_touch_the_binary() {
    // Root with fsopen: the overlayfs view; forced: the memfd copy.
    for (seal, expected) in [(None, "overlay"), (Some("memfd"), "memfd")] {
        sealed_copy_protects_the_binary(seal, expected);
    }
}

fn sealed_copy_protects_the_binary(seal: Option<&str>, expected: &str) {
    let env = Env::new(&format!("sealed-{expected}"));
    let before = std::fs::read(BERTH).unwrap();
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    let id = env.id("c");
    let mut create = env.cmd(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    if let Some(seal) = seal {
        create.env("BERTH_EXE_SEAL", seal);
    }
    // Files, not pipes: the created init keeps berth's stdio open.
    let err_path = env.dir.join("create.err");
    create
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let status = create.status().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert_eq!(exe_protection(pid), expected);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_ne!(
        exe,
        std::path::Path::new(BERTH),
        "init exe is the host binary"
    );
    // The waiting init is not dumpable: nothing in the container can open its /proc files.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs") || !status.is_empty());
    // A process in the container tries to write the runtime through /proc/1/exe.
    let out = env.berth(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo pwned > /proc/1/exe && echo WROTE; readlink /proc/1/exe",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("WROTE"), "{text}");
    assert!(
        !text.contains(BERTH),
        "the host path of berth must not show: {text}"
    );
    env.ok(&["delete", "--force", &id]);
    assert_eq!(
        std::fs::read(BERTH).unwrap(),
        before,
        "berth binary modified"
    );
}

#[test]
fn host_descriptors_do_not_leak_but_preserved_ones_pass() {
    let env = Env::new("fds");
    let bundle = env.bundle("b", &["ls", "/proc/self/fd"], |_| {});
    let id = env.id("c");
    // The shell opens fds 5 and 3 without close-on-exec, as a careless caller would.
    let script = format!(
        "exec 5</etc/hostname 3</etc/hostname; {BERTH} --root {} run --bundle {} {id}",
        env.root.display(),
        bundle.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    // 0-2 plus the directory ls itself opened.
    assert_eq!(fds.len(), 4, "unexpected fds {fds:?}");
    assert!(!fds.contains(&"5".to_string()));

    let script = format!(
        "exec 3</etc/hostname 5</etc/hostname; {BERTH} --root {} run --preserve-fds 1 --bundle {} {id}",
        env.root.display(),
        bundle.display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        fds.contains(&"3".to_string()),
        "preserved fd 3 must pass: {fds:?}"
    );
    assert!(
        !fds.contains(&"5".to_string()),
        "fd 5 must not pass: {fds:?}"
    );
    let _ = json!(null);
}
