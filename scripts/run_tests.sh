#!/usr/bin/env bash
# The test command: each test module runs in its own Python process. OpenVINO (TBB), FFCV (numba threads) and
# torch (OpenMP) each start native thread pools; one interpreter that had loaded all of them for the whole suite
# died with SIGSEGV in the validate tests, which pass on their own. With arguments, runs pytest with them as is.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${VENV:-.venv}/bin/python

if (($#)); then
  exec "$PYTHON" -m pytest "$@"
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
