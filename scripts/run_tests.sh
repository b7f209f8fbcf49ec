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

# No silent skips: the skipped tests are counted per module and in total, and with CI=true any skipped test that
# is not listed here fails the run. CI machines have every tool scripts/install.sh installs, so a skip there is a
# check that did not run. List a test (its node id, e.g. tests/test_x.py::test_y[param]) only when its skip is
# legitimately machine-dependent, with the reason in a comment. Empty: no skip is allowed in CI.
SKIP_ALLOWED=()
reports=$(mktemp -d)
trap 'stop_dockerd; rm -rf "$reports"' EXIT
shopt -s nullglob  # a module that crashed wrote no report
report_skips() { "$PYTHON" scripts/skipped_tests.py "$reports"/*.xml --allow "${SKIP_ALLOWED[@]}"; }

if (($#)); then
  "$PYTHON" -m pytest "$@" --junitxml="$reports/args.xml"
  status=$?
  report_skips || status=1
  exit $status
fi
# Free disk space goes in the log: the embedded S3 turns read-only on a nearly full disk (a CI run once failed so).
free_disk() { df -h --output=avail,target . "${TMPDIR:-/tmp}" | tail -n +2 | awk '{printf "%s free on %s; ", $1, $2}'; }
echo "==> disk: $(free_disk)"
failed=()
echo "==> ruff check"
"$PYTHON" -m ruff check . || failed+=("(ruff check)")
for module in tests/test_*.py; do
  echo "==> $module"
  if ! "$PYTHON" -m pytest -q "$module" --junitxml="$reports/$(basename "$module" .py).xml"; then
    failed+=("$module")
    echo "==> disk after $module failed: $(free_disk)"
  fi
done
report_skips || failed+=("(skipped tests)")
if ((${#failed[@]})); then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all test modules passed"
