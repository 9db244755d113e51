//! A VM carries its pod's network: QEMU in the pod's namespace, a tap
//! there redirected to and from the pod's veth, the pod's IP in the guest.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_vm::network::{PodNetwork, TAP};
use berth_vm::{CreateContainerRequest, Vm, VmConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn guest_dir() -> PathBuf {
    std::env::var_os("BERTH_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/vm"))
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().unwrap()
}

fn ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair, as CNI leaves a pod's; removed
/// on drop.
struct Pod {
    name: String,
    host_if: String,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A namespace named for this test process and `n`, with eth0 on
/// 10.251.X.2/24 and its peer on the host as .1.
fn pod(n: u32) -> (Pod, String) {
    let id = std::process::id();
    let subnet = format!("10.251.{}", 20 + (id * 2 + n) % 200);
    let pod = Pod {
        name: format!("berth-vmnet-{id}-{n}"),
        host_if: format!("bvm{id}n{n}"),
    };
    ok(&["netns", "add", &pod.name]);
    ok(&[
        "link",
        "add",
        &pod.host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pod.name,
    ]);
    ok(&[
        "addr",
        "add",
        &format!("{subnet}.1/24"),
        "dev",
        &pod.host_if,
    ]);
    ok(&["link", "set", &pod.host_if, "up"]);
    ok(&[
        "-n",
        &pod.name,
        "addr",
        "add",
        &format!("{subnet}.2/24"),
        "dev",
        "eth0",
    ]);
    ok(&["-n", &pod.name, "link", "set", "eth0", "up"]);
    ok(&["-n", &pod.name, "link", "set", "lo", "up"]);
    ok(&[
        "-n",
        &pod.name,
        "route",
        "add",
        "default",
        "via",
        &format!("{subnet}.1"),
    ]);
    (pod, subnet)
}

/// A VM in `pod`'s network.
fn vm_config(name: &str, dir: PathBuf, pod: &Pod) -> VmConfig {
    let g = guest_dir();
    let mut config = VmConfig::new(name, dir, g.join("vmlinux"), g.join("initramfs.cpio"));
    config.network = Some(PodNetwork {
        netns: PathBuf::from(format!("/run/netns/{}", pod.name)),
        interface: "eth0".into(),
    });
    config
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test]
async fn a_lost_vm_is_cleaned_up_from_its_directory() {
    let (pod, _) = pod(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    let config = vm_config("lost", dir.clone(), &pod);
    let vm = Vm::boot(config).await.expect("booting");
    vm.shared()
        .unwrap()
        .share(tmp.path(), "some-share", true)
        .unwrap();
    let qemu = vm.pid();
    let virtiofsd = vm.shared().unwrap().daemon().unwrap().pid();
    // The owner hands it on, and the next one cannot use it.
    vm.detach();
    assert!(alive(qemu) && alive(virtiofsd));
    Vm::cleanup(&dir);
    assert!(!alive(qemu), "QEMU {qemu} still runs");
    assert!(!alive(virtiofsd), "virtiofsd {virtiofsd} still runs");
    assert!(!dir.exists());
    let needle = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&needle), "mounts left under {needle}");
    assert!(
        !ip(&["-n", &pod.name, "link", "show", TAP]).status.success(),
        "{TAP} is left"
    );
    // Nothing recorded, nothing to do: no error either.
    Vm::cleanup(&dir);
}

#[tokio::test]
async fn the_guest_has_the_pods_ip_and_answers_on_it() {
    let (pod, subnet) = pod(0);
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    for dir in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/nc")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/cat")).unwrap();
    let config = vm_config("net", tmp.path().join("vm"), &pod);
    let vm = Vm::boot(config).await.expect("booting");
    let agent = vm.agent();
    // The pod's address, MTU and default route, set by the agent.
    let show = berth_vm::RunCommandRequest {
        args: [
            "/bin/busybox",
            "sh",
            "-c",
            "ip -o addr show; ip route; ip -o link show",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let shown = agent.run_command(&show, WAIT).await.unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("inet {subnet}.2/24")), "{shown}");
    assert!(
        shown.contains(&format!("default via {subnet}.1")),
        "{shown}"
    );
    assert!(shown.contains("mtu 1500"), "{shown}");
    let guest_rootfs = vm
        .shared()
        .unwrap()
        .share(&rootfs, "busybox", true)
        .unwrap();
    vm.mount_shared(WAIT).await.unwrap();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["nc", "-ll", "-p", "8080", "-e", "cat"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    });
    let req = CreateContainerRequest {
        id: "echo".into(),
        spec: serde_json::to_vec(&spec).unwrap(),
        rootfs: guest_rootfs,
        stdin: false,
        rootfs_writable: false,
    };
    agent.create_container(&req, WAIT).await.unwrap();
    agent.start_container("echo", WAIT).await.unwrap();

    // From the host, to the pod's IP: the guest's container answers.
    let target = format!("{subnet}.2:8080");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(mut conn) =
            std::net::TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(2))
        {
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.write_all(b"ping over the pod network\n").unwrap();
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap_or(0);
            answered = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered.as_deref(), Some("ping over the pod network\n"));

    let dir = tmp.path().join("vm");
    vm.stop(Duration::from_secs(10)).await;
    assert!(!dir.exists());
    // The tap and the redirection are gone from the pod's namespace.
    assert!(
        !ip(&["-n", &pod.name, "link", "show", TAP]).status.success(),
        "{TAP} is left"
    );
    let qdiscs = Command::new("tc")
        .args(["-n", &pod.name, "qdisc", "show", "dev", "eth0", "ingress"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&qdiscs.stdout).trim(),
        "",
        "the ingress qdisc is left"
    );
}
