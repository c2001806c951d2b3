#!/usr/bin/env bash
# Installs what the platform needs and is missing, then the pinned Python environment in .venv.
# Idempotent and quick when everything is there. Usage: devstack/bootstrap.sh [--browser] [--bench] [--oidc]
#   --browser  also what only the test suite needs: Debian's chromium + chromium-driver (browser
#              tests) and docker-compose (tests/deploy); implies --oidc.
#   --oidc     the local OpenID Provider of the tests and the production profile: `npm ci` of the
#              pinned oidc-provider into devstack/oidc/node_modules (needs Node.js 20+ and npm).
#   --bench    also wrk (the HTTP load generator of bench/).
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything this script says goes to stderr: `make env` runs it first, and its stdout must hold
# only the export lines that `eval "$(make -s env)"` runs.
exec 1>&2

want_browser=0
want_bench=0
want_oidc=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1; want_oidc=1 ;;
    --bench) want_bench=1 ;;
    --oidc) want_oidc=1 ;;
  esac
done

have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have python3 || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
have java || missing+=(openjdk-17-jre-headless)
# The production profile makes its CA and certificates with openssl (tests/production too).
have openssl || missing+=(openssl)
have mvn || missing+=(maven)
{ [ -x /usr/lib/postgresql/15/bin/postgres ] || [ -n "${AETHER_PG_BIN:-}" ] || [ -n "${AETHER_EXTERNAL_DATABASE_URL:-}" ]; } || missing+=(postgresql)
{ have prometheus && have promtool; } || missing+=(prometheus)
if [ "$want_browser" = 1 ]; then
  have chromium || missing+=(chromium)
  have chromedriver || missing+=(chromium-driver)
  # `make test` passes --browser; tests/deploy validates deploy/compose.yaml with compose's
  # own `config` command, which needs no Docker engine.
  { have docker-compose || docker compose version >/dev/null 2>&1; } || missing+=(docker-compose)
fi
if [ "$want_bench" = 1 ]; then
  have wrk || missing+=(wrk)
fi

if [ ${#missing[@]} -gt 0 ]; then
  cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "[bootstrap] installing: ${missing[*]}"
    # Debian's prometheus package would start a system service on :9090 where systemd runs;
    # the stack runs its own, so keep package scripts from starting services.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
    trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/tmp/aether-apt.log 2>&1 || { echo "[bootstrap] apt-get update failed; log: /tmp/aether-apt.log"; exit 1; }
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/aether-apt.log 2>&1 \
      || { echo "[bootstrap] apt-get install failed; log: /tmp/aether-apt.log"; exit 1; }
    # Debian's postgresql package creates and starts a `main` cluster on 5432; ours is separate.
  else
    echo "[bootstrap] missing: ${missing[*]}"
    echo "[bootstrap] run as root:  $cmd"
    echo "[bootstrap] (not Debian? install Python 3.11+, Java 17 and Maven, PostgreSQL 15 and Prometheus; see README)"
    exit 1
  fi
fi

python3 - <<'PY' || { echo "[bootstrap] Python 3.11+ is required (found $(python3 --version 2>&1))"; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp_src=$(cat pyproject.toml | sha1sum | cut -c1-12)
stamp=".venv/.installed-$stamp_src"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || { echo "[bootstrap] creating .venv"; python3 -m venv .venv; }
  echo "[bootstrap] installing pinned Python dependencies into .venv (log: .venv/pip.log)"
  .venv/bin/python -m pip install -q --upgrade pip >.venv/pip.log 2>&1 || true
  if ! .venv/bin/python -m pip install -e '.[test]' >>.venv/pip.log 2>&1; then
    echo "[bootstrap] pip install failed; log: .venv/pip.log"; tail -20 .venv/pip.log; exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if [ "$want_oidc" = 1 ]; then
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$node_major" -lt 20 ] || ! have npm; then
    echo "[bootstrap] the OIDC provider needs Node.js 20+ and npm (found: $(node --version 2>/dev/null || echo none))"; exit 1
  fi
  lock_stamp="devstack/oidc/node_modules/.installed-$(sha1sum devstack/oidc/package-lock.json | cut -c1-12)"
  if [ ! -f "$lock_stamp" ]; then
    echo "[bootstrap] installing the pinned oidc-provider into devstack/oidc/node_modules (log: .venv/npm.log)"
    if ! (cd devstack/oidc && npm ci --no-audit --no-fund) >.venv/npm.log 2>&1; then
      echo "[bootstrap] npm ci failed; log: .venv/npm.log"; tail -20 .venv/npm.log; exit 1
    fi
    touch "$lock_stamp"
  fi
fi
echo "[bootstrap] ready"
