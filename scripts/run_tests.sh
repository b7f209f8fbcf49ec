#!/usr/bin/env bash
# The test command: each test module runs in its own Python process. OpenVINO (TBB), FFCV (numba threads) and
# torch (OpenMP) each start native thread pools; one interpreter that had loaded all of them for the whole suite
# died with SIGSEGV in the validate tests, which pass on their own. With arguments, runs pytest with them as is.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${VENV:-.venv}/bin/python

# The container tests need a Docker engine: as root, install Debian's and start one unless one answers, and
# stop it at the end if this script started it. Without root and without an engine they skip (CI=true: fail).
started_dockerd=0
if [[ $(id -u) -eq 0 ]]; then
  bash scripts/dockerd.sh install
  if [[ "$(bash scripts/dockerd.sh start)" == started ]]; then
    started_dockerd=1
  fi
fi
stop_dockerd() { if ((started_dockerd)); then bash scripts/dockerd.sh stop; fi; }
trap stop_dockerd EXIT

if (($#)); then
  "$PYTHON" -m pytest "$@"
  exit $?
fi
failed=()
for module in tests/test_*.py; do
  echo "==> $module"
  "$PYTHON" -m pytest -q "$module" || failed+=("$module")
done
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all test modules passed"
