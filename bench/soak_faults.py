"""bench/soak's faults, each injected at a random moment and logged (a mixin
of soak's Soak)."""

import json
import os
import signal
import time

from benchlib import cmdline_of
from soaklib import Pod, code_of


class Faults:
    # ---- faults
    def fault(self, kind, detail):
        with self.lock:
            self.faults.append((self.now(), kind, detail))
        self.note(f"fault {kind}: {detail}")

    def faults_loop(self):
        if not self.args.faults:
            return
        order = []
        while not self.stop_faults.wait(self.rng.expovariate(1.0 / self.args.fault_every)):
            if not order:  # every kind once per round, in a random order
                order = list(self.args.faults)
                self.rng.shuffle(order)
            kind = order.pop()
            try:
                getattr(self, "fault_" + kind.replace("-", "_"))()
            except Exception as e:  # noqa: BLE001 - a fault that could not be injected
                why = f"{code_of(e)} {e.details()}" if code_of(e) is not None else repr(e)
                self.note(f"fault {kind} not injected: {why}")

    def fault_berthd_kill(self):
        w = self.window("berthd-kill")
        with self.berthd_lock:
            pid = self.berthd.pid
            os.kill(pid, signal.SIGKILL)
            self.berthd.wait()
            t0 = time.monotonic()
            self.start_berthd()
            serving = f"{self.serving_after * 1000:.0f} ms" if self.serving_after is not None \
                else "?"
            self.fault("berthd-kill", f"pid {pid}; restarted: serving (its log) after {serving}, "
                       f"answering this client after {(time.monotonic() - t0) * 1000:.0f} ms")
            self.restarts += 1
        self.close_window(w)
        self.no_lost_ok()

    def random_pod(self, started=False):
        with self.lock:
            pods = [p for p in self.pods.values() if p.id and not p.shim_killed and
                    (not started or any(c.started for c in p.containers))]
        return self.rng.choice(pods) if pods else None

    def shim_of(self, pod):
        """The pod's shim: started for the pod or for its first container."""
        ids = [pod.id] + [c.id for c in pod.containers if c.id]
        for p in self.shim_pids():
            line = cmdline_of(p)
            if any(i in line for i in ids):
                return p
        return None

    def fault_shim_kill(self):
        pod = self.random_pod(started=True)
        shim = self.shim_of(pod) if pod else None
        if not shim:
            raise RuntimeError(f"no shim found (pod {pod.name if pod else None})")
        pod.shim_killed = True
        pod.released.clear()
        w = self.window("shim-kill")
        try:
            os.kill(shim, signal.SIGKILL)
            self.fault("shim-kill", f"pid {shim} of pod {pod.name} ({pod.id[:12]})")
            # Its containers must be reported exited, and nothing of them
            # may run on (the teardown waits for this check).
            for c in [c for c in pod.containers if c.started]:
                st = self.wait_exited(c, 20)
                self.checks["exited after shim-kill"] += 1
                if st.state != self.pb.CONTAINER_EXITED:
                    self.violation(f"{pod.name}/{c.name} still {st.state} 20 s after its shim "
                                   f"was killed")
                    continue
                time.sleep(0.5)
                procs = self.cgroup_procs(c.id)
                if procs:
                    self.violation(f"{pod.name}/{c.name} reported exited after its shim was "
                                   f"killed, but {sorted(procs)[:5]} run on")
        finally:
            pod.released.set()
            self.close_window(w)

    def fault_shim_stop(self):
        pod = self.random_pod(started=True)
        shim = self.shim_of(pod) if pod else None
        if not shim:
            raise RuntimeError(f"no shim found (pod {pod.name if pod else None})")
        seconds = self.rng.uniform(2, 5)
        w = self.window("shim-stop")
        pod.frozen_until = float("inf")
        os.kill(shim, signal.SIGSTOP)
        self.fault("shim-stop", f"pid {shim} of pod {pod.name} for {seconds:.1f} s")
        time.sleep(seconds)
        os.kill(shim, signal.SIGCONT)
        pod.frozen_until = time.monotonic() + 3.0
        self.close_window(w)

    def fault_init_kill(self):
        with self.lock:
            cands = [c for p in self.pods.values() if not p.shim_killed for c in p.containers
                     if c.started and c.kind in ("term", "ignore") and not c.allowed]
        if not cands:
            raise RuntimeError("no running container of kind term or ignore")
        c = self.rng.choice(cands)
        r = self.cri.call("ContainerStatus", deadline=10, container_id=c.id, verbose=True)
        if r.status.state != self.pb.CONTAINER_RUNNING:
            return
        pid = json.loads(r.info["info"]).get("pid") or 0
        if pid <= 1:
            return
        c.allowed.add((137, "Error"))
        os.kill(pid, signal.SIGKILL)
        self.fault("init-kill", f"pid {pid} of {c.pod.name}/{c.name} ({c.id[:12]})")

    def fault_enospc(self):
        seconds = self.rng.uniform(5, 12)
        path = os.path.join(self.root, "soak-fill")
        w = self.window("enospc")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        chunk = b"\xa5" * (1 << 20)
        filled = 0
        try:
            while True:
                filled += os.write(fd, chunk)
        except OSError:
            pass
        self.fault("enospc", f"{self.root} filled ({filled >> 20} MiB) for {seconds:.1f} s")
        time.sleep(seconds)
        os.close(fd)
        os.unlink(path)
        self.close_window(w)

    def fault_registry_stall(self):
        seconds = self.rng.uniform(8, 15)
        w = self.window("registry-stall")
        self.proxy.stall(seconds)
        self.fault("registry-stall", f"responses stall after 256 KiB for {seconds:.1f} s; "
                   f"PullImage {self.bulk}")
        self.pull_remove()
        self.close_window(w)

    def fault_client_cancel(self):
        rpc = self.rng.choice(("RunPodSandbox", "PullImage"))
        if rpc == "PullImage":
            # A cancelled pull may still finish in berthd: not while another
            # thread checks that a removal removed.
            with self.bulk_lock:
                self.client_cancel(rpc)
        else:
            self.client_cancel(rpc)

    def client_cancel(self, rpc):
        delay = self.rng.uniform(0, 0.3)
        w = self.window("client-cancel")
        if rpc == "PullImage":
            fut = self.cri.future(rpc, deadline=120, image=self.pb.ImageSpec(image=self.bulk))
        else:
            with self.lock:
                self.pod_counter += 1
                n = self.pod_counter
            pod = Pod(n, 0)
            pod.name = f"soak-cancel-{n}"
            fut = self.cri.future(rpc, deadline=120, config=self.pod_config(pod))
        time.sleep(delay)
        cancelled = fut.cancel()
        self.fault("client-cancel", f"{rpc} cancelled after {delay * 1000:.0f} ms "
                   f"({'in flight' if cancelled else 'had answered'})")
        # What a kubelet does with what it does not know: removes it (its
        # garbage collection), once the daemon has had time to finish.
        time.sleep(3.0)
        try:
            if rpc == "RunPodSandbox":
                pid = self.find_pod(pod)
                if pid:
                    self.call("StopPodSandbox", pod_sandbox_id=pid)
                    self.call("RemovePodSandbox", pod_sandbox_id=pid)
            else:
                self.call("RemoveImage", image=self.pb.ImageSpec(image=self.bulk))
        except Exception as e:  # noqa: BLE001
            self.unexpected(f"cleanup after a cancelled {rpc}", e)
        self.close_window(w)
