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

/// `run` starts an init alone in a new PID namespace from berth's own
/// binary (no container process can exist before it executes its
/// program), but from the sealed copy when a hook runs inside the
/// container first, and `exec` never joins an init still running berth.
#[test]
fn run_without_the_copy_leaves_no_berth_process_to_the_container() {
    let env = Env::new("run-seal");
    let before = std::fs::read(BERTH).unwrap();
    let attack = "echo pwned > /proc/1/exe && echo WROTE; readlink /proc/1/exe";

    // A startContainer hook runs in the container while the init waits: it
    // attacks the init through /proc/1/exe, as a hook from the image could.
    let bundle = env.bundle("hooked", &["true"], |c| {
        c["root"]["readonly"] = json!(false);
        c["hooks"] = json!({"startContainer": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("({attack}) > /hook.out 2>&1")],
        }]});
    });
    let (code, out, err) = env.run(&bundle, &env.id("hooked"));
    assert_eq!(code, 0, "{out} {err}");
    let seen = std::fs::read_to_string(bundle.join("rootfs/hook.out")).unwrap();
    assert!(!seen.contains("WROTE"), "{seen}");
    assert!(
        !seen.contains(BERTH),
        "the hook saw the host binary: {seen}"
    );

    // Detached, then exec'd into at once, again and again: the exec'd
    // process never finds berth as the init.
    for i in 0..5 {
        let bundle = env.bundle(&format!("plain{i}"), &["sleep", "60"], |_| {});
        let id = env.id(&format!("plain{i}"));
        let run = env
            .cmd(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut exec_out = String::new();
        for _ in 0..200 {
            let out = env.berth(&["exec", &id, "sh", "-c", attack]);
            if out.status.success() || !out.stdout.is_empty() {
                exec_out = String::from_utf8_lossy(&out.stdout).into_owned();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut run = run;
        assert!(run.wait().unwrap().success());
        assert!(!exec_out.contains("WROTE"), "{exec_out}");
        assert!(
            !exec_out.contains(BERTH),
            "exec saw the host binary: {exec_out}"
        );
        env.ok(&["delete", "--force", &id]);
    }
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
