#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine (run as root). Idempotent: it only
# installs what is missing, and reinstalls the Python package only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iptables iproute2 curl redis-server redis-tools tshark prometheus chromium wrk nghttp2-client conntrack socat procps python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run 'make' as root or install them with apt-get" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the package and its test and perf extras into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,perf]'
  touch "$stamp"
fi
scripts/otlp-protos.sh .venv/bin/python
