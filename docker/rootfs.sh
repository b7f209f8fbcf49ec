#!/usr/bin/env bash
# Makes the local root image the VisionNode-152 images start from when no registry can be reached:
# Debian 12 (bookworm) from Debian's own mirror with debootstrap, plus Python 3.11 (python3, venv, libpython
# for Triton's python backend), the CA bundle, and the shared libraries FFCV's extension links. The result is
# imported as ${VISIONNODE_IMAGE_PREFIX:-visionnode}/debian-python:bookworm; docker/build.sh passes it to
# base.Dockerfile as PYTHON_IMAGE. A cluster build with a registry uses python:3.11-slim-bookworm instead
# (`docker/build.sh --python-image python:3.11-slim-bookworm`).
#
# Usage: docker/rootfs.sh [--force]     (root; about a minute; skipped when the image exists unless --force)
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DOCKER (default /usr/bin/docker).
set -euo pipefail

PREFIX="${VISIONNODE_IMAGE_PREFIX:-visionnode}"
IMAGE="$PREFIX/debian-python:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-/usr/bin/docker}"
PACKAGES=python3,python3-venv,libpython3.11,ca-certificates,libturbojpeg0,libopencv-core406,libopencv-imgproc406

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "error: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

if ((!force)) && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "==> $IMAGE exists (docker/rootfs.sh --force makes it anew)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (run: scripts/dockerd.sh install)" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "error: debootstrap needs root (run: sudo $0)" >&2; exit 2; }

work="$(mktemp -d /var/tmp/visionnode-rootfs.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "==> debootstrap bookworm ($MIRROR) into $work"
if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
  echo "error: debootstrap could not build the Debian root from $MIRROR: $(grep -m1 -E '^(E|W):' "$work/debootstrap.log" || tail -n 1 "$work/debootstrap.log")" >&2
  exit 1
fi
# Nothing of the build host in the image: no package lists, caches or logs.
rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin "$work/root"/var/cache/apt/archives/*.deb \
       "$work/root"/var/log/*.log "$work/root"/tmp/*
echo "==> docker import -> $IMAGE"
tar -C "$work/root" --numeric-owner -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "==> $IMAGE: $("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
