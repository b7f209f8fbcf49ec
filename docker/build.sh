#!/usr/bin/env bash
# Builds (and with --push, pushes) every VisionNode-152 image, tagged the way the compiled pipeline
# references them (components/common/adapters/kfp.py component_image()):
#
#   ${VISIONNODE_IMAGE_PREFIX:-visionnode}/base:<version>             the shared base
#   ${VISIONNODE_IMAGE_PREFIX:-visionnode}/<phase>:<version>          validate shard transfer train quantize deploy benchmark
#   ${VISIONNODE_IMAGE_PREFIX:-visionnode}/triton-openvino:<version>  Triton (CPU, python backend) + OpenVINO
#
# <version> is [project] version in pyproject.toml. No registry is needed: the Python root image is made
# with debootstrap (docker/rootfs.sh) unless --python-image names one, and the dependencies come from a
# wheelhouse made from the project's own environment (docker/wheelhouse.py), served on 127.0.0.1 to a
# --network host build. Compile the pipeline with the same VISIONNODE_IMAGE_PREFIX so its images match.
#
# Usage: docker/build.sh [--push] [--dry-run] [--no-triton] [--python-image IMAGE]
#   --push                 docker push every tag after building it
#   --dry-run              print the docker build/push commands (one per line) instead of running anything
#   --no-triton            skip the Triton image
#   --python-image IMAGE   start from IMAGE (e.g. python:3.11-slim-bookworm) instead of the debootstrap root
# Environment: VISIONNODE_IMAGE_PREFIX (e.g. ghcr.io/acme/visionnode), DOCKER (default: Debian's
#   /usr/bin/docker, which builds with BuildKit without a buildx plugin), PYTHON (default: .venv/bin/python),
#   VISIONNODE_WHEELHOUSE (default: ~/.cache/visionnode/wheelhouse), VISIONNODE_WHEELHOUSE_PORT (default 8377).
set -euo pipefail

PHASES=(validate shard transfer train quantize deploy benchmark)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${VISIONNODE_IMAGE_PREFIX:-visionnode}"
if [[ -z "${DOCKER:-}" ]]; then
  DOCKER=docker
  [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
fi
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WHEELHOUSE="${VISIONNODE_WHEELHOUSE:-$HOME/.cache/visionnode/wheelhouse}"
WHEELHOUSE_PORT="${VISIONNODE_WHEELHOUSE_PORT:-8377}"
export DOCKER_BUILDKIT=1

push=0 dry_run=0 triton=1 python_image=""
while (($#)); do
  case "$1" in
    --push) push=1 ;;
    --dry-run) dry_run=1 ;;
    --no-triton) triton=0 ;;
    --python-image)
      [[ $# -ge 2 && -n "$2" ]] || { echo "error: --python-image needs an image name" >&2; exit 2; }
      python_image="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# [project] version from pyproject.toml: the same string importlib.metadata gives component_image().
project_version() {
  sed -n '/^\[project\]/,/^\[/{s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p;}' "$ROOT/pyproject.toml" | head -n 1
}
VERSION="$(project_version)"
if [[ -z "$VERSION" ]]; then
  echo "error: no [project] version in $ROOT/pyproject.toml" >&2
  exit 2
fi

run() {
  if ((dry_run)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

build() {  # build TAG DOCKERFILE [docker build args...]
  local tag="$1" dockerfile="$2" started=$SECONDS
  shift 2
  run "$DOCKER" build --network host --file "$ROOT/docker/$dockerfile" --tag "$tag" "$@" "$ROOT"
  ((dry_run)) || echo "==> $tag built in $((SECONDS - started)) s"
  if ((push)); then
    run "$DOCKER" push "$tag"
  fi
}

# The wheelhouse on 127.0.0.1 for the build's pip (stopped by its PID on exit).
serve_wheelhouse() {
  if "$PYTHON" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $WHEELHOUSE_PORT)) != 0)"; then
    echo "error: port $WHEELHOUSE_PORT on 127.0.0.1 is in use; set VISIONNODE_WHEELHOUSE_PORT to a free port" >&2
    exit 2
  fi
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$WHEELHOUSE_PORT" >/dev/null 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 50); do
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$WHEELHOUSE_PORT/requirements.txt', timeout=1)" \
      2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: the wheelhouse server on 127.0.0.1:$WHEELHOUSE_PORT did not answer" >&2
  exit 1
}

started_all=$SECONDS
deps_digest="<sha256 of the wheelhouse lock>"
if ((!dry_run)); then
  if ! "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "error: no Docker engine answers to $DOCKER (start one: scripts/dockerd.sh start)" >&2
    exit 2
  fi
  [[ -x "$PYTHON" ]] || { echo "error: $PYTHON is missing (run: make install)" >&2; exit 2; }
  if [[ -z "$python_image" ]]; then
    "$ROOT/docker/rootfs.sh"
  fi
  echo "==> wheelhouse $WHEELHOUSE"
  deps_digest="$("$PYTHON" "$ROOT/docker/wheelhouse.py" "$WHEELHOUSE" | tail -n 1)"
  serve_wheelhouse
fi
python_image="${python_image:-$PREFIX/debian-python:bookworm}"

base="$PREFIX/base:$VERSION"
build "$base" base.Dockerfile --build-arg "PYTHON_IMAGE=$python_image" \
  --build-arg "WHEELHOUSE_URL=http://127.0.0.1:$WHEELHOUSE_PORT" --build-arg "DEPS_DIGEST=$deps_digest"
for phase in "${PHASES[@]}"; do
  build "$PREFIX/$phase:$VERSION" "$phase.Dockerfile" --build-arg "BASE_IMAGE=$base"
done
if ((triton)); then
  build "$PREFIX/triton-openvino:$VERSION" triton-openvino.Dockerfile --build-arg "BASE_IMAGE=$base"
fi
if ((!dry_run)); then
  echo "built base + ${#PHASES[@]} component images$( ((triton)) && echo ' + triton-openvino') as $PREFIX/<name>:$VERSION in $((SECONDS - started_all)) s"
fi
