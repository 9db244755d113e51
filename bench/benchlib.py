"""Pieces the bench/ scripts share (each script imports this from its own
directory)."""

import subprocess
import threading


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
    timer.start()
    try:
        rc = proc.wait()
    finally:
        timer.cancel()
    if fired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout)
    return rc
