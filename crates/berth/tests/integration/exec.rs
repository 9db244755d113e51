//! exec into running containers: flags, process files, terminals, detach.

use serde_json::json;

use crate::common::Env;

#[test]
fn exec_flags_and_exit_codes() {
    let env = Env::new("exec");
    let bundle = env.bundle("b", &["sleep", "60"], |c| {
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("FROM_CONFIG=1"));
    });
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let out = env.ok(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        "--additional-gids",
        "2000",
        &id,
        "sh",
        "-c",
        "echo $FOO $FROM_CONFIG; pwd; id -u; id -G; echo $$; readlink /proc/self/ns/pid",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bar 1");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1000 2000");
    assert_ne!(lines[4], "1");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert_eq!(
        lines[5],
        std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .unwrap()
            .display()
            .to_string()
    );

    let out = env.berth(&["exec", &id, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let err = env.fails(&["exec", &id, "no-such-command"]);
    assert!(err.contains("executable file not found"), "{err}");

    // --process FILE
    let process = env.dir.join("process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&json!({"args": ["sh", "-c", "echo from-file $X"], "cwd": "/", "env": ["X=y", "PATH=/bin"], "user": {"uid": 0, "gid": 0}})).unwrap(),
    )
    .unwrap();
    assert_eq!(
        env.ok(&["exec", "--process", process.to_str().unwrap(), &id]),
        "from-file y\n"
    );

    // Detached, with a pid file.
    let pid_file = env.dir.join("exec.pid");
    env.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "30",
    ]);
    let exec_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert!(crate::common::alive(exec_pid as i64));
    let procs = env.ok(&["exec", &id, "ps", "-o", "comm"]);
    assert_eq!(procs.matches("sleep").count(), 2, "{procs}");

    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    let err = env.fails(&["exec", &id, "true"]);
    assert!(err.contains("stopped"), "{err}");
    env.ok(&["delete", &id]);
}

#[test]
fn exec_with_a_terminal() {
    let env = Env::new("exectty");
    let bundle = env.bundle("b", &["sleep", "60"], |_| {});
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    let sock_path = env.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let receiver = std::thread::spawn(move || crate::common::receive_console(&listener));
    env.ok(&[
        "exec",
        "-t",
        "-d",
        "--console-socket",
        sock_path.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; echo exec-tty-ok; sleep 0.2",
    ]);
    let (_, master) = receiver.join().unwrap();
    let text = crate::common::read_until(&master, "exec-tty-ok");
    assert!(text.contains("/dev/pts/"), "{text}");
    env.ok(&["delete", "--force", &id]);
}
