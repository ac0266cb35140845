#!/usr/bin/env bash
# Installs everything PipeLite's demo and tests need on a fresh Debian machine with Python 3.11.
# Idempotent: re-running it only checks. Needs root (or sudo) for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v mount >/dev/null 2>&1 || need+=(mount)  # tests/test_store_limits.py mounts a small tmpfs
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python -m pip install -q --disable-pip-version-check -e '.[test]'
