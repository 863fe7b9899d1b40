#!/usr/bin/env bash
# Installs everything NMBRL needs on a fresh Debian/Ubuntu machine with Python >= 3.10:
# the OSMesa library for headless MuJoCo rendering, then the package and its test tools.
set -euo pipefail
cd "$(dirname "$0")"

if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libosmesa6 >/dev/null
fi

# A bounded torch range: an open-ended one would pull the newest CUDA build (gigabytes).
python -m pip install -q "torch>=2.6,<2.14"
python -m pip install -q -e ".[dev]"
