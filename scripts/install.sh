#!/usr/bin/env bash
# Installs everything VisionNode-152 needs on a fresh Debian 12 machine: the Debian packages FFCV builds
# against (and rclone, iproute2, iptables, ethtool for the long-haul transfer benchmark), then a virtual
# environment in .venv with the project and its test extras. chromium: the tests open the MLflow UI in it.
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config build-essential rclone iproute2 iptables ethtool chromium)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
marker="$VENV/.visionnode-installed"
if [[ ! -f "$marker" || pyproject.toml -nt "$marker" ]]; then
  echo "==> pip install -e .[test] (torch, ffcv, kfp, mlflow, triton, openvino; first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  touch "$marker"
fi
echo "==> ready: $VENV/bin/visionnode"
