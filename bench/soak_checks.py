"""bench/soak's invariants: running against processes, no lost OK after a
restart, and nothing left at the end (a mixin of soak's Soak)."""

import os
import time

import benchlib
from benchlib import (
    cgroup_children, cgroup_dirs, cmdline_of, cni_cache_entries, cni_nat_rules,
    host_local_leases, links, list_dir, mounts_under, nsfs_mounts_under, pids_mentioning)
from soaklib import tree


class Checks:
    # ---- invariants checked while it runs
    def cgroup_procs(self, cid):
        procs = set()
        for d in cgroup_dirs(f"{self.cgroup_parent}/{cid}"):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    procs |= {int(x) for x in f.read().split()}
            except (OSError, ValueError):
                pass
        return {p for p in procs if not benchlib.is_zombie(p)}

    def consistency(self):
        """Containers reported running have processes; exited ones none."""
        try:
            ctrs = self.cri.call("ListContainers", deadline=10).containers
        except Exception:  # noqa: BLE001 - berthd restarting
            return
        with self.lock:
            frozen = {c.id for p in self.pods.values() if p.frozen_until > time.monotonic()
                      for c in p.containers}
        suspects = []
        for c in ctrs:
            if c.id in frozen:  # its shim is stopped: nobody can know yet
                continue
            procs = self.cgroup_procs(c.id)
            if c.state == self.pb.CONTAINER_RUNNING and not procs:
                suspects.append((c.id, "running"))
            elif c.state == self.pb.CONTAINER_EXITED and procs:
                suspects.append((c.id, "exited"))
        self.checks["running/exited vs processes"] += len(ctrs)
        if not suspects:
            return
        time.sleep(2.0)
        for cid, was in suspects:
            try:
                st = self.cri.call("ContainerStatus", deadline=10, container_id=cid).status
            except Exception:  # noqa: BLE001 - removed meanwhile, or berthd restarting
                continue
            procs = self.cgroup_procs(cid)
            with self.lock:
                frozen = {c.id for p in self.pods.values() if p.frozen_until > time.monotonic()
                          for c in p.containers}
            if cid in frozen:
                continue
            # A full disk delays the record of an exit (berthd retries it,
            # as containerd does); not the exit code itself.
            if was == "running" and st.state == self.pb.CONTAINER_RUNNING and not procs \
                    and not self.in_window_of("enospc"):
                self.violation(f"container {st.metadata.name} ({cid[:12]}) reported running for "
                               f"2 s with no process in its cgroup")
            if was == "exited" and st.state == self.pb.CONTAINER_EXITED and procs:
                self.violation(f"container {st.metadata.name} ({cid[:12]}) reported exited "
                               f"(code {st.exit_code}, {st.reason}) for 2 s while its processes "
                               f"{sorted(procs)[:5]} run")

    def no_lost_ok(self):
        """After a restart: OK'd creates exist, OK'd removes do not."""
        with self.lock:
            before = {k: dict(v) for k, v in self.objects.items()}
        try:
            pods = {p.id for p in self.call("ListPodSandbox", deadline=10).items}
            ctrs = {c.id for c in self.call("ListContainers", deadline=10).containers}
        except Exception as e:  # noqa: BLE001
            self.unexpected("lists after a restart", e)
            return
        with self.lock:
            after = {k: dict(v) for k, v in self.objects.items()}
        present = pods | ctrs
        for oid, o in before.items():
            a = after.get(oid)
            if len(oid) != 64 or o["pending"] or a is None or a["ver"] != o["ver"]:
                continue
            self.checks["no lost OK"] += 1
            if o["exists"] and oid not in present:
                self.violation(f"{oid[:12]} was created (OK) but is gone after the restart")
            if not o["exists"] and oid in present:
                self.violation(f"{oid[:12]} was removed (OK) but is back after the restart")
        # A restart leaves ready pods ready (kubelet would recreate the others).
        with self.lock:
            ready = [p for p in self.pods.values()
                     if p.id and not p.shim_killed and not p.stopping]
        for p in ready:
            try:
                st = self.call("PodSandboxStatus", deadline=10, pod_sandbox_id=p.id).status
            except Exception:  # noqa: BLE001 - removed meanwhile
                continue
            self.checks["ready after a restart"] += 1
            if st.state != self.pb.SANDBOX_READY and not p.stopping:
                self.violation(f"pod {p.name} ({p.id[:12]}) was ready before berthd's restart "
                               f"and is not after it")
        # forget settled removals: the ledger stays small
        with self.lock:
            for oid in [k for k, v in self.objects.items() if not v["exists"] and not v["pending"]]:
                del self.objects[oid]

    def monitor(self):
        while not self.stop_all.wait(1.0):
            s = self.sample_berthd()
            if s:
                with self.lock:
                    self.rss.append((self.now(), s[0], s[1], s[2]))
            if int(self.now()) % 3 == 0:
                self.consistency()

    def settle(self):
        """Until the shims are gone and berthd's fd count holds still."""
        deadline = time.monotonic() + 30
        while self.shim_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        last = None
        for _ in range(20):
            time.sleep(0.5)
            s = self.sample_berthd()
            if s and last and s[1] == last[1]:
                return s
            last = s
        return last

    def snapshot(self):
        return {
            "mounts": set(mounts_under(self.tmp)),
            "nsfs": set(nsfs_mounts_under(self.tmp)),
            "state": tree(self.state),
            "cni chains": {line.split()[1] for line in benchlib.nat_rules()
                           if line.startswith("-N CNI-") and not line.startswith("-N CNI-HOSTPORT")},
            "snapshots": set(list_dir(os.path.join(self.root, "images", "snapshots"))),
        }

    def leftovers(self, base):
        now = self.snapshot()
        out = []
        out += [f"shim {p} ({cmdline_of(p)[:100]})" for p in self.shim_pids()]
        try:
            out += [f"pod {p.metadata.name} ({p.id[:12]}) still listed"
                    for p in self.call("ListPodSandbox").items]
            out += [f"container {c.metadata.name} ({c.id[:12]}) still listed"
                    for c in self.call("ListContainers").containers]
        except Exception as e:  # noqa: BLE001
            out.append(f"lists failed: {e}")
        out += [f"mount {m}" for m in sorted(now["mounts"] - base["mounts"])]
        out += [f"network namespace mount {m}" for m in sorted(now["nsfs"] - base["nsfs"])]
        out += [f"cgroup {c}" for c in cgroup_children(self.cgroup_parent)]
        out += [f"veth {n} on {self.net['bridge']}" for n, i in links().items()
                if i["master"] == self.net["bridge"]]
        out += [f"host-local lease {x}" for x in host_local_leases(self.ipam)]
        out += [f"nat rule {r}" for r in cni_nat_rules([self.net["name"]])]
        out += [f"iptables nat chain {c}" for c in sorted(now["cni chains"] - base["cni chains"])]
        ids = benchlib.ids_in_log(os.path.join(self.tmp, "berthd.log"))
        out += [f"cached CNI result {e}" for e in cni_cache_entries([self.net["name"]], ids)]
        mine = {self.berthd_pid(), self.registry.proc.pid, os.getpid()}
        out += [f"process {p} ({cmdline_of(p)[:100]})" for p in pids_mentioning(self.tmp)
                if p not in mine and not benchlib.is_zombie(p)]
        out += [f"state {x}" for x in sorted(now["state"] - base["state"])]
        out += [f"content-store ingest {x}"
                for x in list_dir(os.path.join(self.root, "images", "content", "ingest"))]
        out += [f"snapshot {x} (no image holds it)"
                for x in sorted(now["snapshots"] - base["snapshots"])]
        return out
