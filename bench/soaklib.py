"""bench/soak's CRI client (grpc over berthd's unix socket; the messages
compiled from the vendored api.proto by protoc at start), its view of the
pods and containers it made, and the registry proxy that stalls on demand.
"""

import collections
import functools
import importlib
import os
import random
import socket
import sys
import threading
import time

import benchlib

run = functools.partial(benchlib.run, timeout=300)


# --------------------------------------------------------------------------

def load_cri(tmp):
    out = os.path.join(tmp, "pb")
    os.mkdir(out)
    proto_dir = os.path.join(benchlib.REPO, "crates/cri-api/proto")
    run(["protoc", "-I", proto_dir, f"--python_out={out}", os.path.join(proto_dir, "api.proto")],
        what="protoc api.proto")
    sys.path.insert(0, out)
    return importlib.import_module("api_pb2")


RUNTIME_RPCS = ("Version", "Status", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox",
                "PodSandboxStatus", "ListPodSandbox", "CreateContainer", "StartContainer",
                "StopContainer", "RemoveContainer", "ListContainers", "ContainerStatus",
                "ExecSync", "ReopenContainerLog", "ListContainerStats", "ListPodSandboxStats")
IMAGE_RPCS = ("PullImage", "RemoveImage", "ImageStatus", "ListImages")


class Stats:
    """Latencies of OK answers and errors, per RPC."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lat = collections.defaultdict(list)
        self.errors = collections.Counter()
        self.samples = {}  # (rpc, code) -> the first error's message

    def ok(self, rpc, seconds):
        with self.lock:
            self.lat[rpc].append(seconds * 1000.0)

    def error(self, rpc, code, detail):
        key = (rpc, code.name if code else "?")
        with self.lock:
            self.errors[key] += 1
            self.samples.setdefault(key, detail)

    def ops(self):
        with self.lock:
            return sum(len(v) for v in self.lat.values()) + sum(self.errors.values())


class CriClient:
    def __init__(self, pb, sock, stats):
        import grpc
        self.grpc = grpc
        self.pb = pb
        self.stats = stats
        self.channel = grpc.insecure_channel(f"unix://{sock}", options=[
            ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 300), ("grpc.max_receive_message_length", 64 << 20)])
        self.methods = {}
        for service, rpcs in (("RuntimeService", RUNTIME_RPCS), ("ImageService", IMAGE_RPCS)):
            for rpc in rpcs:
                self.methods[rpc] = self.channel.unary_unary(
                    f"/runtime.v1.{service}/{rpc}",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=getattr(pb, f"{rpc}Response").FromString)

    def call(self, rpc, deadline=60, **fields):
        req = getattr(self.pb, f"{rpc}Request")(**fields)
        t0 = time.monotonic()
        try:
            r = self.methods[rpc](req, timeout=deadline)
        except self.grpc.RpcError as e:
            self.stats.error(rpc, e.code(), e.details())
            raise
        self.stats.ok(rpc, time.monotonic() - t0)
        return r

    def future(self, rpc, deadline=60, **fields):
        req = getattr(self.pb, f"{rpc}Request")(**fields)
        return self.methods[rpc].future(req, timeout=deadline)


def code_of(e):
    try:
        return e.code()
    except Exception:  # noqa: BLE001 - not an RpcError
        return None


# --------------------------------------------------------------------------
# the soak's own view of the node
# --------------------------------------------------------------------------

class Ctr:
    def __init__(self, pod, name, kind, code):
        self.pod = pod
        self.name = name
        self.kind = kind
        self.code = code          # for kind "exit"
        self.id = None
        self.started = False
        self.allowed = set()      # (exit code, reason) it may end with
        self.any_exit = False     # its shim was killed: any code
        self.checked = False
        self.log_path = None

    def expected_on_stop(self):
        if self.kind == "exit":
            return {(self.code, "Completed" if self.code == 0 else "Error")}
        if self.kind == "term":
            return {(7, "Error")}
        if self.kind == "ignore":
            return {(137, "Error")}
        return {(137, "OOMKilled")}


class Pod:
    def __init__(self, n, port):
        self.n = n
        self.name = f"soak-{n}"
        self.uid = f"uid-{n}-{random.randrange(1 << 30)}"
        self.port = port
        self.id = None
        self.containers = []
        self.shim_killed = False
        self.stopping = False  # its StopPodSandbox was sent: not ready is its due
        self.frozen_until = 0.0  # its shim is stopped (and a grace after)
        self.released = threading.Event()  # a fault holds its teardown until set
        self.released.set()


class StallProxy:
    """TCP proxy to the registry; stall(s) makes responses stop after 256 KiB
    for s seconds (mid-blob), then go on."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stall_until = 0.0
        self.stall_for = 0.0
        self.stalls = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def stall(self, seconds):
        self.stall_for = seconds
        self.stall_until = time.monotonic() + seconds + 60  # armed until used

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self.pipe, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self.pipe, args=(up, client, True), daemon=True).start()

    def pipe(self, src, dst, response):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                sent += len(data)
                if response and sent > (256 << 10) and time.monotonic() < self.stall_until:
                    self.stall_until = 0.0
                    self.stalls += 1
                    time.sleep(self.stall_for)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()


def tree(path, depth=3):
    """Paths below path down to depth (relative), as a set."""
    out = set()
    base = path.rstrip("/") + "/"
    for dirpath, dirnames, filenames in os.walk(path):
        rel = dirpath[len(base):] if dirpath != path else ""
        level = rel.count("/") + 1 if rel else 0
        if level >= depth:
            dirnames[:] = []
        for n in dirnames + filenames:
            out.add(os.path.join(rel, n))
    return out
