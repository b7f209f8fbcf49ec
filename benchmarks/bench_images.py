"""Container images: build times (cold, warm, after a one-line change under components/), disk for all nine
images against the base alone, and the local DAG's wall time with the subprocess runner vs the docker runner
on
the same data, side by side in one run (the same clock: wall time of the same CLI command).

Targets (issue 15): warm rebuild after a one-line change <= 60 s on 2 cores; all nine images <= 1.3x the
base's
disk; docker DAG <= 1.3x the subprocess DAG.

    .venv/bin/python benchmarks/bench_images.py              # warm builds, sizes, tiny DAG x1 each
    .venv/bin/python benchmarks/bench_images.py --cold       # also a cold build (drops images, cache,
    wheelhouse)
    .venv/bin/python benchmarks/bench_images.py --demo --repeats 2   # the demo's DAG, alternated,
    medians

Needs root and a Docker engine (scripts/dockerd.sh start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from visionnode.components.local import containers  # noqa: E402
from visionnode.components.local.synth import SynthConfig, synthesize_dataset  # noqa: E402

NAMES = ("base", *containers.PHASES, "triton-openvino")
BENCH_PREFIX = "visionnode-bench"
# What tests/test_containers.py runs: every phase does real work, in about two minutes on 2 cores.
TINY_PARAMS = {"train_arch": "resnet18", "train_epochs": 1, "train_batch_size": 16,
               "train_res_schedule": "64:64", "validate_subset": 48, "validate_steps": 12,
               "validate_image_size": 48, "shard_images_per_shard": 64, "shard_max_resolution": 64,
               "quantize_calibration_images": 32, "quantize_max_accuracy_drop": 100.0,
               "benchmark_concurrency": "1,2", "benchmark_duration_s": 1.5}


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def timed_build(args: list[str], env: dict[str, str] | None = None, root: Path = ROOT) -> float:
    started = time.perf_counter()
    done = subprocess.run(["bash", str(root / "docker" / "build.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        sys.exit(f"build failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def cold_build() -> float:
    client = containers.docker_client()
    for name in (*NAMES, "debian-python"):
        for image in client.images.list(name=f"{containers.IMAGE_PREFIX}/{name}"):
            client.images.remove(image.id, force=True)
    client.api.prune_builds()
    with tempfile.TemporaryDirectory(prefix="wheelhouse-", dir="/var/tmp") as wheelhouse:
        return timed_build([], {"VISIONNODE_WHEELHOUSE": wheelhouse})


def one_line_change_build() -> float:
    """docker/build.sh in a copy of the tree with one comment line added to a module under components/."""
    with tempfile.TemporaryDirectory(prefix="visionnode-tree-") as tmp:
        tree = Path(tmp) / "tree"
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True,
                               text=True, check=True).stdout.split()
        for name in files:
            if (ROOT / name).is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, tree / name)
        changed = tree / "components" / "common" / "__init__.py"
        changed.write_text(changed.read_text() + f"# benchmark change {time.time()}\n")
        env = {"VISIONNODE_IMAGE_PREFIX": BENCH_PREFIX, "PYTHON": str(VENV_BIN / "python")}
        try:
            return timed_build(["--python-image", f"{containers.IMAGE_PREFIX}/debian-python:bookworm"], env,
                               root=tree)
        finally:
            client = containers.docker_client()
            for name in NAMES:
                for image in client.images.list(name=f"{BENCH_PREFIX}/{name}"):
                    client.images.remove(image.id, force=True)


def image_sizes() -> tuple[dict[str, int], int]:
    """Each image's size, and the disk all of them take together (each builds on the base's layers)."""
    client = containers.docker_client()
    images = {name: client.images.get(containers.image_tag(name)) for name in NAMES}
    base = images["base"]
    base_layers = base.attrs["RootFS"]["Layers"]
    sizes = {name: int(image.attrs["Size"]) for name, image in images.items()}
    together = sizes["base"]
    for name, image in images.items():
        if name == "base":
            continue
        if image.attrs["RootFS"]["Layers"][:len(base_layers)] != base_layers:
            sys.exit(f"{name} does not build on the base's layers")
        together += sizes[name] - sizes["base"]
    return sizes, together


def dag_seconds(runner: str, data: Path, work: Path, params: dict[str, object]) -> float:
    """Wall time of `visionnode pipeline run --local --runner RUNNER` with a fresh stack of its own."""
    state = work / f"state-{runner}-{time.monotonic_ns()}"
    state.mkdir(parents=True)
    state.chmod(0o755)
    env = {**os.environ, "VISIONNODE_STATE_DIR": str(state), "VISIONNODE_PROGRESS": "0"}
    for key in ("VISIONNODE_S3_ENDPOINT", "MLFLOW_TRACKING_URI", "VISIONNODE_MLFLOW_URI",
                "VISIONNODE_TRITON_HTTP"):
        env.pop(key, None)
    argv = [str(VENV_BIN / "visionnode"), "pipeline", "run", "--local", "--runner", runner, "--data",
            str(data),
            "--json", str(state / "summary.json")]
    for key, value in params.items():
        argv += ["-p", f"{key}={value}"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    subprocess.run([str(VENV_BIN / "visionnode"), "stack", "down"], capture_output=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{runner} DAG failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((state / "summary.json").read_text())
    print(f"  {runner:10s} {seconds:7.1f} s  (top-1 {summary.get('train_top1')}, QPS {summary.get('qps')})",
          flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true",
                        help="also time a build from nothing (slow, drops caches)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo's DAG (ResNet-152, 3 epochs) instead of tiny")
    parser.add_argument("--repeats", type=int, default=1, help="DAG runs per runner, alternated")
    parser.add_argument("--no-dag", action="store_true", help="builds and sizes only")
    args = parser.parse_args()

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    if args.cold:
        print(f"cold build (root image, wheelhouse, all images): {cold_build():.0f} s", flush=True)
    print(f"warm build, nothing changed: {timed_build([]):.1f} s", flush=True)
    changed = one_line_change_build()
    print(f"warm build after a one-line change in components/: {changed:.1f} s (target <= 60 s)", flush=True)
    sizes, together = image_sizes()
    for name, size in sizes.items():
        print(f"  {containers.image_tag(name):40s} {size / 1e9:6.2f} GB")
    ratio = together / sizes["base"]
    print(f"all nine images together: {together / 1e9:.2f} GB = {ratio:.3f}x the base alone (target <= 1.3x)")
    if args.no_dag:
        return

    from visionnode.pipeline.local_run import DEMO_DATA, DEMO_PARAMS

    params = dict(DEMO_PARAMS) if args.demo else TINY_PARAMS
    work = Path(tempfile.mkdtemp(prefix="visionnode-bench-dag-", dir="/var/tmp"))
    work.chmod(0o755)
    try:
        config = DEMO_DATA if args.demo else SynthConfig(classes=6, train_per_class=16, val_per_class=4,
                                                         seed=7,
                                                         min_side=64, max_side=160)
        data = synthesize_dataset(work / "data", config).root
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        times: dict[str, list[float]] = {"subprocess": [], "docker": []}
        print(f"DAG wall time ({'demo' if args.demo else 'tiny'} parameters), runners alternated:")
        for _ in range(args.repeats):
            for runner in times:
                times[runner].append(dag_seconds(runner, data, work, params))
        sub, dock = (statistics.median(times[r]) for r in ("subprocess", "docker"))
        print(f"median: subprocess {sub:.1f} s, docker {dock:.1f} s = {dock / sub:.2f}x (target <= 1.3x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
