//! containerd-shim-berth-v2 driven through its ttrpc API with the client
//! berthd uses (`berth_shim::client::ShimClient`): real containers, real
//! cgroups, an events server standing in for containerd's. Needs root.
//!
//! Over 800 lines: the task API method by method against the real shim, sharing
//! one set of bundle and client helpers.

mod common;

use std::time::Duration;

use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::types::task::Status;
use serde_json::json;

const T: i64 = 30 * SECOND;

fn state_req(id: &str, exec_id: &str) -> api::StateRequest {
    req_id(|r: &mut api::StateRequest| {
        r.id = id.into();
        r.exec_id = exec_id.into();
    })
}

fn wait_req(id: &str, exec_id: &str) -> api::WaitRequest {
    req_id(|r: &mut api::WaitRequest| {
        r.id = id.into();
        r.exec_id = exec_id.into();
    })
}

fn start_req(id: &str, exec_id: &str) -> api::StartRequest {
    req_id(|r: &mut api::StartRequest| {
        r.id = id.into();
        r.exec_id = exec_id.into();
    })
}

fn delete_req(id: &str, exec_id: &str) -> api::DeleteRequest {
    req_id(|r: &mut api::DeleteRequest| {
        r.id = id.into();
        r.exec_id = exec_id.into();
    })
}

fn kill_req(id: &str, exec_id: &str, signal: u32, all: bool) -> api::KillRequest {
    req_id(|r: &mut api::KillRequest| {
        r.id = id.into();
        r.exec_id = exec_id.into();
        r.signal = signal;
        r.all = all;
    })
}

fn exec_req(id: &str, exec_id: &str, args: &[&str], terminal: bool) -> api::ExecProcessRequest {
    req_id(|r: &mut api::ExecProcessRequest| {
        r.id = id.into();
        r.exec_id = exec_id.into();
        r.terminal = terminal;
        r.spec = process_spec(args, terminal);
    })
}

/// Creates and starts a container (stdout and stderr as URIs, or ""):
/// its init's pid.
async fn create_and_start(
    c: &berth_shim::client::ShimClient,
    id: &str,
    bundle: &std::path::Path,
    stdout: &str,
    stderr: &str,
) -> u32 {
    let r: api::CreateTaskResponse = c
        .call("Create", &create_request(id, bundle, stdout, stderr), T)
        .await
        .unwrap();
    let _: api::StartResponse = c.call("Start", &start_req(id, ""), T).await.unwrap();
    r.pid
}

async fn state(c: &berth_shim::client::ShimClient, id: &str, exec_id: &str) -> api::StateResponse {
    c.call("State", &state_req(id, exec_id), T).await.unwrap()
}

async fn wait_exit(c: &berth_shim::client::ShimClient, id: &str, exec_id: &str) -> u32 {
    let r: api::WaitResponse = c.call("Wait", &wait_req(id, exec_id), T).await.unwrap();
    assert!(
        r.exited_at.is_some(),
        "Wait must say when the process exited"
    );
    r.exit_status
}

fn decode<M: Message>(any: &Any) -> M {
    M::parse_from_bytes(&any.value).unwrap()
}

/// Create, start, wait, state, delete of one container: its output, exit
/// code, events in order, the exit record on disk, and nothing left after
/// delete and shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_output_exit_code_events_and_cleanup() {
    let w = World::new("life").await;
    let b = w.bundle(
        "c1",
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
        |_| {},
    );
    let out = w.dir.join("out.txt");
    let err = w.dir.join("err.txt");
    let address = w.start_shim("c1", &b);
    let shim = w.connect(&address).await;
    let shim_pids = w.shim_pids();
    assert_eq!(shim_pids.len(), 1, "one shim daemon: {shim_pids:?}");

    let created: api::CreateTaskResponse = shim
        .call(
            "Create",
            &create_request(
                "c1",
                &b,
                &format!("file://{}", out.display()),
                &format!("file://{}", err.display()),
            ),
            T,
        )
        .await
        .unwrap();
    assert!(created.pid > 0);
    let st = state(&shim, "c1", "").await;
    assert_eq!(st.status.enum_value(), Ok(Status::CREATED));
    assert_eq!(st.pid, created.pid);
    assert_eq!(st.bundle, b.display().to_string());
    assert!(
        w.state_dir("c1").is_dir(),
        "berth keeps its state in the shim's root"
    );

    let started: api::StartResponse = shim.call("Start", &start_req("c1", ""), T).await.unwrap();
    assert_eq!(started.pid, created.pid);
    assert_eq!(wait_exit(&shim, "c1", "").await, 7);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "to-out\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "to-err\n");
    let st = state(&shim, "c1", "").await;
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(st.exit_status, 7);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("berth-exit.json")).unwrap()).unwrap();
    assert_eq!(record["exit_status"], 7, "{record}");

    let deleted: api::DeleteResponse = shim.call("Delete", &delete_req("c1", ""), T).await.unwrap();
    assert_eq!(deleted.exit_status, 7);
    assert_eq!(deleted.pid, created.pid);
    assert!(!w.state_dir("c1").exists(), "state left after Delete");
    assert!(
        cgroup_dirs(&format!("{}/c1", w.cgroup_parent)).is_empty(),
        "cgroup left after Delete"
    );
    let (code, msg) = rpc_error(
        shim.call::<_, api::StateResponse>("State", &state_req("c1", ""), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");

    let exit = w
        .events
        .wait_for("/tasks/delete", Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(exit.namespace, w.namespace);
    let topics = w.events.topics();
    let pos = |t: &str| topics.iter().position(|x| x == t).unwrap_or(usize::MAX);
    assert!(
        pos("/tasks/create") < pos("/tasks/start")
            && pos("/tasks/start") < pos("/tasks/exit")
            && pos("/tasks/exit") < pos("/tasks/delete")
            && pos("/tasks/delete") != usize::MAX,
        "events out of order or missing: {topics:?}"
    );
    let all = w.events.all();
    let exit_event: ev::TaskExit =
        decode(&all.iter().find(|r| r.topic == "/tasks/exit").unwrap().event);
    assert_eq!(
        (exit_event.container_id.as_str(), exit_event.exit_status),
        ("c1", 7)
    );
    assert_eq!(exit_event.pid, created.pid);

    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Shutdown", &api::ShutdownRequest::new(), T)
        .await
        .unwrap();
    wait_until(
        "the shim to exit after Shutdown",
        Duration::from_secs(5),
        || w.shim_pids().is_empty(),
    );
    let socket = address.trim_start_matches("unix://");
    assert!(
        !std::path::Path::new(socket).exists(),
        "the shim left its socket {socket}"
    );
}

/// Exec with and without a terminal through FIFOs, resize, pids with exec
/// ids, killing an exec, exec into a stopped container refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_and_without_tty_pids_and_stopped_container() {
    let w = World::new("exec").await;
    let b = w.bundle("c", &["sleep", "1000"], |_| {});
    let shim = w.shim_for("c", &b).await;
    let init_pid = create_and_start(&shim, "c", &b, "", "").await;

    // Without a terminal: separate stdout and stderr FIFOs.
    let out_fifo = w.dir.join("e1.out");
    let err_fifo = w.dir.join("e1.err");
    let mut out_r = fifo_reader(&out_fifo);
    let mut err_r = fifo_reader(&err_fifo);
    let mut req = exec_req(
        "c",
        "e1",
        &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 3"],
        false,
    );
    req.stdout = out_fifo.display().to_string();
    req.stderr = err_fifo.display().to_string();
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
        shim.call("Exec", &req, T).await.unwrap();
    let st = state(&shim, "c", "e1").await;
    assert_eq!(st.status.enum_value(), Ok(Status::CREATED));
    let started: api::StartResponse = shim.call("Start", &start_req("c", "e1"), T).await.unwrap();
    assert!(started.pid > 0 && started.pid != init_pid);
    assert_eq!(wait_exit(&shim, "c", "e1").await, 3);
    assert!(
        read_fifo_until(&mut out_r, "exec-out\n", Duration::from_secs(5)).contains("exec-out\n")
    );
    assert!(
        read_fifo_until(&mut err_r, "exec-err\n", Duration::from_secs(5)).contains("exec-err\n")
    );
    let e1_exit = w
        .events
        .wait_for("/tasks/exit", Duration::from_secs(5), |a| {
            decode::<ev::TaskExit>(a).id == "e1"
        })
        .await;
    assert_eq!(decode::<ev::TaskExit>(&e1_exit.event).exit_status, 3);
    let topics = w.events.topics();
    assert!(
        topics.contains(&"/tasks/exec-added".to_string())
            && topics.contains(&"/tasks/exec-started".to_string()),
        "{topics:?}"
    );
    let deleted: api::DeleteResponse = shim
        .call("Delete", &delete_req("c", "e1"), T)
        .await
        .unwrap();
    assert_eq!(deleted.exit_status, 3);

    // With a terminal: one output FIFO, a real pty, resizable.
    let tty_fifo = w.dir.join("e2.out");
    let mut tty_r = fifo_reader(&tty_fifo);
    let mut req = exec_req(
        "c",
        "e2",
        &[
            "sh",
            "-c",
            "sleep 0.5; tty; stty size; test -t 0 && test -t 1 && echo is-a-tty",
        ],
        true,
    );
    req.stdout = tty_fifo.display().to_string();
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
        shim.call("Exec", &req, T).await.unwrap();
    let _: api::StartResponse = shim.call("Start", &start_req("c", "e2"), T).await.unwrap();
    let resize = req_id(|r: &mut api::ResizePtyRequest| {
        r.id = "c".into();
        r.exec_id = "e2".into();
        r.width = 111;
        r.height = 33;
    });
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty =
        shim.call("ResizePty", &resize, T).await.unwrap();
    assert_eq!(wait_exit(&shim, "c", "e2").await, 0);
    let text = read_fifo_until(&mut tty_r, "is-a-tty", Duration::from_secs(5));
    assert!(text.contains("/dev/pts/"), "tty output: {text:?}");
    assert!(
        text.contains("33 111"),
        "the resize must reach the pty: {text:?}"
    );
    assert!(
        text.contains("is-a-tty\r\n"),
        "a terminal translates newlines: {text:?}"
    );
    let _: api::DeleteResponse = shim
        .call("Delete", &delete_req("c", "e2"), T)
        .await
        .unwrap();

    // A long exec shows in Pids with its exec id; SIGKILL ends it.
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Exec", &exec_req("c", "e3", &["sleep", "1000"], false), T)
        .await
        .unwrap();
    let e3: api::StartResponse = shim.call("Start", &start_req("c", "e3"), T).await.unwrap();
    let pids: api::PidsResponse = shim
        .call(
            "Pids",
            &req_id(|r: &mut api::PidsRequest| r.id = "c".into()),
            T,
        )
        .await
        .unwrap();
    let listed: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert!(
        listed.contains(&init_pid) && listed.contains(&e3.pid),
        "{listed:?}"
    );
    let e3_info = pids.processes.iter().find(|p| p.pid == e3.pid).unwrap();
    let details: ProcessDetails = decode(e3_info.info.as_ref().expect("exec details"));
    assert_eq!(details.exec_id, "e3");
    let (code, _) = rpc_error(
        shim.call::<_, api::DeleteResponse>("Delete", &delete_req("c", "e3"), T)
            .await,
    );
    assert_eq!(
        code,
        ttrpc::Code::FAILED_PRECONDITION,
        "a running exec cannot be deleted"
    );
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Kill", &kill_req("c", "e3", 9, false), T)
        .await
        .unwrap();
    assert_eq!(wait_exit(&shim, "c", "e3").await, 137);
    assert!(
        alive(init_pid as i32),
        "killing an exec must spare the init"
    );

    // Shutdown while a container lives: the shim stays.
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Shutdown", &api::ShutdownRequest::new(), T)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let conn: api::ConnectResponse = shim
        .call(
            "Connect",
            &req_id(|r: &mut api::ConnectRequest| r.id = "c".into()),
            T,
        )
        .await
        .expect("the shim must not leave while it holds a container");
    assert_eq!(conn.task_pid, init_pid);

    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Kill", &kill_req("c", "", 9, false), T)
        .await
        .unwrap();
    assert_eq!(wait_exit(&shim, "c", "").await, 137);
    let (code, msg) = rpc_error(
        shim.call::<_, containerd_shim_protos::protobuf::well_known_types::empty::Empty>(
            "Exec",
            &exec_req("c", "e4", &["true"], false),
            T,
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("stopped"), "{msg}");
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("c", ""), T).await.unwrap();
}

/// Kill with and without --all, pause and resume (the container really
/// stops running), Update, and Stats with figures from the cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_pause_resume_update_and_stats() {
    let w = World::new("ctl").await;
    let b = w.bundle(
        "c",
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done",
        ],
        |c| c["root"]["readonly"] = json!(false),
    );
    let shim = w.shim_for("c", &b).await;
    create_and_start(&shim, "c", &b, "", "").await;
    let count = || -> u64 {
        std::fs::read_to_string(b.join("rootfs/tmp/count"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until("the counter to run", Duration::from_secs(5), || count() > 2);

    let empty =
        |r: ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty>| {
            r.unwrap();
        };
    empty(
        shim.call(
            "Pause",
            &req_id(|r: &mut api::PauseRequest| r.id = "c".into()),
            T,
        )
        .await,
    );
    assert_eq!(
        state(&shim, "c", "").await.status.enum_value(),
        Ok(Status::PAUSED)
    );
    let frozen_at = count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(), frozen_at, "a paused container must not run");
    w.events
        .wait_for("/tasks/paused", Duration::from_secs(5), |_| true)
        .await;
    empty(
        shim.call(
            "Resume",
            &req_id(|r: &mut api::ResumeRequest| r.id = "c".into()),
            T,
        )
        .await,
    );
    assert_eq!(
        state(&shim, "c", "").await.status.enum_value(),
        Ok(Status::RUNNING)
    );
    wait_until("the counter to run again", Duration::from_secs(5), || {
        count() > frozen_at
    });
    w.events
        .wait_for("/tasks/resumed", Duration::from_secs(5), |_| true)
        .await;

    // Update: the values land in the cgroup.
    let resources = json!({"memory": {"limit": 67108864}, "pids": {"limit": 55}});
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = serde_json::to_vec(&resources).unwrap();
    let update = req_id(|r: &mut api::UpdateTaskRequest| {
        r.id = "c".into();
        r.resources = MessageField::some(any.clone());
    });
    empty(shim.call("Update", &update, T).await);
    let limit =
        std::fs::read_to_string(w.memory_cgroup("c").join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), "67108864");
    let pids_max = std::fs::read_to_string(
        std::path::Path::new("/sys/fs/cgroup/pids")
            .join(w.cgroup_parent.trim_start_matches('/'))
            .join("c/pids.max"),
    )
    .unwrap();
    assert_eq!(pids_max.trim(), "55");
    let mut bad = update.clone();
    bad.resources.as_mut().unwrap().value = b"{\"memory\": {\"limit\": \"lots\"}}".to_vec();
    let (code, msg) = rpc_error(
        shim.call::<_, containerd_shim_protos::protobuf::well_known_types::empty::Empty>(
            "Update", &bad, T,
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    let stats: api::StatsResponse = shim
        .call(
            "Stats",
            &req_id(|r: &mut api::StatsRequest| r.id = "c".into()),
            T,
        )
        .await
        .unwrap();
    let any = stats.stats.as_ref().expect("stats");
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m: Metrics = decode(any);
    assert!(m.pids.current >= 1, "{m:?}");
    assert_eq!(m.pids.limit, 55);
    assert_eq!(m.memory.usage.limit, 67108864);
    assert!(m.memory.usage.usage > 0);
    assert!(m.cpu.usage.total > 0);

    // SIGTERM to the init alone: a pid-namespace init without a handler
    // ignores it. With --all every process gets it and the sleep dies.
    let b2 = w.bundle("k", &["sh", "-c", "sleep 1000 & wait $!"], |_| {});
    let k_pid = create_and_start(&shim, "k", &b2, "", "").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    empty(shim.call("Kill", &kill_req("k", "", 15, false), T).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(k_pid as i32),
        "SIGTERM without --all reaches only the init"
    );
    empty(shim.call("Kill", &kill_req("k", "", 15, true), T).await);
    assert_eq!(wait_exit(&shim, "k", "").await, 143);
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("k", ""), T).await.unwrap();

    empty(shim.call("Kill", &kill_req("c", "", 9, false), T).await);
    assert_eq!(wait_exit(&shim, "c", "").await, 137);
    let (code, _) = rpc_error(
        shim.call::<_, containerd_shim_protos::protobuf::well_known_types::empty::Empty>(
            "Kill",
            &kill_req("c", "", 9, false),
            T,
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "killing an exited process");
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("c", ""), T).await.unwrap();
}

/// The client goes away mid-life and comes back: containers kept running,
/// exits and an OOM kill that happened meanwhile are still known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaves_and_reconnects_exits_and_oom_kept() {
    let w = World::new("recon").await;
    let pod = |c: &mut serde_json::Value| {
        c["annotations"] = json!({"io.kubernetes.cri.sandbox-id": "pod-1"});
    };
    let ba = w.bundle("a", &["sleep", "1000"], pod);
    let bb = w.bundle("b", &["sh", "-c", "sleep 1; exit 9"], pod);
    let bc = w.bundle(
        "c",
        &[
            "sh",
            "-c",
            "sleep 1; x=$(head -c 96m /dev/zero | tr '\\0' a); echo survived",
        ],
        |c| {
            pod(c);
            c["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
        },
    );
    let address = w.start_shim("a", &ba);
    assert_eq!(w.start_shim("b", &bb), address, "one shim per pod");
    assert_eq!(w.start_shim("c", &bc), address, "one shim per pod");
    let mut pids = std::collections::HashMap::new();
    {
        let shim = w.connect(&address).await;
        for (id, b) in [("a", &ba), ("b", &bb), ("c", &bc)] {
            let r_pid = create_and_start(&shim, id, b, "", "").await;
            pids.insert(id, r_pid as i32);
        }
        // The client dies here, with the containers running.
    }
    wait_until("b and c to end", Duration::from_secs(20), || {
        !alive(pids["b"]) && !alive(pids["c"])
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.shim_pids().len(), 1, "the shim outlives its client");

    let shim = w.connect(&address).await;
    assert_eq!(wait_exit(&shim, "b", "").await, 9);
    let c = state(&shim, "c", "").await;
    assert_eq!(c.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(c.exit_status, 137, "the OOM killer's SIGKILL");
    let report = shim.report("c", "").await.unwrap();
    assert!(report.oom_killed, "the OOM must be remembered: {report:?}");
    assert!(!shim.report("b", "").await.unwrap().oom_killed);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bc.join("berth-exit.json")).unwrap()).unwrap();
    assert_eq!(record["oom_killed"], true, "{record}");
    w.events
        .wait_for("/tasks/oom", Duration::from_secs(5), |a| {
            decode::<ev::TaskOOM>(a).container_id == "c"
        })
        .await;
    let a = state(&shim, "a", "").await;
    assert_eq!(a.status.enum_value(), Ok(Status::RUNNING));
    assert!(alive(pids["a"]));

    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Kill", &kill_req("a", "", 9, false), T)
        .await
        .unwrap();
    assert_eq!(wait_exit(&shim, "a", "").await, 137);
    for id in ["a", "b", "c"] {
        let _: api::DeleteResponse = shim.call("Delete", &delete_req(id, ""), T).await.unwrap();
    }
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Shutdown", &api::ShutdownRequest::new(), T)
        .await
        .unwrap();
    wait_until("the shim to exit", Duration::from_secs(5), || {
        w.shim_pids().is_empty()
    });
}

/// Containers without a common sandbox id get shims of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shim_per_pod() {
    let w = World::new("group").await;
    let in_pod = |c: &mut serde_json::Value| {
        c["annotations"] = json!({"io.kubernetes.cri.sandbox-id": "sandbox-x"});
    };
    let b1 = w.bundle("p1", &["true"], in_pod);
    let b2 = w.bundle("p2", &["true"], in_pod);
    let b3 = w.bundle("solo", &["true"], |_| {});
    let a1 = w.start_shim("p1", &b1);
    let a2 = w.start_shim("p2", &b2);
    let a3 = w.start_shim("solo", &b3);
    assert_eq!(a1, a2);
    assert_ne!(a1, a3);
    // `start` answers once the shim listens; its process may still be
    // re-executing itself from the sealed binary for a moment.
    wait_until("two shims", Duration::from_secs(5), || {
        w.shim_pids().len() == 2
    });
    let c1 = w.connect(&a1).await;
    let c3 = w.connect(&a3).await;
    let r1: api::ConnectResponse = c1
        .call("Connect", &api::ConnectRequest::new(), T)
        .await
        .unwrap();
    let r3: api::ConnectResponse = c3
        .call("Connect", &api::ConnectRequest::new(), T)
        .await
        .unwrap();
    assert_ne!(r1.shim_pid, r3.shim_pid);
    assert_eq!(std::fs::read_to_string(b2.join("address")).unwrap(), a1);
    for c in [&c1, &c3] {
        let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = c
            .call("Shutdown", &api::ShutdownRequest::new(), T)
            .await
            .unwrap();
    }
    wait_until("both shims to exit", Duration::from_secs(5), || {
        w.shim_pids().is_empty()
    });
}

/// Checks one CRI log line and returns (stream, tag, message).
fn parse_cri_line(line: &str) -> (String, String, String) {
    let mut parts = line.splitn(4, ' ');
    let ts = parts.next().unwrap();
    let stream = parts.next().unwrap_or_default().to_owned();
    let tag = parts.next().unwrap_or_default().to_owned();
    let msg = parts.next().unwrap_or_default().to_owned();
    // Go's time.RFC3339Nano: 2006-01-02T15:04:05.999999999Z07:00, with the
    // fraction's trailing zeros (and a zero fraction) dropped.
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    assert!(
        digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19),
        "bad timestamp in {line:?}"
    );
    let rest = &ts[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    assert!(
        frac.len() <= 9 && !frac.ends_with('0'),
        "bad fraction in {line:?}"
    );
    assert!(
        zone == "Z" || (zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-'))),
        "bad zone in {line:?}"
    );
    assert!(
        stream == "stdout" || stream == "stderr",
        "bad stream in {line:?}"
    );
    assert!(tag == "F" || tag == "P", "bad tag in {line:?}");
    (stream, tag, msg)
}

/// The CRI log: `<RFC3339Nano> <stream> <F|P> <msg>` per record, lines
/// over 16 KiB split into partial records, a line written in pieces kept
/// whole, an unterminated last line marked partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_log_format_byte_for_byte() {
    let w = World::new("crilog").await;
    let b = w.bundle(
        "c",
        &[
            "sh",
            "-c",
            "printf 'line1\\npart'; sleep 0.3; printf 'ial\\n'; head -c 20000 /dev/zero | tr '\\0' x; echo; \
             echo to-err >&2; printf '\\n'; printf 'tabs\\tand  spaces \\n'; printf 'tail-no-newline'",
        ],
        |_| {},
    );
    let log = w.dir.join("logs/c.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let uri = format!("crilog://{}", log.display());
    let shim = w.shim_for("c", &b).await;
    create_and_start(&shim, "c", &b, &uri, &uri).await;
    assert_eq!(wait_exit(&shim, "c", "").await, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'), "every record ends its line");
    let records: Vec<(String, String, String)> = text.lines().map(parse_cri_line).collect();
    let of = |s: &str| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|r| r.0 == s)
            .map(|r| (r.1.clone(), r.2.clone()))
            .collect()
    };
    let rec = |t: &str, m: &str| (t.to_owned(), m.to_owned());
    assert_eq!(
        of("stdout"),
        vec![
            rec("F", "line1"),
            rec("F", "partial"),
            rec("P", &"x".repeat(16384)),
            rec("F", &"x".repeat(20000 - 16384)),
            rec("F", ""),
            rec("F", "tabs\tand  spaces "),
            rec("P", "tail-no-newline"),
        ]
    );
    assert_eq!(of("stderr"), vec![rec("F", "to-err")]);
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("c", ""), T).await.unwrap();
}

/// Log rotation: the file is renamed while the container writes, the shim
/// reopens it, and no record is lost, duplicated or torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_log_reopen_while_writing() {
    let w = World::new("rotate").await;
    let b = w.bundle(
        "c",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 80 ]; do echo seq-$i; i=$((i+1)); sleep 0.02; done",
        ],
        |_| {},
    );
    let log = w.dir.join("c.log");
    let rotated = w.dir.join("c.log.1");
    let uri = format!("crilog://{}", log.display());
    let shim = w.shim_for("c", &b).await;
    create_and_start(&shim, "c", &b, &uri, &uri).await;
    wait_until("some records", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() >= 15)
            .unwrap_or(false)
    });
    std::fs::rename(&log, &rotated).unwrap();
    shim.reopen_log("c").await.unwrap();
    assert_eq!(wait_exit(&shim, "c", "").await, 0);
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).expect("the reopened log");
    assert!(
        new.lines().count() >= 10,
        "the writes went on into the new file: {new:?}"
    );
    let msgs: Vec<String> = old
        .lines()
        .chain(new.lines())
        .map(|l| {
            let (stream, tag, msg) = parse_cri_line(l);
            assert_eq!((stream.as_str(), tag.as_str()), ("stdout", "F"), "{l:?}");
            msg
        })
        .collect();
    let want: Vec<String> = (0..80).map(|i| format!("seq-{i}")).collect();
    assert_eq!(msgs, want);
    let (code, _) = rpc_error(shim.reopen_log("nope").await);
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("c", ""), T).await.unwrap();
}

/// An exec with a time limit (a probe) is killed when it expires, and the
/// shim says so; one that ends in time is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_time_limit_kills_and_reports() {
    let w = World::new("probe").await;
    let b = w.bundle("c", &["sleep", "1000"], |_| {});
    let shim = w.shim_for("c", &b).await;
    create_and_start(&shim, "c", &b, "", "").await;

    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Exec", &exec_req("c", "slow", &["sleep", "100"], false), T)
        .await
        .unwrap();
    shim.set_exec_timeout("c", "slow", Duration::from_millis(500))
        .await
        .unwrap();
    let begun = std::time::Instant::now();
    let _: api::StartResponse = shim
        .call("Start", &start_req("c", "slow"), T)
        .await
        .unwrap();
    assert_eq!(wait_exit(&shim, "c", "slow").await, 137);
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "killed after {took:?}"
    );
    let report = shim.report("c", "slow").await.unwrap();
    assert!(report.timed_out, "{report:?}");
    assert_eq!(report.exit_status, Some(137));
    assert_eq!(report.status, "stopped");

    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call(
            "Exec",
            &exec_req("c", "quick", &["sh", "-c", "exit 4"], false),
            T,
        )
        .await
        .unwrap();
    shim.set_exec_timeout("c", "quick", Duration::from_secs(10))
        .await
        .unwrap();
    let _: api::StartResponse = shim
        .call("Start", &start_req("c", "quick"), T)
        .await
        .unwrap();
    assert_eq!(wait_exit(&shim, "c", "quick").await, 4);
    assert!(!shim.report("c", "quick").await.unwrap().timed_out);
    let (code, _) = rpc_error(
        shim.set_exec_timeout("c", "quick", Duration::from_secs(1))
            .await,
    );
    assert_eq!(
        code,
        ttrpc::Code::FAILED_PRECONDITION,
        "the exec has exited"
    );
    let (code, _) = rpc_error(
        shim.set_exec_timeout("c", "nope", Duration::from_secs(1))
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Kill", &kill_req("c", "", 9, false), T)
        .await
        .unwrap();
    wait_exit(&shim, "c", "").await;
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("c", ""), T).await.unwrap();
}

/// Bad requests get clear errors, leave nothing behind, and the shim keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_clear_errors_and_a_healthy_shim() {
    let w = World::new("bad").await;
    let good = w.bundle("good", &["sh", "-c", "exit 0"], |_| {});
    let shim = w.shim_for("good", &good).await;
    type E = containerd_shim_protos::protobuf::well_known_types::empty::Empty;

    let mut req = create_request("x1", &good, "", "");
    req.options = runtime_options("no-such-runtime", &w.dir.join("rt"));
    let (code, msg) = rpc_error(
        shim.call::<_, api::CreateTaskResponse>("Create", &req, T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("no-such-runtime"), "{msg}");

    let empty_bundle = w.dir.join("empty");
    std::fs::create_dir_all(&empty_bundle).unwrap();
    let (code, msg) = rpc_error(
        shim.call::<_, api::CreateTaskResponse>(
            "Create",
            &create_request("x2", &empty_bundle, "", ""),
            T,
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("config.json"), "{msg}");

    let broken = w.bundle("broken", &["true"], |_| {});
    std::fs::write(
        broken.join("config.json"),
        b"{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .unwrap();
    let (code, msg) = rpc_error(
        shim.call::<_, api::CreateTaskResponse>(
            "Create",
            &create_request("broken", &broken, "", ""),
            T,
        )
        .await,
    );
    assert!(
        msg.contains("config.json"),
        "the error must name the file: {msg}"
    );
    assert_eq!(
        code,
        ttrpc::Code::INVALID_ARGUMENT,
        "the runtime's kind: {msg}"
    );
    assert!(
        !w.state_dir("broken").exists(),
        "state left by a failed Create"
    );
    assert!(cgroup_dirs(&format!("{}/broken", w.cgroup_parent)).is_empty());
    // A sysctl the runtime refuses (not namespaced) is the request's fault,
    // said by the code rather than the text.
    let sysctl = w.bundle("sysctl", &["true"], |c| {
        c["linux"]["sysctl"] = json!({"vm.swappiness": "10"})
    });
    let (code, msg) = rpc_error(
        shim.call::<_, api::CreateTaskResponse>(
            "Create",
            &create_request("sysctl", &sysctl, "", ""),
            T,
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("vm.swappiness"), "{msg}");
    assert!(
        !w.state_dir("sysctl").exists(),
        "state left by a refused Create"
    );

    let (code, _) = rpc_error(
        shim.call::<_, E>("Kill", &kill_req("ghost", "", 9, false), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let (code, _) = rpc_error(
        shim.call::<_, api::DeleteResponse>("Delete", &delete_req("ghost", ""), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let (code, _) = rpc_error(
        shim.call::<_, api::StateResponse>("State", &state_req("ghost", ""), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let (code, _) = rpc_error(
        shim.call::<_, api::WaitResponse>("Wait", &wait_req("ghost", ""), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);
    let (code, _) = rpc_error(
        shim.call::<_, E>("Exec", &exec_req("ghost", "e", &["true"], false), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    let _: api::CreateTaskResponse = shim
        .call("Create", &create_request("good", &good, "", ""), T)
        .await
        .expect("the shim still creates containers");
    let (code, _) = rpc_error(
        shim.call::<_, api::CreateTaskResponse>(
            "Create",
            &create_request("good", &good, "", ""),
            T,
        )
        .await,
    );
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    let mut bad_exec = exec_req("good", "e", &["true"], false);
    bad_exec.spec.as_mut().unwrap().value = b"not json".to_vec();
    let (code, _) = rpc_error(shim.call::<_, E>("Exec", &bad_exec, T).await);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    let mut bad_stdio = exec_req("good", "e", &["true"], false);
    bad_stdio.stdout = "gopher://nowhere".into();
    let _: E = shim.call("Exec", &bad_stdio, T).await.unwrap();
    let (_, msg) = rpc_error(
        shim.call::<_, api::StartResponse>("Start", &start_req("good", "e"), T)
            .await,
    );
    assert!(msg.contains("gopher"), "{msg}");
    let (code, _) = rpc_error(
        shim.call::<_, api::StartResponse>("Start", &start_req("good", "e-none"), T)
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND);

    let _: api::StartResponse = shim.call("Start", &start_req("good", ""), T).await.unwrap();
    assert_eq!(wait_exit(&shim, "good", "").await, 0);
    let (code, _) = rpc_error(
        shim.call::<_, api::StartResponse>("Start", &start_req("good", ""), T)
            .await,
    );
    assert_eq!(
        code,
        ttrpc::Code::FAILED_PRECONDITION,
        "a stopped container cannot start again"
    );
    let _: api::DeleteResponse = shim
        .call("Delete", &delete_req("good", ""), T)
        .await
        .unwrap();
    assert!(w.cgroup_dirs().iter().all(|d| std::fs::read_dir(d)
        .map(|mut r| r.all(|e| !e.unwrap().file_type().unwrap().is_dir()))
        .unwrap_or(true)));
}

/// Containers of another handler run through that runtime's binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_oci_runtime_binary() {
    let w = World::new("runc").await;
    assert!(
        std::path::Path::new("/usr/sbin/runc").exists()
            || std::path::Path::new("/usr/bin/runc").exists(),
        "runc is required (Debian package runc)"
    );
    let b = w.bundle("c", &["sh", "-c", "echo via-runc; sleep 1000"], |_| {});
    let out = w.dir.join("out.txt");
    let root = w.dir.join("runc-root");
    let shim = w.shim_for("c", &b).await;
    let mut req = create_request("c", &b, &format!("file://{}", out.display()), "");
    req.options = runtime_options("runc", &root);
    let created: api::CreateTaskResponse = shim.call("Create", &req, T).await.unwrap();
    let runc_state = root.join(&w.namespace).join("c/state.json");
    assert!(
        runc_state.is_file(),
        "runc keeps its state under the given root"
    );
    let _: api::StartResponse = shim.call("Start", &start_req("c", ""), T).await.unwrap();
    wait_until("the output", Duration::from_secs(5), || {
        std::fs::read_to_string(&out).unwrap_or_default() == "via-runc\n"
    });
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call(
            "Exec",
            &exec_req("c", "e", &["sh", "-c", "exit 2"], false),
            T,
        )
        .await
        .unwrap();
    let _: api::StartResponse = shim.call("Start", &start_req("c", "e"), T).await.unwrap();
    assert_eq!(wait_exit(&shim, "c", "e").await, 2);
    let _: containerd_shim_protos::protobuf::well_known_types::empty::Empty = shim
        .call("Kill", &kill_req("c", "", 9, false), T)
        .await
        .unwrap();
    assert_eq!(wait_exit(&shim, "c", "").await, 137);
    let _: api::DeleteResponse = shim.call("Delete", &delete_req("c", ""), T).await.unwrap();
    assert!(!runc_state.exists(), "runc state left after Delete");
    assert!(!alive(created.pid as i32));
}

/// The shim was killed: `delete` removes what it left and reports how the
/// container ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_shim_cleaned_up_by_delete() {
    let w = World::new("dead").await;
    let b = w.bundle("c", &["sleep", "1000"], |_| {});
    let shim = w.shim_for("c", &b).await;
    let created_pid = create_and_start(&shim, "c", &b, "", "").await;
    for pid in w.shim_pids() {
        // SAFETY: plain kill(2) of the test's shim.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_until("the shim to die", Duration::from_secs(5), || {
        w.shim_pids().is_empty()
    });
    let r = w.delete_shim("c", &b);
    assert_eq!(r.exit_status, 137);
    wait_until("the container to be gone", Duration::from_secs(5), || {
        !alive(created_pid as i32)
    });
    assert!(!w.state_dir("c").exists());
    assert!(cgroup_dirs(&format!("{}/c", w.cgroup_parent)).is_empty());
}
