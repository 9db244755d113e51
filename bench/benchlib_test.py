#!/usr/bin/env python3
"""Tests of benchlib's process plumbing (run as root, as the benches are):
a bench stopped by a signal still cleans up, in its inner process (inside
`unshare -m`) and in its outer one (the sweep and the temp dir).

    python3 bench/benchlib_test.py
"""
import glob
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

BENCH_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, BENCH_DIR)
import benchlib  # noqa: E402

# A bench of the usual shape (benchlib.main, run_in_ns): the inner process
# logs that it started, then sleeps until stopped, logging its cleanup; the
# outer one's sweep logs that it ran.
SCRIPT = textwrap.dedent("""\
    import os, sys, time
    sys.path.insert(0, {bench_dir!r})
    import benchlib

    MARKER = "BENCHLIB_TEST_IN_NS"

    def log(line):
        with open(os.environ["BENCHLIB_TEST_LOG"], "a") as f:
            f.write(line + "\\n")

    def outer():
        unshare = benchlib.root_and_unshare()
        tmp = benchlib.bench_tmpdir("benchlib-test.")
        log("tmp " + tmp)
        env = dict(os.environ, **{{MARKER: "1"}})
        benchlib.run_in_ns(unshare, env, tmp, lambda problems: log("swept"))

    def inner():
        try:
            log("started")
            time.sleep(120)
        finally:
            log("inner cleaned up")

    benchlib.main(MARKER, outer, inner)
    """)


def signal_when_ready(test, proc, ready, what, sig, timeout, after=0):
    """Waits (at most timeout s) until ready(), failing the test with
    what() if proc ends first; then, after `after` s, sends sig to proc and
    returns its exit status (within timeout s). Whatever of its session outlives the test (the
    inner process, when the outer one died without passing the signal on)
    is killed."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                test.fail(f"the bench ended early: {what()}")
            test.assertLess(time.monotonic(), deadline, f"not ready in time: {what()}")
            time.sleep(0.02)
        time.sleep(after)
        proc.send_signal(sig)
        return proc.wait(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait()


class StopSignals(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="benchlib-test-")
        self.script = os.path.join(self.dir, "bench")
        with open(self.script, "w") as f:
            f.write(SCRIPT.format(bench_dir=BENCH_DIR))
        self.log = os.path.join(self.dir, "log")

    def tearDown(self):
        # The bench's temp dir too, should the test have failed with it left.
        tmps = [line[4:] for line in self.lines() if line.startswith("tmp ")]
        subprocess.run(["rm", "-rf", self.dir, *tmps], check=False)

    def lines(self):
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def stop_with(self, sig):
        env = dict(os.environ, BENCHLIB_TEST_LOG=self.log)
        # A session of its own: the signal goes to the outer process alone,
        # as `kill PID` sends it, not to a whole process group.
        proc = subprocess.Popen([sys.executable, self.script], env=env, start_new_session=True)
        rc = signal_when_ready(self, proc, lambda: "started" in self.lines(), self.lines, sig,
                               timeout=30)
        lines = self.lines()
        self.assertIn("inner cleaned up", lines, f"{sig.name}: {lines}")
        self.assertIn("swept", lines, f"{sig.name}: {lines}")
        self.assertEqual(rc, 130, f"{sig.name}: exit status {rc}")
        tmp = next(line[4:] for line in lines if line.startswith("tmp "))
        self.assertFalse(os.path.exists(tmp), f"{sig.name}: {tmp} was left")

    def test_sigterm(self):
        self.stop_with(signal.SIGTERM)

    def test_sigint(self):
        self.stop_with(signal.SIGINT)

    def test_sighup(self):
        # What a closed terminal or ssh session sends, also to a stopped job.
        self.stop_with(signal.SIGHUP)


class RuntimeBenchStop(unittest.TestCase):
    """A runtime bench (run_runtimes_in_ns) stopped while its containers
    are made or run: they are deleted, whatever was cut short is killed, and
    their cgroups and temp dir are removed."""

    def test_sighup_as_containers_start(self):
        self.stop_runtime_ops(after=0)

    def test_sighup_while_timed(self):
        self.stop_runtime_ops(after=1.0)

    def stop_runtime_ops(self, after):
        berth = os.environ.get("BERTH") or os.path.join(BENCH_DIR, "..", "target/debug/berth")
        if not os.path.exists(berth):
            self.skipTest(f"no berth binary at {berth} (set $BERTH)")
        env = dict(os.environ, BERTH=os.path.abspath(berth), BENCH_ITERATIONS="100000")
        # A file, not a pipe: a pipe nobody reads would block the bench.
        errors = tempfile.TemporaryFile("w+")
        self.addCleanup(errors.close)
        proc = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, "runtime-ops")],
                                env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=errors)

        def stderr():
            errors.seek(0)
            return errors.read()
        prefix = f"rtops{proc.pid}-"

        def ours(name):
            return name.startswith(prefix)
        tmps_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "runtime-ops.*")))

        def containers_being_made():
            # Each runtime has started making its container.
            return len({os.path.basename(d) for d in benchlib.cgroups_named(ours)}) >= 3
        rc = signal_when_ready(self, proc, containers_being_made, stderr, signal.SIGHUP,
                               timeout=60, after=after)
        left = benchlib.cgroups_named(ours)
        if left:
            # Do not leave them on the machine: the containers, then the dirs.
            benchlib.kill_and_remove_cgroups(left, "the test's runtime bench")
        tmps_left = set(glob.glob(os.path.join(tempfile.gettempdir(), "runtime-ops.*"))) - tmps_before
        subprocess.run(["rm", "-rf", *tmps_left], check=False)
        self.assertEqual(rc, 130, stderr())
        self.assertEqual(left, [], stderr())
        self.assertEqual(tmps_left, set(), stderr())


if __name__ == "__main__":
    unittest.main(verbosity=2)
