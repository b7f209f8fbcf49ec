#!/usr/bin/env bash
# Builds (and with --push, pushes) every VisionNode-152 image, tagged the way the compiled pipeline
# references them (components/common/kfp_support.py component_image()):
#
#   ${VISIONNODE_IMAGE_PREFIX:-visionnode}/base:<version>             the shared base
#   ${VISIONNODE_IMAGE_PREFIX:-visionnode}/<phase>:<version>          validate shard transfer train quantize deploy benchmark
#   ${VISIONNODE_IMAGE_PREFIX:-visionnode}/triton-openvino:<version>  Triton + OpenVINO for the python backend
#
# <version> is [project] version in pyproject.toml. Compile the pipeline with the same
# VISIONNODE_IMAGE_PREFIX in the environment so that its base_image fields name these tags.
#
# Usage: docker/build.sh [--push] [--dry-run] [--no-triton]
#   --push       docker push every tag after building it
#   --dry-run    print the docker commands (one per line) instead of running them
#   --no-triton  skip the Triton image (a ~15 GB pull from nvcr.io)
# Environment: VISIONNODE_IMAGE_PREFIX (e.g. ghcr.io/acme/visionnode), DOCKER (default: docker),
#   OPENVINO_VERSION (one OpenVINO for quantize and Triton; default: the Dockerfiles' ARG).
set -euo pipefail

PHASES=(validate shard transfer train quantize deploy benchmark)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${VISIONNODE_IMAGE_PREFIX:-visionnode}"
DOCKER="${DOCKER:-docker}"

push=0 dry_run=0 triton=1
for arg in "$@"; do
  case "$arg" in
    --push) push=1 ;;
    --dry-run) dry_run=1 ;;
    --no-triton) triton=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
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

openvino_arg=()
if [[ -n "${OPENVINO_VERSION:-}" ]]; then
  openvino_arg=(--build-arg "OPENVINO_VERSION=${OPENVINO_VERSION}")
fi

build() {  # build TAG DOCKERFILE [docker build args...]
  local tag="$1" dockerfile="$2"
  shift 2
  run "$DOCKER" build --file "$ROOT/docker/$dockerfile" --tag "$tag" "$@" "$ROOT"
  if ((push)); then
    run "$DOCKER" push "$tag"
  fi
}

base="$PREFIX/base:$VERSION"
build "$base" base.Dockerfile ${openvino_arg[@]+"${openvino_arg[@]}"}
for phase in "${PHASES[@]}"; do
  build "$PREFIX/$phase:$VERSION" "$phase.Dockerfile" --build-arg "BASE_IMAGE=$base"
done
if ((triton)); then
  build "$PREFIX/triton-openvino:$VERSION" triton-openvino.Dockerfile ${openvino_arg[@]+"${openvino_arg[@]}"}
fi
if ((!dry_run)); then
  echo "built ${#PHASES[@]} component images + base$( ((triton)) && echo ' + triton-openvino') as $PREFIX/<name>:$VERSION"
fi
