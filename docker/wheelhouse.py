"""The wheelhouse docker/build.sh installs the images' dependencies from, made from this environment.

The lock is the project's runtime dependency closure exactly as it is installed here (`Requires-Dist` walked
from `visionnode`, markers evaluated, no test extras), with opencv-python swapped for opencv-python-headless
of
the same version (FFCV asks for opencv-python, whose cv2 needs X11/GL libraries just to import; the headless
build has the same cv2 API). Wheels already in the directory are kept, so a rebuild downloads nothing; the
rest are fetched or built (FFCV is an sdist) by pip, once. Writes DIR/requirements.txt (the lock) and prints
its sha256, which keys the image's dependency layer.

Usage: python docker/wheelhouse.py DIR      (the project's venv python: `.venv/bin/python
docker/wheelhouse.py`)
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

PROJECT = "visionnode"
# Build tools the image's venv needs to install the project's own code (pyproject's build-system).
BUILD_TOOLS = ("setuptools", "wheel")
SWAPS = {"opencv-python": "opencv-python-headless"}


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Canonical name -> installed version of the project's runtime dependencies, transitively."""
    pinned: dict[str, str] = {}
    expanded: set[tuple[str, str]] = set()  # (distribution, extra) pairs already walked
    todo = [(project, "")] + [(tool, "") for tool in BUILD_TOOLS]
    while todo:
        distribution, extra = todo.pop()
        name = canonicalize_name(distribution)
        if (name, extra) in expanded:
            continue
        expanded.add((name, extra))
        pinned[name] = metadata.version(distribution)
        for text in metadata.requires(distribution) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if extra and (marker is None or "extra" not in str(marker)):
                continue  # walking an extra adds only what that extra asks for
            if marker is None or marker.evaluate({"extra": extra}):
                todo.append((requirement.name, ""))
                todo.extend((requirement.name, wanted) for wanted in requirement.extras)
    pinned.pop(canonicalize_name(project))
    for original, swapped in SWAPS.items():
        if original in pinned:
            pinned[swapped] = pinned.pop(original)
    return dict(sorted(pinned.items()))


def wheels_present(directory: Path) -> set[tuple[str, str]]:
    present = set()
    for wheel in directory.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        present.add((canonicalize_name(name), str(version)))
    return present


def fetch_missing(directory: Path, lock: dict[str, str]) -> None:
    present = wheels_present(directory)
    missing = [f"{name}=={version}" for name, version in lock.items() if (name, version) not in present]
    if not missing:
        return
    print(f"==> wheelhouse: fetching or building {len(missing)} of {len(lock)} wheels", file=sys.stderr,
          flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--progress-bar", "off",
                             "--wheel-dir", str(directory), *missing], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: the wheelhouse could not fetch {_failed_requirement(result.stderr, missing)} "
                 "(pip has no network to its package index?); run docker/build.sh again where pip can reach "
                 "it")


def _failed_requirement(stderr: str, missing: list[str]) -> str:
    for pattern in (r"satisfies the requirement (\S+)", r"No matching distribution found for (\S+)",
                    r"Failed to build (\S+)", r"Could not build wheels for (\S+)"):
        if match := re.search(pattern, stderr):
            return match.group(1)
    return missing[0]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    try:
        lock = runtime_closure()
    except metadata.PackageNotFoundError as exc:
        sys.exit(f"error: {exc.name} is not installed in {sys.prefix}; run `make install` first")
    fetch_missing(directory, lock)
    text = "".join(f"{name}=={version}\n" for name, version in lock.items())
    tmp = directory / "requirements.txt.tmp"
    tmp.write_text(text)
    tmp.replace(directory / "requirements.txt")
    print(hashlib.sha256(text.encode()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
