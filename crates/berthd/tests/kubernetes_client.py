"""Drives berthd's streaming URLs with the Kubernetes project's Python client
(kubernetes-client/python, `kubernetes` on PyPI): its WebSocket exec
(v5.channel.k8s.io and v4.channel.k8s.io, the exit code read from the status)
and its WebSocket port-forward. A client written by others, as kubectl is;
it speaks to the URL as a kubelet's proxy would pass it on.

Usage: kubernetes_client.py exec URL STDIN [PROTOCOL] [RESIZE]
       kubernetes_client.py exec-close-stdin URL STDIN
       kubernetes_client.py attach URL STDIN NEEDLE
       kubernetes_client.py portforward URL OPEN_PORT CLOSED_PORT
Prints one JSON object of what the client saw; fails on a client error.
"""

import json
import sys
import time

from kubernetes.client import Configuration
from kubernetes.stream.ws_client import (
    RESIZE_CHANNEL,
    STDIN_CHANNEL,
    WSClient,
    get_websocket_url,
    portforward_call,
)


def client(url, protocol=None):
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    return WSClient(Configuration(), get_websocket_url(url), headers, capture_all=True)


def exec_(url, stdin, protocol=None, resize=None):
    ws = client(url, protocol)
    if resize:
        width, height = (int(v) for v in resize.split("x"))
        ws.write_channel(RESIZE_CHANNEL, json.dumps({"Width": width, "Height": height}))
        # The command reads its line after the resize: the size is set first.
        time.sleep(0.3)
    ws.write_stdin(stdin)
    ws.run_forever(timeout=30)
    return {
        "protocol": ws.subprotocol,
        "stdout": ws.read_stdout(timeout=0) or "",
        "stderr": ws.read_stderr(timeout=0) or "",
        "returncode": ws.returncode,
    }


def exec_close_stdin(url, stdin):
    """v5 only: the client closes stdin; `cat` sees EOF and exits."""
    ws = client(url)
    ws.write_stdin(stdin)
    ws.close_channel(STDIN_CHANNEL)
    ws.run_forever(timeout=30)
    return {
        "protocol": ws.subprotocol,
        "stdout": ws.read_stdout(timeout=0) or "",
        "returncode": ws.returncode,
    }


def attach(url, stdin, needle):
    """Feeds a running container's stdin; its output until `needle`."""
    ws = client(url)
    ws.write_stdin(stdin)
    seen = ""
    deadline = time.monotonic() + 20
    while needle not in seen and ws.is_open() and time.monotonic() < deadline:
        seen += ws.read_stdout(timeout=1) or ""
    protocol = ws.subprotocol
    ws.close()
    return {"protocol": protocol, "stdout": seen}


def portforward(url, open_port, closed_port):
    # The client names the ports in the query (`ports`, as the API server
    # takes them); berthd takes them from the PortForward request.
    pf = portforward_call(
        Configuration(), "GET", f"{url}?ports={open_port},{closed_port}"
    )
    sock = pf.socket(open_port)
    sock.settimeout(30)
    sock.sendall(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
    page = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        page += chunk
    deadline = time.monotonic() + 20
    while pf.error(closed_port) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    result = {
        "page": page.decode(errors="replace"),
        "open_port_error": pf.error(open_port),
        "closed_port_error": pf.error(closed_port),
    }
    pf.close()
    return result


def main(argv):
    mode = argv[1]
    if mode == "exec":
        out = exec_(argv[2], argv[3], *argv[4:6])
    elif mode == "exec-close-stdin":
        out = exec_close_stdin(argv[2], argv[3])
    elif mode == "attach":
        out = attach(argv[2], argv[3], argv[4])
    elif mode == "portforward":
        out = portforward(argv[2], int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
