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
    # apt's own output, on the terminal: it says how much it will fetch, counts the downloads
    # (Get:N) and, on a terminal, draws dpkg's progress bar. Minutes of silence looked like a hang.
    apt-get update || { echo "[bootstrap] apt-get update failed (output above)"; exit 1; }
    apt-get install -y --no-install-recommends -o Dpkg::Progress-Fancy=1 "${missing[@]}" \
      || { echo "[bootstrap] apt-get install failed (output above)"; exit 1; }
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

# requirements.lock pins the whole dependency tree with hashes (`make lock` writes it from
# pyproject.toml); the project itself then goes in editable, without resolving anything more.
stamp_src=$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
stamp=".venv/.installed-$stamp_src"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || { echo "[bootstrap] creating .venv"; python3 -m venv .venv; }
  echo "[bootstrap] installing the locked Python dependencies into .venv (requirements.lock)"
  .venv/bin/python -m pip install -q --upgrade pip || true
  # pip's own progress bars and per-package lines, on the terminal.
  # --no-deps: the lock is the whole tree already (and pip's hash mode trips over extras such as
  # gql[requests] when it resolves transitive requirements itself).
  if ! .venv/bin/python -m pip install --progress-bar on --require-hashes --no-deps -r requirements.lock; then
    echo "[bootstrap] pip install failed (output above). If pyproject.toml changed, run \`make lock\`."; exit 1
  fi
  if ! .venv/bin/python -m pip install -q --no-deps -e .; then
    echo "[bootstrap] installing the project into .venv failed (output above)"; exit 1
  fi
  # Every requirement of the project and of each locked package is met, or the lock is stale.
  if ! .venv/bin/python -m pip check; then
    echo "[bootstrap] requirements.lock does not satisfy pyproject.toml (above): run \`make lock\`"; exit 1
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
