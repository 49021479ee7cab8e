"""The benchmarks' model server: the local protocol server in a process of its own."""

from __future__ import annotations

import socket
import subprocess
import sys

#: The models it serves: the packaged config's two.
MODELS = ("phi3:mini", "deepseek-coder:6.7b-instruct")


def free_port() -> int:
    """Return a TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(delay: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server answering every chat request after `delay` s; return it and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "modelyard.testing.server", "--port", str(port)]
    command += [f"--model={m}" for m in MODELS] + ["--delay", str(delay)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert server.stdout is not None
    server.stdout.readline()  # the banner: listening
    return server, f"http://127.0.0.1:{port}"
