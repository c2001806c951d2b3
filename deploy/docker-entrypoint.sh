#!/bin/sh
# The image's entrypoint: prepares what a process of any role needs, then runs the given command.
set -eu
# uvicorn workers aggregate /metrics through files in PROMETHEUS_MULTIPROC_DIR; files left by an
# earlier run of this container (a restart keeps its filesystem) would be counted again.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  rm -rf "$PROMETHEUS_MULTIPROC_DIR"
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
exec "$@"
