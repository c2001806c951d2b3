"""`python -m api`: the one way the API is served, by the container image, the local stack, the
test suite and the benchmarks alike, so that a test or a measurement sees the production server.

What it fixes, and why each option is here rather than at each launcher:
- uvloop, and uvicorn's httptools protocol with the head held until the body
  (api.http_protocol): one send per small answer.
- No access log: it would print query strings, where a stream ticket or token may travel.
- No `server: uvicorn` header: it tells a scanner what to try and a client nothing.
- Logging from aether_platform.logs (AETHER_LOG_FORMAT, AETHER_LOG_LEVEL) in every process.
- A 5 s graceful shutdown: open event streams are told to end (api.stream.lifecycle), then cut.
- `--fd N` serves an already-bound listening socket. A parent that needs a free port (a test, the
  stack) binds port 0 itself and hands the socket over, so no other process can take the port
  between the choice and the bind.

Workers come from `--workers`, else WEB_CONCURRENCY (uvicorn's own convention), else 1.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

from aether_platform import logs

APP = "api.main:app"
SERVING = {"loop": "uvloop", "http": "api.http_protocol:HttpToolsProtocol", "access_log": False,
           "server_header": False, "timeout_graceful_shutdown": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m api", description="Serve the Aether API.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    p.add_argument("--fd", type=int, help="serve on this inherited, already-bound TCP socket instead of binding")
    p.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY") or 1),
                   help="worker processes (default $WEB_CONCURRENCY or 1)")
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (default 2048)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's own log level (default info)")
    # For benchmarks only: serve a baseline app the same way, so a comparison measures the apps.
    p.add_argument("--app", default=APP, help=argparse.SUPPRESS)
    p.add_argument("--factory", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # uvicorn applies log_config in every process it runs (the supervisor of several workers too)
    # before it imports the app: even its first lines follow AETHER_LOG_FORMAT.
    config = uvicorn.Config(args.app, factory=args.factory, host=args.host, port=args.port, workers=args.workers,
                            backlog=args.backlog, log_level=args.log_level, log_config=logs.uvicorn_log_config(),
                            **SERVING)
    if args.fd is None:
        sock = config.bind_socket()
    else:
        # uvicorn's own --fd assumes a UNIX socket; this one is TCP, and its family is read from it.
        sock = socket.socket(fileno=args.fd)
    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # the app's startup failed: say so in the exit code, as uvicorn.run does
        sys.exit(3)


if __name__ == "__main__":
    main()
