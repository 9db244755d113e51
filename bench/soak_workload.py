"""bench/soak's workload: pods and containers as a kubelet makes them, and
the checks of what each one must give (a mixin of soak's Soak)."""

import os
import time

from soaklib import Ctr, Pod, code_of

KINDS = ("exit", "term", "ignore", "oom")
KIND_WEIGHTS = (3, 3, 2, 1)
OOM_LIMIT = 24 << 20


class Workload:
    # ---- object configs
    def pod_config(self, pod):
        pb = self.pb
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=pod.name, uid=pod.uid, namespace="soak"),
            hostname=pod.name, log_directory=os.path.join(self.logs, pod.uid),
            labels={"soak": "1", "soak-pod": pod.name},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=0, pid=1, ipc=0))))
        if pod.port:
            cfg.port_mappings.append(pb.PortMapping(protocol=0, container_port=8080,
                                                    host_port=pod.port))
        return cfg

    def container_config(self, pod, c):
        pb = self.pb
        cmd = {
            "exit": ["sh", "-c", f"exit {c.code}"],
            "term": ["sh", "-c", 'trap "exit 7" TERM; while true; do echo tick; sleep 1; done'],
            "ignore": ["sh", "-c", 'trap "" TERM; while true; do sleep 1; done'],
            "oom": ["sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=64M count=1"],
        }[c.kind]
        res = pb.LinuxContainerResources(memory_limit_in_bytes=OOM_LIMIT) if c.kind == "oom" \
            else pb.LinuxContainerResources()
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=c.name), image=pb.ImageSpec(image=self.busybox),
            command=cmd, log_path=f"{c.name}.log", labels={"soak": "1", "soak-pod": pod.name,
                                                           "soak-ctr": c.name},
            linux=pb.LinuxContainerConfig(resources=res, security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=0, pid=1, ipc=0))))

    # ---- creates that survive a lost answer
    def find_pod(self, pod):
        r = self.call("ListPodSandbox", filter=self.pb.PodSandboxFilter(
            label_selector={"soak-pod": pod.name}))
        ids = [p.id for p in r.items if p.metadata.uid == pod.uid]
        return ids[0] if ids else None

    def find_ctr(self, pod, c):
        r = self.call("ListContainers", filter=self.pb.ContainerFilter(
            pod_sandbox_id=pod.id, label_selector={"soak-ctr": c.name}))
        return r.containers[0].id if r.containers else None

    def create_surviving_restarts(self, rpc, call, find):
        """The id `call` creates, retried while berthd is unavailable (a
        restart); after a failed try, `find` looks for what it created,
        since the answer may be what was lost."""
        for _ in range(5):
            try:
                return call()
            except Exception as e:  # noqa: BLE001
                if code_of(e) is None or code_of(e).name != "UNAVAILABLE" or \
                        self.stop_all.is_set():
                    raise
                time.sleep(0.2)
                found = find()
                if found:
                    return found
        raise RuntimeError(f"{rpc}: berthd unavailable 5 times")

    def create_pod(self, pod):
        cfg = self.pod_config(pod)
        self.pending(pod.name, 1)
        try:
            pod.id = self.create_surviving_restarts(
                "RunPodSandbox",
                lambda: self.cri.call("RunPodSandbox", deadline=120, config=cfg).pod_sandbox_id,
                lambda: self.find_pod(pod))
            self.record(pod.id, True)
        finally:
            self.pending(pod.name, -1)

    def create_ctr(self, pod, c):
        cfg = self.container_config(pod, c)
        pcfg = self.pod_config(pod)
        c.id = self.create_surviving_restarts(
            "CreateContainer",
            lambda: self.cri.call("CreateContainer", deadline=120, pod_sandbox_id=pod.id,
                                  config=cfg, sandbox_config=pcfg).container_id,
            lambda: self.find_ctr(pod, c))
        self.record(c.id, True)

    # ---- a pod's life
    def remove_obj(self, rpc, oid, **fields):
        self.pending(oid, 1)
        try:
            self.call(rpc, **fields)
            self.record(oid, False)
        finally:
            self.pending(oid, -1)

    def status_of(self, c):
        return self.call("ContainerStatus", container_id=c.id).status

    def check_exit(self, c, st, how):
        """st: an EXITED ContainerStatus of c."""
        if c.checked:
            return
        c.checked = True
        self.checks["exit code"] += 1
        got = (st.exit_code, st.reason)
        if c.any_exit or c.pod.shim_killed:
            return
        allowed = c.allowed | (c.expected_on_stop() if how == "stop" or c.kind in ("exit", "oom")
                               else set())
        if got not in allowed:
            self.violation(f"container {c.pod.name}/{c.name} ({c.kind}, {c.id[:12]}) exited with "
                           f"{got}, expected one of {sorted(allowed)} ({how}; message "
                           f"{st.message!r})")

    def wait_exited(self, c, seconds):
        deadline = time.monotonic() + seconds
        while True:
            st = self.status_of(c)
            if st.state == self.pb.CONTAINER_EXITED or time.monotonic() > deadline:
                return st
            time.sleep(0.2)

    def pod_life(self, pod):
        rng = self.rng
        try:
            self.create_pod(pod)
        except Exception as e:  # noqa: BLE001
            self.unexpected(f"RunPodSandbox {pod.name}", e)
            self.teardown(pod)
            return
        for i in range(rng.randint(1, 3)):
            kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
            pod.containers.append(Ctr(pod, f"c{i}-{kind}", kind, rng.choice((0, 0, 1, 3, 42, 101))))
        for c in pod.containers:
            try:
                self.create_ctr(pod, c)
                self.call("StartContainer", container_id=c.id)
                c.started = True
                c.log_path = os.path.join(self.logs, pod.uid, f"{c.name}.log")
            except Exception as e:  # noqa: BLE001
                if not pod.shim_killed:
                    self.unexpected(f"create/start {pod.name}/{c.name}", e)
        end = time.monotonic() + rng.uniform(2.0, 8.0)
        while time.monotonic() < end and not self.stop_all.is_set():
            time.sleep(rng.uniform(0.3, 1.5))
            running = [c for c in pod.containers if c.started and c.kind in ("term", "ignore")]
            if not running:
                continue
            c = rng.choice(running)
            action = rng.choice(("exec", "exec", "exec-timeout", "reopen"))
            try:
                if action == "exec":
                    self.exec_check(c)
                elif action == "exec-timeout":
                    self.exec_timeout_check(c)
                elif c.kind == "term":
                    self.reopen_check(c)
            except Exception as e:  # noqa: BLE001
                if not (c.allowed or c.pod.shim_killed):
                    self.unexpected(f"{action} {pod.name}/{c.name}", e)
        # the ones that end by themselves
        for c in pod.containers:
            if c.started and c.kind in ("exit", "oom"):
                try:
                    st = self.wait_exited(c, 20)
                    if st.state == self.pb.CONTAINER_EXITED:
                        self.check_exit(c, st, "own")
                    elif not c.pod.shim_killed:
                        self.violation(f"container {pod.name}/{c.name} ({c.kind}) still "
                                       f"{st.state} 20 s after it should have exited")
                except Exception as e:  # noqa: BLE001
                    if not pod.shim_killed:
                        self.unexpected(f"ContainerStatus {pod.name}/{c.name}", e)
        self.teardown(pod)

    def persist(self, fn, *args, **kw):
        """kubelet retries a teardown step that failed: 5 tries, 1 s apart."""
        for i in range(5):
            try:
                return fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                if i == 4 or self.stop_all.is_set():
                    raise
                self.note(f"retrying {args[0] if args else fn.__name__}: {code_of(e)} "
                          f"{e.details() if hasattr(e, 'details') else e}")
                time.sleep(1.0)

    def teardown(self, pod):
        pod.released.wait(60)
        for c in pod.containers:
            if c.id is None:
                continue
            try:
                timeout = {"ignore": 1, "term": 10}.get(c.kind, 2)
                self.persist(self.call, "StopContainer", deadline=90, container_id=c.id,
                             timeout=timeout)
                if c.started:
                    st = self.wait_exited(c, 10)
                    if st.state == self.pb.CONTAINER_EXITED:
                        self.check_exit(c, st, "stop")
                    else:
                        self.violation(f"container {pod.name}/{c.name} {st.state} after "
                                       f"StopContainer answered")
            except Exception as e:  # noqa: BLE001
                self.unexpected(f"StopContainer {pod.name}/{c.name}", e)
        for c in pod.containers:
            if c.id is None:
                continue
            try:
                self.persist(self.remove_obj, "RemoveContainer", c.id, container_id=c.id)
            except Exception as e:  # noqa: BLE001
                self.unexpected(f"RemoveContainer {pod.name}/{c.name}", e)
        if pod.id is None:
            return
        try:
            pod.stopping = True
            self.persist(self.call, "StopPodSandbox", deadline=120, pod_sandbox_id=pod.id)
            self.persist(self.remove_obj, "RemovePodSandbox", pod.id, pod_sandbox_id=pod.id)
            for c in pod.containers:  # removed with their pod
                if c.id:
                    self.record(c.id, False)
        except Exception as e:  # noqa: BLE001
            self.unexpected(f"Stop/RemovePodSandbox {pod.name}", e)

    def exec_check(self, c):
        r = self.call("ExecSync", deadline=30, container_id=c.id,
                      cmd=["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"], timeout=10)
        self.checks["exec"] += 1
        if (r.stdout, r.stderr, r.exit_code) != (b"out-42\n", b"err\n", 3) and not c.allowed:
            self.violation(f"ExecSync in {c.pod.name}/{c.name}: stdout {r.stdout!r} stderr "
                           f"{r.stderr!r} exit {r.exit_code}, expected out-42/err/3")

    def exec_timeout_check(self, c):
        t0 = time.monotonic()
        try:
            r = self.call("ExecSync", deadline=30, container_id=c.id, cmd=["sleep", "5"],
                          timeout=1)
        except Exception as e:  # noqa: BLE001
            if code_of(e) is not None and code_of(e).name == "DEADLINE_EXCEEDED":
                self.checks["exec timeout"] += 1
                if time.monotonic() - t0 > 4.5 and not self.in_fault_window():
                    self.violation(f"ExecSync timeout 1 s in {c.pod.name}/{c.name} answered "
                                   f"after {time.monotonic() - t0:.1f} s")
                return
            raise
        if c.allowed and r.exit_code != 0:
            return  # the run killed the container's init meanwhile: the exec died with it
        self.violation(f"ExecSync `sleep 5` with timeout 1 s in {c.pod.name}/{c.name} got an OK "
                       f"(exit code {r.exit_code})")

    def reopen_check(self, c):
        rotated = c.log_path + ".1"
        try:
            os.rename(c.log_path, rotated)
        except FileNotFoundError:
            if not (c.pod.shim_killed or c.allowed):  # else nobody reopened it
                self.violation(f"log {c.log_path} of running {c.pod.name}/{c.name} does not "
                               f"exist")
            return
        self.call("ReopenContainerLog", container_id=c.id)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(c.log_path, errors="replace") as f:
                    if "tick" in f.read():
                        self.checks["log reopen"] += 1
                        os.unlink(rotated)
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        # A shim killed during the wait took the log's writer with it.
        if not (self.in_fault_window() or c.allowed or c.pod.shim_killed):
            self.violation(f"no tick in the reopened log of {c.pod.name}/{c.name} within 5 s")
        os.unlink(rotated)

    # ---- workload threads
    def worker(self):
        while not self.stop_workload.is_set():
            with self.lock:
                wait = self.next_start - time.monotonic()
                self.next_start = max(self.next_start, time.monotonic()) + 1.0 / self.args.rate
                self.pod_counter += 1
                n = self.pod_counter
                port = self.ports[n % len(self.ports)] if n % 2 else 0
            if wait > 0:
                time.sleep(wait)
            if self.stop_workload.is_set():
                return
            pod = Pod(n, port)
            with self.lock:
                self.pods[pod.name] = pod
            try:
                self.pod_life(pod)
            finally:
                with self.lock:
                    self.pods.pop(pod.name, None)

    def kubelet(self):
        pb = self.pb
        while not self.stop_all.is_set():
            t0 = time.monotonic()
            try:
                pods = self.cri.call("ListPodSandbox", deadline=10).items
                ctrs = self.cri.call("ListContainers", deadline=10).containers
                self.cri.call("ListPodSandboxStats", deadline=10,
                              filter=pb.PodSandboxStatsFilter())
                self.cri.call("ListContainerStats", deadline=10, filter=pb.ContainerStatsFilter())
                for p in pods:
                    self.cri.call("PodSandboxStatus", deadline=10, pod_sandbox_id=p.id)
                for c in ctrs:
                    self.cri.call("ContainerStatus", deadline=10, container_id=c.id)
            except Exception as e:  # noqa: BLE001
                name = code_of(e).name if code_of(e) else ""
                if name not in ("UNAVAILABLE", "NOT_FOUND"):
                    self.unexpected("kubelet loop", e)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))

    def images(self):
        while not self.stop_workload.wait(self.rng.uniform(8, 20)):
            self.pull_remove()

    def pull_remove(self):
        with self.bulk_lock:
            self.pull_remove_locked()

    def pull_remove_locked(self):
        spec = self.pb.ImageSpec(image=self.bulk)
        try:
            self.call("PullImage", deadline=120, image=spec)
            st = self.call("ImageStatus", image=spec)
            if not st.image.id:
                self.violation(f"ImageStatus {self.bulk}: absent right after PullImage")
            self.call("RemoveImage", image=spec)
            st = self.call("ImageStatus", image=spec)
            self.checks["pull/remove"] += 1
            if st.image.id:
                self.violation(f"ImageStatus {self.bulk}: present after RemoveImage")
        except Exception as e:  # noqa: BLE001
            self.unexpected(f"pull/remove {self.bulk}", e)
