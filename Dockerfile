# syntax=docker/dockerfile:1
# One image for the API and the Dagster code location (webserver, daemon, run workers, or the
# gRPC code server of Dagster's Helm chart). Default command: the API.
#
# Base: an exact Python patch release on Debian bookworm, the Python (3.11) and Debian release the
# project is developed and tested on. An exact tag, not a digest, so that rebuilds pick up Debian
# security fixes of the same release; pin `@sha256:…` here too if you need bit-for-bit rebuilds.

FROM python:3.11.14-slim-bookworm AS builder
WORKDIR /src
# Every pinned dependency ships binary wheels for CPython 3.11 on glibc (libpq inside psycopg[binary],
# librdkafka inside confluent-kafka), so the builder needs no compiler.
COPY pyproject.toml README.md requirements-image.lock ./
COPY aether_platform ./aether_platform
COPY api ./api
COPY dashboards_py ./dashboards_py
# Every dependency at the version and hash of requirements-image.lock (`make lock`), not whatever
# the index serves on the day of the build (--no-deps: the lock is the whole tree); then the project
# itself, resolving nothing more.
RUN pip wheel --no-cache-dir --require-hashes --no-deps --wheel-dir /wheels -r requirements-image.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DAGSTER_HOME=/opt/dagster/home \
    PROMETHEUS_MULTIPROC_DIR=/tmp/aether-metrics \
    WEB_CONCURRENCY=2 \
    AETHER_LOG_FORMAT=json
RUN groupadd --system --gid 10001 aether \
 && useradd --system --uid 10001 --gid aether --home-dir /app --no-create-home --shell /usr/sbin/nologin aether \
 && mkdir -p /opt/dagster/home/storage \
 && chown -R aether:aether /opt/dagster/home
# Bind-mounting the wheels keeps them out of the image's layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl
WORKDIR /app
# The wheel above brings the pinned dependencies and the `aether` script; the checkout below is what
# runs (/app comes first on PYTHONPATH), so alembic.ini, migrations/ and workspace.yaml sit beside
# the code exactly as in a developer's checkout. Owned by root: the service cannot rewrite its code.
COPY . /app
COPY deploy/docker-entrypoint.sh /usr/local/bin/aether-entrypoint
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 3000 3030
# Liveness: /livez answers 200 whenever the process serves HTTP and checks no dependency. Whatever
# acts on this status (Swarm, an autoheal sidecar) may restart the container, and a restart cures
# a hung process, never a database or broker outage; readiness is /readyz (see docs/deploy.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/aether-entrypoint"]
# `python -m api` is the one launcher (stack, tests and benchmarks run it too); workers from WEB_CONCURRENCY.
CMD ["python", "-m", "api", "--host", "0.0.0.0", "--port", "8080"]
