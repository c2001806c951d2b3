"""How a benchmark starts the API: `python -m api`, the one launcher, on a socket bound here (port
0) and handed over with --fd, so no other process can take the port between its choice and the
API's start; returns once the server answers HTTP.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_api(env: dict[str, str], *args: str, log=None, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """(process, base URL) of an API started with `args` (e.g. --workers 2); `log`, a file, takes
    its output. Raises RuntimeError when it exits or does not answer within `timeout`."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port, fd = sock.getsockname()[1], sock.fileno()
    proc = subprocess.Popen([sys.executable, "-m", "api", "--fd", str(fd), "--backlog", "4096", *args], cwd=REPO,
                            env=env, start_new_session=True, pass_fds=(fd,), stdout=log,
                            stderr=subprocess.STDOUT if log else None)
    sock.close()  # the API's now
    deadline = time.monotonic() + timeout
    while True:
        try:
            # The socket listens from the start: a connection alone proves nothing, an answer does.
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                if probe.recv(1):
                    return proc, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the API did not start (exit {proc.poll()}){f'; see {log.name}' if log else ''}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process a benchmark started in its own session (the API, a relay), with its whole
    group (uvicorn's workers), and wait for it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
