//! Root filesystem: mounts and their options, /dev, masked and read-only
//! paths, propagation, pivot_root and chroot, and symlink escapes.

use std::os::unix::fs::symlink;

use serde_json::json;

use crate::common::Env;

#[test]
fn readonly_root_with_writable_tmpfs() {
    let env = Env::new("rofs");
    let out = env.run_ok(
        "c",
        &["sh", "-c", "touch /newfile 2>&1 && echo wrote-root; touch /tmp/ok && echo wrote-tmp"],
        |c| {
            c["root"]["readonly"] = json!(true);
            c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777", "size=1m"]}));
        },
    );
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("wrote-root"));
    assert!(out.contains("wrote-tmp"));
}

#[test]
fn mounts_with_options_bind_and_file_binds() {
    let env = Env::new("mounts");
    let host_dir = env.dir.join("hostdata");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("f"), "from-host\n").unwrap();
    let host_file = env.dir.join("single");
    std::fs::write(&host_file, "single-file\n").unwrap();
    let out = env.run_ok(
        "c",
        &[
            "sh",
            "-c",
            "stat -c %a /data; grep ' /data ' /proc/self/mountinfo; cat /ro/f; touch /ro/x 2>&1; cat /etc/single; grep ' /ro ' /proc/self/mountinfo",
        ],
        |c| {
            let m = c["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["nodev", "noexec", "mode=700", "size=2m"]}));
            m.push(json!({"destination": "/ro", "type": "bind", "source": host_dir, "options": ["rbind", "ro", "nosuid"]}));
            m.push(json!({"destination": "/etc/single", "type": "none", "source": host_file, "options": ["bind"]}));
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "700");
    assert!(
        lines[1].contains("nodev")
            && lines[1].contains("noexec")
            && lines[1].contains("size=2048k"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "from-host");
    assert!(lines[3].contains("Read-only file system"), "{}", lines[3]);
    assert_eq!(lines[4], "single-file");
    assert!(
        lines[5].contains(" ro,") && lines[5].contains("nosuid"),
        "{}",
        lines[5]
    );
    assert!(!host_dir.join("x").exists());
}

#[test]
fn default_devices_and_links() {
    let env = Env::new("devices");
    let out = env.run_ok(
        "c",
        &["sh", "-c", "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done; for l in fd stdin stdout stderr ptmx; do readlink /dev/$l; done; ls /dev/pts; ls /dev/shm /dev/mqueue >/dev/null && echo shm-ok"],
        |c| {
            c["linux"]["devices"] = json!([{"path": "/dev/custom/fuse0", "type": "c", "major": 10, "minor": 229, "fileMode": 384, "uid": 0, "gid": 0}]);
        },
    );
    let expect = [
        "/dev/null character special file 1:3 666",
        "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666",
        "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666",
        "/dev/tty character special file 5:0 666",
        "/proc/self/fd",
        "/proc/self/fd/0",
        "/proc/self/fd/1",
        "/proc/self/fd/2",
        "pts/ptmx",
    ];
    let lines: Vec<&str> = out.lines().collect();
    for (i, e) in expect.iter().enumerate() {
        assert_eq!(lines[i], *e);
    }
    assert!(out.contains("ptmx"), "devpts must be mounted: {out}");
    assert!(out.contains("shm-ok"));
    let out = env.run_ok("c2", &["stat", "-c", "%F %t:%T %a", "/dev/custom/fuse0"], |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/custom/fuse0", "type": "c", "major": 10, "minor": 229, "fileMode": 384}]);
    });
    assert_eq!(out.trim(), "character special file a:e5 600");
}

#[test]
fn masked_and_readonly_paths() {
    let env = Env::new("masked");
    let id = env.id("c2");
    let bundle = env.bundle("c2", &["sh", "-c", "cat /etc/secret | wc -c; ls /secretdir | wc -l; touch /rodir/x 2>&1; (echo 1 > /proc/sys/vm/overcommit_ratio) 2>&1; cat /proc/timer_list | wc -c"], |c| {
        c["linux"]["maskedPaths"].as_array_mut().unwrap().extend([json!("/etc/secret"), json!("/secretdir"), json!("/does/not/exist")]);
        c["linux"]["readonlyPaths"].as_array_mut().unwrap().push(json!("/rodir"));
    });
    std::fs::write(bundle.join("rootfs/etc/secret"), "top secret").unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/secretdir")).unwrap();
    std::fs::write(bundle.join("rootfs/secretdir/key"), "k").unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/rodir")).unwrap();
    let (code, out, err) = env.run(&bundle, &id);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "0", "masked file reads empty");
    assert_eq!(lines[1].trim(), "0", "masked directory is empty");
    assert!(lines[2].contains("Read-only file system"), "{}", lines[2]);
    assert!(lines[3].contains("Read-only file system"), "{}", lines[3]);
    assert_eq!(
        lines[4].trim(),
        "0",
        "/proc/timer_list is masked by default"
    );
    assert!(!bundle.join("rootfs/rodir/x").exists());
}

#[test]
fn rootfs_propagation_and_no_pivot() {
    let env = Env::new("propagation");
    let root_line = |out: &str| {
        out.lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .unwrap_or("")
            .to_owned()
    };
    let out = env.run_ok("pshared", &["cat", "/proc/self/mountinfo"], |c| {
        c["linux"]["rootfsPropagation"] = json!("shared")
    });
    assert!(root_line(&out).contains("shared:"), "{out}");
    let out = env.run_ok("pprivate", &["cat", "/proc/self/mountinfo"], |c| {
        c["linux"]["rootfsPropagation"] = json!("private")
    });
    let line = root_line(&out);
    assert!(
        !line.contains("shared:") && !line.contains("master:"),
        "{line}"
    );

    // rslave: mounts the host makes under a shared rootfs reach the container.
    let bundle = env.bundle("pslave", &["sleep", "60"], |c| {
        c["linux"]["rootfsPropagation"] = json!("rslave")
    });
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("mnt/late")).unwrap();
    let sh = |cmd: String| {
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .unwrap()
                .success(),
            "{cmd}"
        )
    };
    sh(format!(
        "mount --bind {0} {0} && mount --make-shared {0}",
        rootfs.display()
    ));
    let id = env.id("slave");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    sh(format!("mount -t tmpfs late {}/mnt/late", rootfs.display()));
    let out = env.ok(&["exec", &id, "cat", "/proc/self/mountinfo"]);
    assert!(root_line(&out).contains("master:"), "{out}");
    assert!(
        out.contains(" /mnt/late "),
        "a host mount must propagate into an rslave root: {out}"
    );
    env.ok(&["delete", "--force", &id]);
    sh(format!(
        "umount -l {0}/mnt/late; umount -l {0}",
        rootfs.display()
    ));

    let bundle = env.bundle(
        "nopivot",
        &[
            "sh",
            "-c",
            "ls /bin/busybox && cat /proc/self/mountinfo | wc -l",
        ],
        |_| {},
    );
    let out = env.ok(&[
        "run",
        "--no-pivot",
        "--bundle",
        bundle.to_str().unwrap(),
        &env.id("np"),
    ]);
    assert!(out.starts_with("/bin/busybox"), "{out}");
}

#[test]
fn mount_destination_symlinks_stay_inside_the_rootfs() {
    let env = Env::new("escape");
    let outside = env.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // An absolute symlink is read inside the container: it lands in the rootfs.
    let bundle = env.bundle(
        "abs",
        &["sh", "-c", "grep -c ' /target/sub ' /proc/self/mountinfo"],
        |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/evil/sub", "type": "tmpfs", "source": "tmpfs"}));
        },
    );
    symlink(&outside, bundle.join("rootfs/evil")).unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/target")).unwrap();
    let _ = std::fs::remove_file(bundle.join("rootfs/evil"));
    symlink("/target", bundle.join("rootfs/evil")).unwrap();
    let (code, out, err) = env.run(&bundle, &env.id("abs"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1");
    assert!(bundle.join("rootfs/target/sub").is_dir());

    // An absolute symlink naming a host path also resolves inside the rootfs.
    let bundle = env.bundle("hostpath", &["true"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/evil/sub", "type": "tmpfs", "source": "tmpfs"}));
    });
    symlink(&outside, bundle.join("rootfs/evil")).unwrap();
    let (code, _, err) = env.run(&bundle, &env.id("host"));
    assert_eq!(code, 0, "{err}");
    assert!(
        !outside.join("sub").exists(),
        "nothing may be created on the host"
    );
    assert!(bundle
        .join("rootfs")
        .join(outside.strip_prefix("/").unwrap())
        .join("sub")
        .is_dir());

    // A relative symlink climbing out of the rootfs is refused.
    let bundle = env.bundle("rel", &["true"], |c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/up/sub", "type": "tmpfs", "source": "tmpfs"}));
    });
    symlink(
        "../../../../../../../../..".to_owned() + outside.to_str().unwrap(),
        bundle.join("rootfs/up"),
    )
    .unwrap();
    let id = env.id("rel");
    let err = env.fails(&["run", "--bundle", bundle.to_str().unwrap(), &id]);
    assert!(err.contains("points outside"), "{err}");
    assert!(!outside.join("sub").exists());
    assert!(!env.state_dir_exists(&id));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(outside.to_str().unwrap()));
}

/// With a cgroup namespace the hierarchies are mounted; without one (the
/// v1 binds of the container's own cgroups in a tmpfs, flags set on all at
/// once) each still shows the init's cgroup, read-only.
#[test]
fn cgroupfs_inside_the_container() {
    let env = Env::new("cgmount");
    for cgroupns in [true, false] {
        let out = env.run_ok(
            "c",
            &[
                "sh",
                "-c",
                "ls /sys/fs/cgroup; cat /sys/fs/cgroup/*/cgroup.procs | sort -u; \
                 touch /sys/fs/cgroup/x 2>&1; touch /sys/fs/cgroup/pids/x 2>&1; \
                 grep ' /sys/fs/cgroup' /proc/self/mountinfo; true",
            ],
            |c| {
                if !cgroupns {
                    let namespaces = c["linux"]["namespaces"].as_array_mut().unwrap();
                    namespaces.retain(|n| n["type"] != "cgroup");
                }
            },
        );
        assert!(
            out.contains("cgroup.procs") || out.contains("pids") || out.contains("memory"),
            "{out}"
        );
        assert!(
            out.lines().any(|l| l == "1"),
            "the init is in its own cgroup: {out}"
        );
        assert!(
            out.contains("touch: /sys/fs/cgroup/x: Read-only file system"),
            "{out}"
        );
        assert!(
            out.contains("touch: /sys/fs/cgroup/pids/x: Read-only file system"),
            "{out}"
        );
        let mounts: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|mount_point| mount_point.starts_with("/sys/fs/cgroup"))
            })
            .collect();
        assert!(mounts.len() > 1, "{out}");
        for line in mounts {
            let options = line.split(' ').nth(5).unwrap_or_default();
            for flag in ["ro", "nosuid", "nodev", "noexec"] {
                assert!(
                    options.split(',').any(|o| o == flag),
                    "{flag} missing: {line}"
                );
            }
        }
    }
}
