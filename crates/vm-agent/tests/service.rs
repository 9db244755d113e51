//! berth-agent's service, served on a unix socket (`--listen`) on the
//! host: the same code the guest runs, without booting a VM.

use std::process::{Child, Command};
use std::time::Duration;

use berth_vm::{AgentClient, RunCommandRequest};

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    client: AgentClient,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_berth-agent"))
        .arg("--listen")
        .arg(&socket)
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = AgentClient::connect(&socket).await.unwrap();
    Agent {
        child,
        _dir: dir,
        client,
    }
}

fn command(args: &[&str]) -> RunCommandRequest {
    RunCommandRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn run_command_returns_output_exit_code_and_reads_stdin() {
    let a = agent().await;
    let out = a
        .client
        .run_command(
            &command(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!((out.exit_code, out.signal, out.timed_out), (3, 0, false));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let mut req = command(&["cat"]);
    req.stdin = b"fed through stdin".to_vec();
    let out = a.client.run_command(&req, WAIT).await.unwrap();
    assert_eq!(out.stdout, b"fed through stdin");

    let mut req = command(&["sh", "-c", "echo \"$ONLY\"; env | wc -l"]);
    req.env = vec!["ONLY=this".into()];
    let out = a.client.run_command(&req, WAIT).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("this"));
    // ONLY, and PWD that sh sets itself.
    assert!(
        lines.next().unwrap().trim().parse::<u32>().unwrap() <= 3,
        "{text}"
    );
}

#[tokio::test]
async fn output_is_truncated_and_a_time_limit_kills() {
    let a = agent().await;
    let mut req = command(&["sh", "-c", "head -c 100000 /dev/zero"]);
    req.output_limit = 1000;
    let out = a.client.run_command(&req, WAIT).await.unwrap();
    assert_eq!(out.exit_code, 0, "the writer is drained, not blocked");
    assert_eq!(out.stdout.len(), 1000);

    let mut req = command(&["sleep", "30"]);
    req.timeout_ms = 200;
    let started = std::time::Instant::now();
    let out = a.client.run_command(&req, WAIT).await.unwrap();
    assert!(out.timed_out);
    assert_eq!((out.exit_code, out.signal), (137, 9));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn bad_requests_are_refused_by_name() {
    let a = agent().await;
    let err = a.client.run_command(&command(&[]), WAIT).await.unwrap_err();
    assert!(err.to_string().contains("args is empty"), "{err}");
    let mut req = command(&["true"]);
    req.env = vec!["NOEQUALS".into()];
    let err = a.client.run_command(&req, WAIT).await.unwrap_err();
    assert!(
        err.to_string().contains("\"NOEQUALS\" is not KEY=VALUE"),
        "{err}"
    );
    let err = a
        .client
        .run_command(&command(&["/no/such/program"]), WAIT)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("starting \"/no/such/program\""),
        "{err}"
    );
    // The agent still serves after all that.
    assert!(a
        .client
        .check(WAIT)
        .await
        .unwrap()
        .version
        .starts_with(env!("CARGO_PKG_VERSION")));
}
