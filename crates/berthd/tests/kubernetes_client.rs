//! berthd's streaming server driven by a client written by others: the
//! Kubernetes project's Python client (kubernetes-client/python, the
//! `kubernetes` package on PyPI, pinned), through `kubernetes_client.py`.
//! Its WebSocket exec, v5 and v4 (the exit code read from the status as it
//! reads it), with stdin, stderr, a terminal resized and stdin closed by
//! v5's signal; its WebSocket attach to a container's stdin and output;
//! its WebSocket port-forward to busybox httpd in a pod and to
//! a port nobody listens on, the ports in the PortForward request as a
//! kubelet sends them. The client's virtual environment is made once under
//! target/ (PyPI). Needs root.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const KUBERNETES_CLIENT: &str = "kubernetes==37.0.3";

/// The virtual environment's python, with the client installed.
fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kubernetes-client");
    let python = venv.join("bin/python");
    let has_client = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import kubernetes.stream.ws_client"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_client(&python) {
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("running python3");
            assert!(
                out.status.success(),
                "{cmd:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            KUBERNETES_CLIENT,
        ]));
    }
    assert!(has_client(&python), "{KUBERNETES_CLIENT} is not importable");
    python
}

/// What the client saw (its JSON); panics with its output if it failed.
fn client(python: &PathBuf, args: &[&str]) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kubernetes_client.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("running the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client failed ({args:?}): {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
}

/// An Exec URL for `sh -c script`, with stdin.
async fn exec_url(d: &Berthd, id: &str, script: &str, tty: bool) -> String {
    d.exec_url(id, &["sh", "-c", script], tty, true)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_python_client_execs_and_port_forwards() {
    let python = python();
    let d = Berthd::start("k8sclient");
    d.pull_busybox().await;
    let pod_cfg = d.pod_config("k8sclient", false);
    let pod = d.run_pod(&pod_cfg, "").await;
    let web = d
        .run_container(
            &pod,
            &pod_cfg,
            &d.container_config(
                "web",
                &images().busybox,
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo page-from-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
                ],
            ),
        )
        .await;

    // v5 (the client's first choice): stdin, stdout and stderr apart, the
    // exit code.
    let url = exec_url(
        &d,
        &web,
        "read line; echo got:$line; echo to-stderr >&2; exit 5",
        false,
    )
    .await;
    let seen = client(&python, &["exec", &url, "hello\n"]);
    assert_eq!(seen["protocol"], "v5.channel.k8s.io", "{seen}");
    assert_eq!(seen["stdout"], "got:hello\n", "{seen}");
    assert_eq!(seen["stderr"], "to-stderr\n", "{seen}");
    assert_eq!(seen["returncode"], 5, "{seen}");

    // v4 only: the exit code of success, from a v4 status.
    let url = exec_url(&d, &web, "read line; echo v4:$line", false).await;
    let seen = client(&python, &["exec", &url, "x\n", "v4.channel.k8s.io"]);
    assert_eq!(seen["protocol"], "v4.channel.k8s.io", "{seen}");
    assert_eq!(seen["stdout"], "v4:x\n", "{seen}");
    assert_eq!(seen["returncode"], 0, "{seen}");

    // A terminal, resized before the command looks.
    let url = exec_url(&d, &web, "read go; stty size; exit 3", true).await;
    let seen = client(&python, &["exec", &url, "go\r", "", "77x33"]);
    let screen = seen["stdout"].as_str().unwrap_or_default();
    assert!(screen.contains("33 77"), "stty size saw: {seen}");
    assert_eq!(seen["returncode"], 3, "{seen}");

    // v5's close of stdin: cat sees EOF and ends.
    let url = exec_url(&d, &web, "cat; echo after-eof", false).await;
    let seen = client(&python, &["exec-close-stdin", &url, "to-cat\n"]);
    assert_eq!(seen["stdout"], "to-cat\nafter-eof\n", "{seen}");
    assert_eq!(seen["returncode"], 0, "{seen}");

    // Attach to a running container created with stdin: what the client
    // types comes back on its output.
    let mut echo_cfg = d.container_config(
        "echo",
        &images().busybox,
        &["sh", "-c", "while read line; do echo seen:$line; done"],
    );
    echo_cfg.stdin = true;
    let echo = d.run_container(&pod, &pod_cfg, &echo_cfg).await;
    let url = d.attach_url(&echo, false, true).await.unwrap();
    let seen = client(&python, &["attach", &url, "typed\n", "seen:typed"]);
    assert_eq!(seen["protocol"], "v5.channel.k8s.io", "{seen}");
    assert!(
        seen["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("seen:typed\n"),
        "{seen}"
    );

    // Port-forward: a page from httpd in the pod, and a port nobody
    // listens on, whose error channel says so.
    let url = d.port_forward_url(&pod, vec![8080, 8081]).await.unwrap();
    let seen = client(&python, &["portforward", &url, "8080", "8081"]);
    let page = seen["page"].as_str().unwrap_or_default();
    assert!(
        page.starts_with("HTTP/1.") && page.contains("page-from-the-pod"),
        "{seen}"
    );
    assert!(seen["open_port_error"].is_null(), "{seen}");
    let error = seen["closed_port_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("8081") && error.contains("refused"),
        "{seen}"
    );

    d.stop_pod(&pod).await;
    d.remove_pod(&pod).await;
    d.remove_all_and_check().await;
}
