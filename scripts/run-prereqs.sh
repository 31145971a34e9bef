#!/usr/bin/env bash
# What `make run` needs on a bare Debian/Ubuntu machine, installed when missing (as `make test` does for
# its services): Python >= 3.11 with venv (python3-venv) and pg_dump/pg_restore (postgresql-client).
# Idempotent: on a prepared machine it only checks. Elsewhere it says what to install and stops.
set -euo pipefail

PYTHON=${PYTHON:-python3}
need=()
have() { command -v "$1" >/dev/null 2>&1; }

have "$PYTHON" || need+=(python3)
if have "$PYTHON"; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "run-prereqs: $("$PYTHON" -V 2>&1) is too old; opsagent needs Python >= 3.11 (make run PYTHON=python3.11)" >&2
    exit 1
  }
  # Debian's python3 has no ensurepip until python3-venv is installed, so `python3 -m venv` fails without it.
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
have pg_dump || need+=(postgresql-client)

if [ ${#need[@]} -gt 0 ]; then
  if ! have apt-get; then
    echo "run-prereqs: please install ${need[*]} (Python >= 3.11 with venv, and pg_dump)" >&2
    exit 1
  fi
  echo "run-prereqs: installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
