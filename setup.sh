#!/usr/bin/env bash
# Installs everything NMBRL needs on a fresh Debian/Ubuntu machine with Python >= 3.10:
# Debian packages where missing, then the package and its test tools.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages, each only where missing: OSMesa for headless MuJoCo rendering, and a C++ compiler
# and Python's C headers for torch.compile, which builds the SAC update's CPU kernels (model.compile).
PACKAGES=()
ldconfig -p 2>/dev/null | grep -q libOSMesa || PACKAGES+=(libosmesa6)
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || PACKAGES+=(g++)
python -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || PACKAGES+=(python3-dev)
if [ ${#PACKAGES[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi

# A bounded torch range: an open-ended one would pull the newest CUDA build (gigabytes).
python -m pip install -q "torch>=2.6,<2.14"
python -m pip install -q -e ".[dev]"
