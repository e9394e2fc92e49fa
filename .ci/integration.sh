#!/usr/bin/env bash
# CI's integration step: the production topology on loopback (tests/integration/). Installs the
# system services it needs from Debian packages (PostgreSQL, Redis; a few seconds when present,
# about a minute on a fresh machine), then runs the tests marked `integration` (about 5-8 min on
# 2 cores). Every service binds 127.0.0.1, runs as its own user and is stopped by the test.
#   bash .ci/integration.sh            (called by .ci/run after ./dev test)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  # RUNLEVEL=1: invoke-rc.d then leaves the packaged services stopped; the test starts its own
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

./dev setup
exec .venv/bin/python -m pytest tests/integration -m integration -p no:cacheprovider -v "$@"
