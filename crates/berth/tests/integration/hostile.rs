//! Attacks on the runtime from hostile configs and callers: mount
//! destinations that reach /proc through `..` or symlinks (runc
//! CVE-2019-16884 / CVE-2023-27561), recursive mount attributes that must be
//! enforced (`rro` on a tree with submounts), a working directory taken from a
//! leaked descriptor (runc CVE-2024-21626), and restrictive seccomp profiles.

use std::os::unix::fs::symlink;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{Env, BERTH};

/// A host directory with a tmpfs mounted on its `sub` directory; unmounted
/// when dropped.
struct TreeWithSubmount {
    dir: std::path::PathBuf,
}

impl TreeWithSubmount {
    fn new(env: &Env) -> TreeWithSubmount {
        let dir = env.dir.join("tree");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.join("sub"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs for the test");
        TreeWithSubmount { dir }
    }
}

impl Drop for TreeWithSubmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.join("sub")).status();
    }
}

#[test]
fn recursive_read_only_reaches_submounts() {
    let env = Env::new("rro");
    let tree = TreeWithSubmount::new(&env);
    let script = "touch /data/top 2>/dev/null && echo WROTE-TOP; \
                  touch /data/sub/escape 2>/dev/null && echo WROTE-SUB; \
                  grep ' /data/sub ' /proc/self/mountinfo";
    let out = env.run_ok("c", &["sh", "-c", script], |c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": tree.dir,
            "options": ["rbind", "rro", "rnosuid", "rnoexec", "rprivate"]
        }));
    });
    assert!(!out.contains("WROTE-TOP"), "{out}");
    assert!(
        !out.contains("WROTE-SUB"),
        "the submount stayed writable: {out}"
    );
    assert!(
        !tree.dir.join("sub/escape").exists(),
        "the container created a file on the host"
    );
    let options = out.lines().last().unwrap_or_default();
    for flag in ["ro", "nosuid", "noexec"] {
        assert!(
            options.split([' ', ',']).any(|w| w == flag),
            "submount lacks {flag}: {options}"
        );
    }

    // Plain `ro` keeps runc's meaning: only the top mount is read-only.
    let out = env.run_ok(
        "d",
        &["sh", "-c", "touch /data/sub/plain && echo WROTE-SUB"],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/data", "type": "bind", "source": tree.dir,
                "options": ["rbind", "ro"]
            }));
        },
    );
    assert!(out.contains("WROTE-SUB"), "{out}");

    // rrw undoes rro, as later options win.
    let out = env.run_ok(
        "e",
        &["sh", "-c", "touch /data/sub/again && echo WROTE-SUB"],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/data", "type": "bind", "source": tree.dir,
                "options": ["rbind", "rro", "rrw"]
            }));
        },
    );
    assert!(out.contains("WROTE-SUB"), "{out}");
}

#[test]
fn features_report_the_recursive_options_berth_enforces() {
    let env = Env::new("featrro");
    let features: serde_json::Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    let options: Vec<&str> = features["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    // This machine's kernel has mount_setattr(2).
    for o in [
        "rro",
        "rrw",
        "rnosuid",
        "rsuid",
        "rnodev",
        "rdev",
        "rnoexec",
        "rexec",
        "rnodiratime",
        "rdiratime",
        "rrelatime",
        "rnorelatime",
        "rnoatime",
        "ratime",
        "rstrictatime",
        "rnostrictatime",
        "rnosymfollow",
        "rsymfollow",
        "nosymfollow",
    ] {
        assert!(options.contains(&o), "features lacks {o}: {options:?}");
    }
    // Each advertised recursive option is accepted by a real container.
    let tree = TreeWithSubmount::new(&env);
    let recursive: Vec<&str> = options
        .iter()
        .copied()
        .filter(|o| o.starts_with('r') && !o.starts_with("rbind") && !o.ends_with("private"))
        .filter(|o| {
            !matches!(
                *o,
                "rshared" | "rslave" | "runbindable" | "remount" | "ridmap"
            )
        })
        .collect();
    let mut mount_options = vec!["rbind"];
    mount_options.extend(recursive.iter());
    env.run_ok("c", &["true"], |c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": tree.dir,
            "options": mount_options
        }));
    });
}

#[test]
fn nosymfollow_refuses_symlinks_on_the_mount() {
    let env = Env::new("nosymfollow");
    let dir = env.dir.join("links");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("target"), "reached\n").unwrap();
    symlink("target", dir.join("link")).unwrap();
    let out = env.run_ok(
        "c",
        &["sh", "-c", "cat /data/link 2>&1; cat /data/target"],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/data", "type": "bind", "source": dir,
                "options": ["rbind", "nosymfollow"]
            }));
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines[0].contains("reached"), "{out}");
    assert_eq!(lines[1], "reached", "{out}");
}

/// A host file the attacks try to put over a /proc file of the container.
fn attr_bind(env: &Env, destination: &str) -> serde_json::Value {
    let source = env.dir.join("fake-attr");
    std::fs::write(&source, "unconfined\n").unwrap();
    json!({"destination": destination, "type": "bind", "source": source, "options": ["bind"]})
}

#[test]
fn proc_destinations_are_checked_after_resolution() {
    let env = Env::new("procdest");
    // `..` in the destination string.
    let bundle = env.bundle("dots", &["true"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(attr_bind(&env, "/tmp/../proc/self/attr/exec"));
    });
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("dots")]);
    assert!(err.contains("/proc"), "{err}");
    assert!(!env.state_dir_exists(&env.id("dots")));

    // A symlink in the image pointing at /proc.
    let bundle = env.bundle("link", &["true"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(attr_bind(&env, "/p/self/attr/exec"));
    });
    symlink("/proc", bundle.join("rootfs/p")).unwrap();
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id("link")]);
    assert!(err.contains("resolves to /proc/"), "{err}");

    // The lxcfs files stay allowed.
    let out = env.run_ok("lxcfs", &["cat", "/proc/uptime"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(attr_bind(&env, "/proc/uptime"));
    });
    assert_eq!(out.trim(), "unconfined");
}

#[test]
fn proc_and_sysfs_need_an_ordinary_directory() {
    let env = Env::new("procsym");
    for (name, typ) in [("p", "proc"), ("s", "sysfs")] {
        let bundle = env.bundle(name, &["true"], |c| {
            c["mounts"].as_array_mut().unwrap().push(
                json!({"destination": "/elsewhere", "type": typ, "source": typ, "options": []}),
            );
        });
        // Pointing back inside the rootfs is refused too.
        std::fs::create_dir_all(bundle.join("rootfs/inside")).unwrap();
        symlink("/inside", bundle.join("rootfs/elsewhere")).unwrap();
        let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &env.id(name)]);
        assert!(
            err.contains("must be mounted on ordinary directory"),
            "{typ}: {err}"
        );
    }
}

#[test]
fn unbindable_root_propagation() {
    let env = Env::new("unbindable");
    for (name, propagation) in [("u", "unbindable"), ("r", "runbindable")] {
        let out = env.run_ok(name, &["awk", "$5 == \"/\"", "/proc/self/mountinfo"], |c| {
            c["linux"]["rootfsPropagation"] = json!(propagation);
        });
        assert!(out.contains("unbindable"), "{propagation}: {out}");
    }
}

/// A host directory with a secret, opened by the calling shell as fd 7
/// without close-on-exec: the leak of runc CVE-2024-21626.
fn leaked_dir(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.join("host-secret");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), "TOP-SECRET\n").unwrap();
    dir
}

#[test]
fn exec_cwd_through_a_leaked_descriptor_is_refused() {
    let env = Env::new("cwdleak");
    let secret = leaked_dir(&env);
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    let id = env.id("c");
    env.ok(&["create", "--bundle", bundle.to_str().unwrap(), &id]);
    env.ok(&["start", &id]);
    let script = format!(
        "exec 7<{}; {BERTH} --root {} exec --cwd /proc/self/fd/7 {id} sh -c 'cat secret; touch planted'",
        secret.display(),
        env.root.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exec escaped: {stdout} {stderr}");
    assert!(!stdout.contains("TOP-SECRET"), "{stdout}");
    assert!(!secret.join("planted").exists(), "a host file was written");
    assert!(stderr.contains("outside the container"), "{stderr}");
    // The container is unharmed and exec still works.
    assert_eq!(env.ok(&["exec", &id, "echo", "fine"]).trim(), "fine");
    env.ok(&["delete", "--force", &id]);
}

#[test]
fn init_cwd_through_a_leaked_descriptor_is_refused() {
    let env = Env::new("initcwd");
    let secret = leaked_dir(&env);
    let bundle = env.bundle("b", &["sh", "-c", "cat secret"], |c| {
        c["process"]["cwd"] = json!("/proc/self/fd/7");
    });
    let id = env.id("c");
    let script = format!(
        "exec 7<{}; {BERTH} --root {} run --bundle {} {id}",
        secret.display(),
        env.root.display(),
        bundle.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "init escaped: {stdout}");
    assert!(!stdout.contains("TOP-SECRET"), "{stdout}");
    assert!(!env.state_dir_exists(&id));
}

/// An old-style profile: everything refused unless listed, and close_range
/// (added to Docker's list in 2021) not listed.
fn errno_default_profile_without_close_range() -> serde_json::Value {
    let mut profile =
        serde_json::to_value(berth_common::seccomp_profile::runtime_default(&[])).unwrap();
    profile["defaultAction"] = json!("SCMP_ACT_ERRNO");
    for group in profile["syscalls"].as_array_mut().unwrap() {
        if let Some(names) = group["names"].as_array_mut() {
            names.retain(|n| n != "close_range");
        }
    }
    profile
}

#[test]
fn restrictive_seccomp_profile_without_close_range_runs() {
    let env = Env::new("seccompold");
    let profile = errno_default_profile_without_close_range();
    for nnp in [false, true] {
        let out = env.run_ok(
            if nnp { "nnp" } else { "early" },
            &["sh", "-c", "echo alive"],
            |c| {
                c["process"]["noNewPrivileges"] = json!(nnp);
                c["linux"]["seccomp"] = profile.clone();
            },
        );
        assert_eq!(out.trim(), "alive", "noNewPrivileges={nnp}");
    }
    // exec under the same profile.
    let bundle = env.bundle("x", &["sleep", "60"], |c| {
        c["process"]["noNewPrivileges"] = json!(false);
        c["linux"]["seccomp"] = profile.clone();
    });
    let id = env.id("x");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    assert_eq!(
        env.ok(&["exec", &id, "echo", "exec-alive"]).trim(),
        "exec-alive"
    );
    env.ok(&["delete", "--force", &id]);
}

/// A host directory with a file owned by root and one owned by uid 1000.
fn owned_files(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.join("owned");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("by-root"), "r\n").unwrap();
    std::fs::write(dir.join("by-1000"), "u\n").unwrap();
    std::os::unix::fs::chown(dir.join("by-1000"), Some(1000), Some(1000)).unwrap();
    dir
}

#[test]
fn idmapped_bind_mounts_show_files_through_their_mapping() {
    let env = Env::new("idmap");
    let dir = owned_files(&env);
    // Its own mapping: on-disk root is shown as 1000, nothing else maps.
    let out = env.run_ok(
        "own",
        &["sh", "-c", "stat -c '%n %u:%g' /data/by-root /data/by-1000"],
        |c| {
            c["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/data", "type": "bind", "source": dir, "options": ["rbind"],
                "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]
            }));
        },
    );
    assert!(out.contains("/data/by-root 1000:1000"), "{out}");
    assert!(out.contains("/data/by-1000 65534:65534"), "{out}");

    // In a user namespace, `idmap` takes the container's mappings: the
    // host's root-owned files are the container root's, with no chown.
    let userns = |c: &mut Value, options: &[&str]| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": dir, "options": options
        }));
    };
    let script = "stat -c '%n %u' /data/by-root; echo hi > /data/made && echo wrote; id -u";
    let bundle = env.bundle("userns", &["sh", "-c", script], |c| {
        userns(c, &["rbind", "idmap"])
    });
    // The mapped root cannot create the mount point in a host-owned rootfs.
    std::fs::create_dir_all(bundle.join("rootfs/data")).unwrap();
    let (code, out, err) = env.run(&bundle, &env.id("userns"));
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("/data/by-root 0"), "{out}");
    assert!(out.contains("wrote"), "{out}");
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(dir.join("made")).unwrap();
    assert_eq!(
        made.uid(),
        0,
        "written as the container's root, stored as the host's"
    );
    // Without the idmap option the same mount shows nobody's files.
    let bundle = env.bundle("plain", &["stat", "-c", "%u", "/data/by-root"], |c| {
        userns(c, &["rbind"])
    });
    std::fs::create_dir_all(bundle.join("rootfs/data")).unwrap();
    let (code, out, err) = env.run(&bundle, &env.id("plain"));
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out.trim(), "65534");

    // Only bind mounts can be id-mapped.
    let bundle = env.bundle("tmpfs", &["true"], |c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "tmpfs", "source": "tmpfs",
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]
        }));
    });
    let err = env.fails(&[
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        &env.id("tmpfs"),
    ]);
    assert!(err.contains("only bind mounts can be id-mapped"), "{err}");
}
