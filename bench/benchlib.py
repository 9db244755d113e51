"""Pieces the bench/ scripts share (each script imports this from its own
directory).

Errors: a helper that cannot go on calls die(), which raises BenchError; each
script's entry point (main, inner_main, exit_on_error) prints it as
`<script>: error: <message>` and exits 1. warn() and the cleanup reports name
the running script the same way (prog(): its file name).

Over 800 lines: the helpers every bench script shares, so that they exist
once.
"""

import hashlib
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = "/sys/fs/cgroup/unified"  # the cgroup2 mount of this machine's hybrid layout
MEM_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")  # kB fields of /proc/<pid>/status


# --------------------------------------------------------------------------
# messages and errors
# --------------------------------------------------------------------------

class BenchError(Exception):
    """A setup step or a measured command failed; the bench stops (after its
    cleanup) and exits non-zero."""


def prog():
    """The running bench's name (its script's file name, e.g. `shim`), the
    prefix of its warnings and errors."""
    return os.path.basename(sys.argv[0])


def log(msg=""):
    """Print a line of the bench's output (stdout, flushed at once)."""
    print(msg, flush=True)


def warn(msg):
    """Print `<script>: warning: <msg>` on stderr (stdout keeps the RESULT
    lines last)."""
    print(f"{prog()}: warning: {msg}", file=sys.stderr, flush=True)


def die(msg):
    """Stop the bench with msg: raises BenchError."""
    raise BenchError(msg)


def exit_on_error(fn):
    """Run fn(); a BenchError ends the process with `<script>: error:
    <message>` on stderr and exit status 1."""
    try:
        fn()
    except BenchError as e:
        print(f"{prog()}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


# What stops a bench with its cleanup: kill's default, ^C, and the hang-up a
# closed terminal or ssh session sends (also to a stopped job when its shell
# exits), whose default action would end the process with no cleanup at all.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def inner_main(inner):
    """Entry point of the process inside `unshare -m`: run inner(). A stop
    signal (STOP_SIGNALS) becomes a KeyboardInterrupt, once: a second one
    (e.g. the whole process group got one, and the outer process forwards it
    too) must not abort the cleanup. Exits 1 on a BenchError, 130 when
    interrupted."""
    def on_signal(*_):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        exit_on_error(inner)
    except KeyboardInterrupt:
        print(f"{prog()}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def main(ns_marker, outer, inner):
    """A script's entry point: inner() under inner_main if $ns_marker is "1"
    (this is the process inside `unshare -m`), else outer() under
    exit_on_error."""
    if os.environ.get(ns_marker) == "1":
        inner_main(inner)
    else:
        exit_on_error(outer)


def load_bench(name):
    """Another bench script of this directory (they have no .py name) as a
    module, e.g. load_bench("cri-pod-start")."""
    import importlib.machinery
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), name)
    module_name = name.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(module_name, path)
    spec = importlib.util.spec_from_loader(module_name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def exit_after_cleanup(rc, problems):
    """Exit the outer process with the inner one's status rc (128 + signal
    if a signal killed it), or 1 if rc is 0 but the cleanup left problems,
    which are listed on stderr."""
    if rc < 0:  # the inner process died of a signal
        rc = 128 - rc
    if problems:
        print(f"{prog()}: cleanup incomplete:\n  " + "\n  ".join(problems), file=sys.stderr)
        rc = rc or 1
    sys.exit(rc)


# --------------------------------------------------------------------------
# running commands
# --------------------------------------------------------------------------

def call_precise(cmd, timeout, **kw):
    """subprocess.call(cmd, timeout=...) without its rounding: Popen.wait with a
    timeout polls with doubling sleeps (0.5 ms up to 50 ms), so a measured time
    lands on the next step of 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 63.5 ms and so
    on. A blocking wait, with a timer that kills a hung command, returns as
    soon as the command exits. Raises subprocess.TimeoutExpired on a hang."""
    proc = subprocess.Popen(cmd, **kw)
    fired = threading.Event()

    def expire():
        fired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    # A daemon thread, started within the try: a stop signal's
    # KeyboardInterrupt, wherever it lands, must not leave a timer the
    # interpreter waits for at exit, nor the command running unreaped.
    timer.daemon = True
    try:
        timer.start()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout)
    return rc


def run(cmd, what=None, timeout=300, check=True, **kw):
    """Run cmd (stdin /dev/null) capturing its output as text; dies if it
    hangs past timeout seconds or (check) exits non-zero, quoting the tail of
    its stderr and stdout. Returns the CompletedProcess."""
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        die(f"`{' '.join(cmd)}` did not finish within {timeout}s")
    if check and r.returncode != 0:
        die(f"{what or 'command'} failed (exit {r.returncode}): `{' '.join(cmd)}`\n"
            f"stderr:\n{r.stderr.strip()[-4000:]}\nstdout (tail):\n{r.stdout.strip()[-2000:]}")
    return r


def version_of(cmd):
    """The first line cmd (e.g. [binary, "--version"]) prints, on stdout or
    else stderr; "?" if it prints nothing, fails to start or hangs."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def runc_shim_version(runc_shim):
    """containerd-shim-runc-v2's version, from its `-v` output ("?" if none)."""
    words = run([runc_shim, "-v"], check=False).stdout.split()
    return words[words.index("Version:") + 1] if "Version:" in words else "?"


def read_tail(path, n=4000):
    """The last n characters of a text file, stripped (all of it if n is
    None); "" if it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip()
    except OSError:
        return ""
    return text if n is None else text[-n:]


def stop_process(proc, timeout=15):
    """SIGTERM a Popen (if it still runs) and reap it; SIGKILL after timeout s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------
# the tools and binaries a bench needs
# --------------------------------------------------------------------------

def find_tool(name, package=None, candidates=()):
    """The first executable path of candidates, else name on $PATH (or in
    /usr/sbin, /sbin); dies if there is none, naming the Debian package that
    has it when given."""
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    p = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not p:
        die(f"{name} not found" + (f" (Debian package {package})" if package else ""))
    return p


def cargo_build(packages, outputs, profile="release"):
    """`cargo build --profile <profile> -p <package>...` in the repository
    (incremental, so a stale binary is never measured); returns the paths of
    the outputs (names in target/<profile>), dies with cargo's stderr if one
    is missing. The CRI client is built with the bench-client profile
    (Cargo.toml says why)."""
    cmd = ["cargo", "build", "--profile", profile]
    for p in packages:
        cmd += ["-p", p]
    r = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    paths = [os.path.join(REPO, "target", profile, o) for o in outputs]
    if r.returncode != 0 or not all(os.access(p, os.X_OK) for p in paths):
        die(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{r.stderr.strip()[-6000:]}")
    return paths


def find_built(var, package, output, profile="release"):
    """$var (made absolute) if set, else target/<profile>/<output> built now
    by cargo_build([package])."""
    if os.environ.get(var):
        return os.path.abspath(os.environ[var])
    return cargo_build([package], [output], profile)[0]


def find_berth():
    """$BERTH, else the production build from scripts/build-release (built
    now: it is incremental, so a stale binary is never measured)."""
    if os.environ.get("BERTH"):
        return os.path.abspath(os.environ["BERTH"])
    r = subprocess.run([os.path.join(REPO, "scripts/build-release")], cwd=REPO,
                       stdout=subprocess.PIPE, text=True)
    berth = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not os.path.exists(berth):
        die(f"scripts/build-release failed (exit {r.returncode})")
    return berth


def copy_binaries(tmp, srcs):
    """Copy each binary srcs[name] to <tmp>/bin/<name> (the dir made now), so
    that a concurrent cargo build cannot swap one mid-run; returns the dir."""
    bin_dir = os.path.join(tmp, "bin")
    os.mkdir(bin_dir)
    for name, src in srcs.items():
        shutil.copy2(src, os.path.join(bin_dir, name))
    return bin_dir


def built_at(path):
    """A binary's modification time, "YYYY-mm-dd HH:MM:SS" (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))


# --------------------------------------------------------------------------
# the outer process: temp dir, re-exec under `unshare -m`, final sweep
# --------------------------------------------------------------------------

def root_and_unshare():
    """The outer process's first step: dies unless we run as root; returns
    the path of unshare (util-linux), to run the script again under."""
    if os.geteuid() != 0:
        die("must run as root")
    return find_tool("unshare", "util-linux", candidates=["/usr/bin/unshare"])


def bench_tmpdir(prefix):
    """A new temp dir named prefix..., below $BENCH_TMPDIR if set (else the
    system's temp dir)."""
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_TMPDIR") or None)


def ns_command(unshare):
    """The command that runs this script again in a private mount namespace
    (`unshare -m --propagation private`), where no mount leaks to the host."""
    script = os.path.realpath(sys.modules["__main__"].__file__)
    return [unshare, "-m", "--propagation", "private", "--", sys.executable, script]


def wait_forwarding_stop_signals(proc):
    """Waits for the inner process proc and returns its status, passing the
    stop signals this process gets on to it: the inner process cleans up
    and exits, then this one does its own part of the cleanup."""
    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except OSError:
            pass
    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    return proc.wait()


def run_in_ns(unshare, env, tmp, sweep):
    """The outer process's work once it has made the temp dir tmp: run
    ns_command(unshare) with env, passing the stop signals on to it
    (`unshare` execs it, and it cleans up and exits), and wait for it. Then,
    whatever happened: kill what still runs with tmp on its command line,
    call sweep(problems) for the bench's own cleanup (it appends what it could
    not clean up), remove tmp, and exit with the inner process's status
    (exit_after_cleanup)."""
    proc = subprocess.Popen(ns_command(unshare), env=env)
    problems = []
    rc = 1
    try:
        rc = wait_forwarding_stop_signals(proc)
    finally:
        left = kill_leftovers(tmp)
        if left:
            problems.append(f"processes that would not die: {left}")
        sweep(problems)
        remove_tree(tmp, problems)
    exit_after_cleanup(rc, problems)


def remove_tree(path, problems=None):
    """Unmount whatever is left at or below path, then rm -rf it. If a mount
    stays (then nothing below it is deleted) or path cannot be removed: dies,
    or, given a list `problems`, appends what went wrong to it."""
    try:
        if not os.path.lexists(path):
            return
        stuck = unmount_under(path)
        if stuck:
            die(f"mounts below {path}: {stuck}")
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            r = subprocess.run(["rm", "-rf", path], capture_output=True, text=True)
            if r.returncode != 0 or os.path.lexists(path):
                die(f"could not remove {path}: {r.stderr.strip()}")
    except BenchError as e:
        if problems is None:
            raise
        problems.append(str(e))


def kill_leftovers(text):
    """SIGTERM, then SIGKILL, every process still running with text (our temp
    dir) on its command line, warning of each; returns those that would not
    die."""
    pids = pids_mentioning(text)
    for p in pids:
        warn(f"killing leftover process {p}: {cmdline_of(p)[:200]}")
    return kill_pids(pids)


def finish_cleanup(tmp, errors, sweep_cgroups):
    """The end of the inner process's cleanup, after the bench's own (which
    listed what went wrong in errors): kill what still runs with tmp on its
    command line (a leaked shim, or one of an interrupted run), then
    sweep_cgroups() (it returns "<dir>: <error>" for the cgroups that stay),
    unmount what is left below tmp, and list all errors on stderr."""
    if kill_leftovers(tmp):
        errors.append("processes that would not die")
    errors += [f"cgroup {s}" for s in sweep_cgroups()]
    stuck = unmount_under(tmp)
    if stuck:
        errors.append(f"mounts below {tmp}: {stuck}")
    if errors:
        print(f"{prog()}: cleanup problems:\n  " + "\n  ".join(errors), file=sys.stderr)


def unlink_entries(directory, names):
    """Remove the named entries of directory; returns "<path>: <error>" for
    those that could not be removed."""
    problems = []
    for name in sorted(names):
        try:
            os.unlink(os.path.join(directory, name))
        except OSError as e:
            problems.append(f"{directory}/{name}: {e}")
    return problems


def list_dir(path):
    """The names in a directory, as a set ({} if it cannot be read)."""
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

def cmdline_of(pid):
    """A process's command line, arguments joined by spaces ("" if gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def status_of(pid):
    """/proc/<pid>/status as a dict (values as strings), {} if gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        pass
    return out


def is_zombie(pid):
    """True if the process is a zombie or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def live_pids():
    """Every pid in /proc."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_mentioning(text):
    """Live pids (other than ours) whose command line contains text."""
    me = os.getpid()
    return [p for p in live_pids()
            if p != me and text in cmdline_of(p) and not is_zombie(p)]


def kill_pids(pids, grace=5.0):
    """SIGTERM, then SIGKILL, the given pids; returns those still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pids:
            return []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if not is_zombie(p)]
            if not pids:
                return []
            time.sleep(0.05)
    return pids


def memory_of(pid):
    """kB values of one process: VmRSS & co (MEM_FIELDS) and Threads from its
    status, Pss from smaps_rollup; None if it is gone."""
    st = status_of(pid)
    if not st:
        return None
    m = {k: int(st.get(k, "0 kB").split()[0]) for k in MEM_FIELDS}
    m["Threads"] = int(st.get("Threads", "0"))
    m["Pss"] = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    m["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return m


# --------------------------------------------------------------------------
# mounts
# --------------------------------------------------------------------------

def mounts_under(path):
    """Mount points at or below path (from /proc/self/mountinfo), deepest first."""
    path = path.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")  # \040 etc.
            if mnt == path or mnt.startswith(path + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def unmount_under(path):
    """Unmount everything at or below path (lazily if need be); returns what
    could not be unmounted."""
    for _ in range(3):
        mnts = mounts_under(path)
        if not mnts:
            return []
        for m in mnts:
            if subprocess.call(["umount", m], stderr=subprocess.DEVNULL) != 0:
                subprocess.call(["umount", "-l", m], stderr=subprocess.DEVNULL)
    return mounts_under(path)


def is_cgroupfs(path):
    """True if path lies on a cgroup (v1 or v2) filesystem, per /proc/self/mountinfo."""
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mnt = left.split()[4]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, right.split()[0]
    return fstype in ("cgroup", "cgroup2")


def cover_unified(name, size):
    """In our private mount namespace: unmount /sys/fs/cgroup/unified (crun
    1.8 refuses this machine's hybrid layout; afterwards every runtime sees
    the same pure cgroup v1 layout) and mount a throwaway tmpfs `name` of
    `size` on it. crun (legacy mode) still maps the "0::/" line of
    /proc/self/cgroup there and mkdirs <id>/cgroup.procs: the tmpfs catches
    those writes, which would otherwise land on the host's /sys/fs/cgroup
    tmpfs, and disappears with the namespace. The host is untouched."""
    if not os.path.ismount(UNIFIED):
        return
    for cmd in (["umount", UNIFIED],
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", name, UNIFIED]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            die(f"`{' '.join(cmd)}` failed: {r.stderr.strip()}")


# --------------------------------------------------------------------------
# cgroups
# --------------------------------------------------------------------------

def cgroup_hierarchies():
    """The top dirs of the mounted hierarchies, /sys/fs/cgroup/<name>, sorted
    (links such as cpu -> cpu,cpuacct left out); [] if there are none."""
    try:
        names = sorted(os.listdir(CGROUP_ROOT))
    except OSError:
        return []
    tops = [os.path.join(CGROUP_ROOT, h) for h in names]
    return [t for t in tops if not os.path.islink(t) and os.path.isdir(t)]


def cgroups_named(match):
    """Cgroup dirs, at any depth of any hierarchy, whose own name satisfies
    match(name); children before their parents."""
    found = []
    for top in cgroup_hierarchies():
        for dirpath, dirnames, _ in os.walk(top, topdown=False, followlinks=False):
            found.extend(os.path.join(dirpath, d) for d in dirnames if match(d))
    return found


def kill_and_remove_cgroups(dirs, what):
    """SIGKILL whatever still runs in the cgroup dirs (a container whose shim
    was killed keeps running; a frozen one is thawed first), warning of them
    as processes left in `what`, then rmdir the dirs deepest first, retrying
    for 2 s. Returns "<dir>: <error>" for those that stay."""
    pids = set()
    for d in dirs:
        try:
            with open(os.path.join(d, "freezer.state"), "w") as f:
                f.write("THAWED")
        except OSError:
            pass
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            pass
    if pids:
        warn(f"killing {len(pids)} process(es) left in {what}: {sorted(pids)[:20]}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    stuck = []
    for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
        for attempt in range(40):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if attempt == 39:
                    stuck.append(f"{d}: {e}")
                time.sleep(0.05)
    return stuck


def remove_cgroups_named(prefix, verbose=False):
    """rmdir every cgroup whose name starts with prefix (a runtime bench's
    container ids), children first, after killing what still runs in them
    (a container whose create or start a stop signal cut short); a dir so
    named that is not on a cgroup filesystem (crun's entry in the scratch
    tmpfs of cover_unified) is rm -rf'd. verbose: log each cgroup removed.
    Lists those that stay on stderr and returns them ("<path>: <error>")."""
    dirs = []
    for path in cgroups_named(lambda d: d.startswith(prefix)):
        if not os.path.exists(path):
            continue
        if not is_cgroupfs(path):
            shutil.rmtree(path, ignore_errors=True)
            continue
        if verbose:
            log(f"# removing leftover cgroup {path}")
        dirs.append(path)
    stuck = kill_and_remove_cgroups(dirs, f"the cgroups named {prefix}*")
    if stuck:
        print(f"{prog()}: cgroups that could not be removed:\n  " + "\n  ".join(stuck),
              file=sys.stderr)
    return stuck


def runtimes_in_ns(var, runtime, scratch_size):
    """The start of a runtime bench's inner process: cover_unified (with a
    tmpfs named <var>-scratch, lower case, of scratch_size), then (temp dir,
    id prefix, [runtime(name, binary, tmp, prefix) for berth, runc and crun])
    from the $<var>_... variables run_runtimes_in_ns set."""
    cover_unified(f"{var.lower()}-scratch", scratch_size)
    tmp = os.environ[f"{var}_TMP"]
    prefix = os.environ[f"{var}_PREFIX"]
    return tmp, prefix, [runtime(n, os.environ[f"{var}_{n.upper()}"], tmp, prefix)
                         for n in ("berth", "runc", "crun")]


def run_runtimes_in_ns(ns_marker, var, tmp_prefix, id_prefix, verbose=False):
    """The outer process of the runtime benches (runtime-lifecycle,
    runtime-ops): find berth, runc and crun, run this script again in a
    private mount namespace with $<var>_TMP (a new temp dir), $<var>_PREFIX
    (id_prefix, which every container id starts with) and
    $<var>_{BERTH,RUNC,CRUN}, then remove the cgroups named after our ids
    (the cgroup2 hierarchy is only visible out here) and the temp dir. Exits
    with the inner process's status (130 if interrupted), 1 if cgroups stay.
    A stop signal is passed on to the inner process, which cleans up."""
    unshare = root_and_unshare()
    binaries = {
        "BERTH": find_berth(),
        "RUNC": find_tool("runc", candidates=["/usr/sbin/runc", "/usr/bin/runc"]),
        "CRUN": find_tool("crun", candidates=["/usr/bin/crun"]),
    }
    tmp = tempfile.mkdtemp(prefix=tmp_prefix)
    env = dict(os.environ, **{ns_marker: "1", f"{var}_TMP": tmp, f"{var}_PREFIX": id_prefix},
               **{f"{var}_{k}": v for k, v in binaries.items()})
    rc = 1
    try:
        rc = wait_forwarding_stop_signals(subprocess.Popen(ns_command(unshare), env=env))
    finally:
        stuck = remove_cgroups_named(id_prefix, verbose)
        shutil.rmtree(tmp, ignore_errors=True)
    if rc < 0:  # the inner process died of a signal
        rc = 128 - rc
    sys.exit((rc or 1) if stuck else rc)


class RuntimeCLI:
    """An OCI runtime's command line (berth, runc, crun) with a state dir of
    its own, <tmp>/state-<name> (made now), and a file for the stderr of its
    last command, <tmp>/stderr-<name>.log."""

    def __init__(self, name, binary, tmp):
        self.name = name
        self.binary = binary
        self.root = os.path.join(tmp, f"state-{name}")
        os.makedirs(self.root)
        self.errlog = os.path.join(tmp, f"stderr-{name}.log")

    def cmd(self, *args):
        """`<binary> --root <state dir> <args>`."""
        return [self.binary, "--root", self.root, *args]

    def last_stderr(self):
        """What the last command wrote on stderr (stripped)."""
        return read_tail(self.errlog, None)


# --------------------------------------------------------------------------
# containerd shims' sockets
# --------------------------------------------------------------------------

def runc_shim_socket_name(address, namespace, cid):
    """containerd 1.6 shim.SocketAddress: sha256(filepath.Join(address, ns, id)),
    the name of a runc shim's socket in /run/containerd/s (id: the container's,
    or under the CRI plugin the pod sandbox's, whose shim serves the pod)."""
    return hashlib.sha256(os.path.join(address, namespace, cid).encode()).hexdigest()


# --------------------------------------------------------------------------
# images, bundles, registry, containerd
# --------------------------------------------------------------------------

def busybox_rootfs(rootfs, dirs=("bin", "etc", "proc", "dev", "sys", "tmp"), applets=None,
                   passwd="root:x:0:0:root:/root:/bin/sh\n"):
    """A minimal rootfs: the dirs, /bin/busybox (a copy of the host's static
    busybox), a symlink to it for each applet (default: every applet it
    lists but "busybox" itself) and, unless passwd is None, etc/passwd."""
    for d in dirs:
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    if applets is None:
        applets = run(["/bin/busybox", "--list"], what="busybox --list").stdout.split()
    for a in applets:
        if a == "busybox" or "/" in a:  # a self-loop symlink would clobber the binary
            continue
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    if passwd is not None:
        with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
            f.write(passwd)


def runc_config(bundle, runc, args, edit=None):
    """bundle/config.json from `runc spec`, for every runtime: ociVersion
    1.0.2 (crun 1.8 refuses newer versions), no terminal, process args; then
    edit(cfg), if given, changes more before it is written."""
    r = subprocess.run([runc, "spec"], cwd=bundle, capture_output=True, text=True)
    if r.returncode != 0:
        die(f"`runc spec` failed: {r.stderr.strip()}")
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["ociVersion"] = "1.0.2"
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    if edit:
        edit(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def umoci_image(umoci, layout, rootfs, config_args=()):
    """rootfs as the one layer of the image <layout>:latest in a new OCI
    layout (umoci init, new, insert), then `umoci config` with config_args
    if any. Returns layout."""
    image = f"{layout}:latest"
    run([umoci, "init", "--layout", layout], what="umoci init")
    run([umoci, "new", "--image", image], what="umoci new")
    run([umoci, "insert", "--image", image, rootfs, "/"], what="umoci insert")
    if config_args:
        run([umoci, "config", "--image", image] + list(config_args), what="umoci config")
    return layout


def skopeo_policy(tmp):
    """A containers policy.json in tmp that accepts any image (for skopeo
    --policy); returns its path."""
    policy = os.path.join(tmp, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    return policy


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A private docker-registry (Debian's `binary`) serving plain http on a
    free port of 127.0.0.1, storage and log in <tmp>/registry; up and
    answering /v2/ when the constructor returns."""

    def __init__(self, tmp, binary):
        self.dir = os.path.join(tmp, "registry")
        os.makedirs(os.path.join(self.dir, "storage"))
        self.port = free_port()
        self.config = os.path.join(self.dir, "config.yml")
        with open(self.config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.dir}/storage
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{self.port}
""")
        self.logfile = os.path.join(self.dir, "registry.log")
        self.proc = subprocess.Popen([binary, "serve", self.config],
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(self.logfile, "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                die(f"docker-registry exited ({self.proc.returncode}):\n{read_tail(self.logfile)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                die(f"docker-registry did not answer on port {self.port}:\n"
                    f"{read_tail(self.logfile)}")
            time.sleep(0.05)

    @property
    def host(self):
        """host:port, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    def stop(self):
        """Stop the registry (its storage stays)."""
        stop_process(self.proc)


def containerd_config(d, sock, ttrpc_sock, cri=False):
    """The start of a private containerd 1.6's config.toml: root, state and
    temp in d/{root,state,tmp}, the `opt` dir d/opt, gRPC on sock, ttrpc on
    ttrpc_sock, no debug or metrics socket, the snapshotters other than
    overlayfs and native and the tracing plugins disabled, and the CRI plugin
    too unless cri. Sections may follow."""
    cri_plugin = "" if cri else '  "io.containerd.grpc.v1.cri",\n'
    return f"""version = 2
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"
disabled_plugins = [
{cri_plugin}  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{ttrpc_sock}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


def start_containerd(containerd, ctr, cfg, sock, log_path, env=None):
    """Start `containerd --config cfg` (stdout and stderr to log_path; env,
    default ours) and wait until `ctr --address sock version` answers; dies
    with the log's tail if it exits or does not answer within 30 s. Returns
    the Popen."""
    proc = subprocess.Popen([containerd, "--config", cfg], env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            die(f"containerd exited ({proc.returncode}) at startup:\n{read_tail(log_path)}")
        if os.path.exists(sock) and subprocess.call(
                [ctr, "--address", sock, "version"], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30) == 0:
            return proc
        if time.monotonic() > deadline:
            die(f"containerd did not come up within 30s:\n{read_tail(log_path)}")
        time.sleep(0.05)


# --------------------------------------------------------------------------
# the measurement and its result
# --------------------------------------------------------------------------

def env_count(name, default):
    """The positive integer in $name (default if unset); dies if below 1."""
    n = int(os.environ.get(name, str(default)))
    if n < 1:
        die(f"{name} must be >= 1")
    return n


def order_seed():
    """The seed of the random run order: $BENCH_SEED (to replay a run), else
    a new one each run (a fixed order sequence can favour one tool: who runs
    right after whom matters)."""
    return int(os.environ.get("BENCH_SEED") or random.SystemRandom().randrange(10**6))


def run_orders(items, seed):
    """The order of the items (tools, daemons, runtimes) in each iteration of
    an interleaved measurement: returns next_order(), which shuffles one list
    of them in place with random.Random(seed) and returns it. A fresh random
    order each iteration, so that no tool is favoured by its position or by
    which one ran just before it (its leftovers, e.g. a cgroup teardown, can
    slow down the next one); the same seed replays the same orders."""
    rng = random.Random(seed)
    order = list(items)

    def next_order():
        rng.shuffle(order)
        return order
    return next_order


def ratio(a, b):
    """a / b, and 0 when b is 0 (a failed anchor measurement)."""
    return b and a / b


def pct(values, q):
    """The q-quantile (0..1) of values, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def result(name, berth, anchor_name, anchor, target, fmt=".2f"):
    """Print the machine-readable line `RESULT <name>: berth=<berth>
    <anchor_name>=<anchor> ratio=<berth/anchor> target=<target>` (values with
    format fmt, the ratio with 3 decimals; target: the highest ratio met)."""
    log(f"RESULT {name}: berth={berth:{fmt}} {anchor_name}={anchor:{fmt}} "
        f"ratio={ratio(berth, anchor):.3f} target={target}")


# --------------------------------------------------------------------------
# CRI benches: cgroup parents, ids, images (bench/cri-stream-net; the same
# as cri-pod-start's own)
# --------------------------------------------------------------------------

def cgroup_dirs(rel):
    """The dirs of cgroup `rel` (e.g. /bench-cri-1-berth) in every hierarchy."""
    out = []
    for top in cgroup_hierarchies():
        d = os.path.join(top, rel.strip("/"))
        if os.path.isdir(d):
            out.append(d)
    if os.path.isfile(os.path.join(CGROUP_ROOT, "cgroup.procs")):  # a pure v2 host
        d = os.path.join(CGROUP_ROOT, rel.strip("/"))
        if os.path.isdir(d) and d not in out:
            out.append(d)
    return out


def cgroup_children(rel):
    """Cgroups below `rel` (any hierarchy), as paths."""
    out = []
    for top in cgroup_dirs(rel):
        for dirpath, dirnames, _ in os.walk(top, followlinks=False):
            out.extend(os.path.join(dirpath, d) for d in dirnames)
    return out


def sweep_cgroup_tree(rel):
    """Kill whatever still runs below cgroup `rel`, then rmdir the tree
    (deepest first); returns the dirs that stay."""
    dirs = []
    for top in cgroup_dirs(rel):
        for dirpath, dirnames, _ in os.walk(top, topdown=False, followlinks=False):
            dirs.extend(os.path.join(dirpath, d) for d in dirnames)
        dirs.append(top)
    if not dirs:
        return []
    return kill_and_remove_cgroups(dirs, f"cgroup {rel}")


def read_ids(path):
    """(pod ids, container ids) that berth-cri-bench recorded in its
    --ids-file (lines `pod ID` / `container ID`)."""
    pods, containers = set(), set()
    try:
        with open(path) as f:
            for line in f:
                kind, _, cid = line.strip().partition(" ")
                if cid and all(c.isalnum() or c in "-_" for c in cid):
                    (pods if kind == "pod" else containers).add(cid)
    except OSError:
        pass
    return pods, containers


def ids_in_log(path):
    """Every 64-hex id in a daemon's log: catches the sandboxes whose
    RunPodSandbox never answered (an interrupted run). Use them only to
    remove names derived from our own addresses or networks."""
    try:
        with open(path, errors="replace") as f:
            return set(re.findall(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", f.read()))
    except OSError:
        return set()


def cri_images(tmp, umoci, cc):
    """The CRI benches' images as OCI layouts in <tmp>/images; returns
    (busybox, pause): busybox is the host's static busybox with its applet
    symlinks, /etc/passwd and /etc/group, PATH in its config; pause has
    berth's own pause (crates/cri/pause/pause.c, static, no libc) as its
    entrypoint."""
    work = os.path.join(tmp, "images")
    rootfs = os.path.join(work, "busybox-rootfs")
    busybox_rootfs(rootfs, ("bin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var"),
                   passwd="root:x:0:0:root:/root:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    bb = umoci_image(umoci, os.path.join(work, "busybox-layout"), rootfs, [
        "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    prootfs = os.path.join(work, "pause-rootfs")
    os.makedirs(prootfs)
    src = os.path.join(REPO, "crates/cri/pause/pause.c")
    run([cc, "-Os", "-static", "-nostdlib", "-nostartfiles", "-fno-stack-protector",
         "-fno-asynchronous-unwind-tables", "-s", "-o", os.path.join(prootfs, "pause"), src],
        what="cc pause.c")
    pause = umoci_image(umoci, os.path.join(work, "pause-layout"), prootfs,
                        ["--config.entrypoint", "/pause"])
    return bb, pause


# --------------------------------------------------------------------------
# CNI: a private bridge network, and what it may leave on the host
# --------------------------------------------------------------------------

CNI_CACHE_RESULTS = "/var/lib/cni/results"  # libcni's result cache (containerd's go-cni)


def host_ipv4_networks():
    """The IPv4 networks the host already uses (addresses and routes of
    every link), as ipaddress networks."""
    nets = []
    for cmd in (["ip", "-j", "-4", "addr", "show"],
                ["ip", "-j", "-4", "route", "show", "table", "all"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        try:
            entries = json.loads(r.stdout or "[]")
        except ValueError:
            entries = []
        for e in entries:
            for a in e.get("addr_info", []):
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
            dst = e.get("dst")
            if dst and dst != "default":
                try:
                    nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32",
                                                     strict=False))
                except ValueError:
                    pass
    return nets


def free_subnets(count, base="10.248", skip=()):
    """count /24 subnets <base>.X.0/24 (X from 1) that clash with no address
    or route of the host nor with skip; dies if there are not enough."""
    used = host_ipv4_networks()
    out = []
    for x in range(1, 255):
        net = ipaddress.ip_network(f"{base}.{x}.0/24")
        if any(net.overlaps(u) for u in used) or str(net) in skip:
            continue
        out.append(str(net))
        if len(out) == count:
            return out
    die(f"no {count} free /24 subnets in {base}.0.0/16")


def bridge_conflist(name, bridge, subnet, data_dir):
    """A CNI configuration list (version 1.0.0) in the shape of containerd's
    documented example: bridge (isGateway, ipMasq, promiscMode) with
    host-local IPAM on subnet, its leases in data_dir, a default route; then
    portmap (portMappings capability)."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "promiscMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def links():
    """{name: {"kind": link kind or "", "master": master name or ""}} of the
    host's network interfaces (`ip -j -d link`)."""
    r = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True)
    try:
        entries = json.loads(r.stdout or "[]")
    except ValueError:
        return {}
    return {e["ifname"]: {"kind": e.get("linkinfo", {}).get("info_kind", ""),
                          "master": e.get("master", "")} for e in entries}


def netns_holding(ip):
    """/proc/<pid>/ns/net of a process in the network namespace (not ours)
    that has `ip` as a local address, or None."""
    ours = os.readlink("/proc/self/ns/net")
    for pid in live_pids():
        try:
            with open(f"/proc/{pid}/net/fib_trie") as f:
                if f"|-- {ip}\n" not in f.read():
                    continue
            if os.readlink(f"/proc/{pid}/ns/net") != ours:
                return f"/proc/{pid}/ns/net"
        except OSError:
            continue
    return None


def delete_link(name):
    """`ip link del name`; returns "" or the error."""
    r = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")


def remove_bridges(bridges):
    """Delete the links enslaved to each bridge (veths whose pod namespace
    is still alive), then the bridge; returns "<link>: <error>" for those
    that stay."""
    problems = []
    for br in bridges:
        all_links = links()
        for name, info in all_links.items():
            if info["master"] == br:
                err = delete_link(name)
                if err and name in links():
                    problems.append(f"link {name} (on {br}): {err}")
        if br in all_links:
            err = delete_link(br)
            if err and br in links():
                problems.append(f"bridge {br}: {err}")
    return problems


def nat_rules():
    """`iptables -t nat -S`, as lines ([] without iptables)."""
    try:
        r = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return r.stdout.splitlines() if r.returncode == 0 else []


def cni_nat_rules(net_names):
    """The nat rules that CNI plugins made for the networks named: their
    comment names one of them (bridge's ipMasq `name: "<net>" id: ...`,
    portmap's `dnat name: "<net>" id: ...`)."""
    marks = [f'name: \\"{n}\\"' for n in net_names]
    return [line for line in nat_rules()
            if line.startswith("-A ") and any(m in line for m in marks)]


def sweep_cni_nat(net_names):
    """Remove the nat rules of cni_nat_rules(net_names) and the CNI-* chains
    they jump to (flushed, then deleted); returns what could not be
    removed. Chains of other networks, and the shared CNI-HOSTPORT-*
    chains, are left alone."""
    problems = []
    chains = set()
    for line in cni_nat_rules(net_names):
        args = shlex.split(line)
        chain, spec = args[1], args[2:]
        if "-j" in spec:
            target = spec[spec.index("-j") + 1]
            if target.startswith("CNI-") and not target.startswith("CNI-HOSTPORT-"):
                chains.add(target)
        r = subprocess.run(["iptables", "-w", "-t", "nat", "-D", chain] + spec,
                           capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"iptables nat rule {line!r}: {r.stderr.strip()}")
    for c in sorted(chains):
        for op in ("-F", "-X"):
            r = subprocess.run(["iptables", "-w", "-t", "nat", op, c], capture_output=True,
                               text=True)
            if r.returncode != 0:
                problems.append(f"iptables nat chain {c} ({op}): {r.stderr.strip()}")
                break
    return problems


def nsfs_mounts_under(path):
    """Network (or other) namespace bind mounts (fstype nsfs) at or below path."""
    path = path.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mnt = left.split()[4].encode().decode("unicode_escape")
            if right.split()[0] == "nsfs" and (mnt == path or mnt.startswith(path + "/")):
                found.append(mnt)
    return found


def host_local_leases(data_dir):
    """The IPs host-local still holds in data_dir (one file per IP in
    <data_dir>/<network>/; `lock` and `last_reserved_ip.*` are its own)."""
    out = []
    try:
        nets = os.listdir(data_dir)
    except OSError:
        return out
    for net in nets:
        d = os.path.join(data_dir, net)
        if not os.path.isdir(d):
            continue
        out.extend(f"{net}/{n}" for n in os.listdir(d)
                   if n != "lock" and not n.startswith("last_reserved_ip"))
    return out


def cni_cache_entries(net_names, ids):
    """libcni's cached results (CNI_CACHE_RESULTS) of the networks named
    (and containerd's cni-loopback) for the given container ids."""
    out = []
    for name in list_dir(CNI_CACHE_RESULTS):
        if any(name.startswith(f"{n}-") for n in list(net_names) + ["cni-loopback"]) and \
                any(f"-{i}-" in name for i in ids):
            out.append(name)
    return sorted(out)
