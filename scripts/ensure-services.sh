#!/usr/bin/env bash
# Make sure every real part the test suite needs is installed and the shared
# services are up. Idempotent: on a prepared machine it only checks.
# Tests that break a server start their own private instance; this script only
# provides the binaries plus the shared PostgreSQL (127.0.0.1:5432) and Redis (6379).
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
pg_server_bin() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }

pg_server_bin || need+=(postgresql)
have psql || need+=(postgresql-client)
have redis-server || need+=(redis-server)
have pgbouncer || need+=(pgbouncer)
have promtool || need+=(prometheus)
have prometheus-alertmanager || need+=(prometheus-alertmanager)
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)  # status page tests: Playwright drives the system browser (nothing downloaded)

if [ ${#need[@]} -gt 0 ]; then
  echo "ensure-services: installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts these packaged daemons on install where it can; the suite runs its own private ones.

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -t 2 >/dev/null 2>&1; }
if ! pg_up; then
  echo "ensure-services: starting PostgreSQL"
  if have pg_ctlcluster; then
    ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
    if [ -n "$ver" ]; then
      pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    fi
  fi
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || echo "ensure-services: warning: PostgreSQL on 127.0.0.1:5432 is not answering (tests use private instances)"
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "ensure-services: starting Redis"
  mkdir -p /tmp/opsagent-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/opsagent-redis --logfile /tmp/opsagent-redis/redis.log || true
fi

# The moto server comes from the dev extras (moto[server]); check it is importable.
if [ -x .venv/bin/python ]; then
  .venv/bin/python -c "import moto.server" 2>/dev/null || .venv/bin/pip install -q 'moto[server]'
fi
echo "ensure-services: ok"
