"""Cost per image from 1 k to 100 k ImageNet-shaped images: validate, shard, transfer, one loader epoch.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000,10000,100000] [--data DIR] [--work DIR]

Data: `visionnode data synth-imagenet` (1,000 classes, ImageNet's mean size and bytes per JPEG), generated
once at the largest size (or given with --data, train/ only is used); each smaller size is the first N/1,000
images of every class, hard-linked (the generator's files do not depend on how many are made, so this is
the dataset a smaller run would generate).

Every phase runs in its own process, as the pipeline runs it, so phases and sizes share no memory:
  validate  `visionnode validate` on the train split, LR probe off, a small smoke run (VALIDATE_ARGS);
  shard     `visionnode shard --split train --no-readback` (max side 256, q90, 5,000 images per shard);
  transfer  `visionnode transfer upload` to the embedded S3 (SeaweedFS, started here on a free port);
  loader    one epoch of the FFCV train loader (ffcv_io.train_loader, 224 px random-resized crop + flip,
            batch 64) over the local shards, after reading them once (page cache; timed apart) and a
            warm-up on the first shard (numba compiles once).
Peak RSS is `ru_maxrss` from os.wait4() on the phase's process: the largest resident set of that process
and the workers it reaped (shard's decoders), not their sum. Times are the phases' own clocks (validate:
its wall_seconds; shard and transfer: their result's seconds; loader: the timed epoch), so interpreter start
and imports are left out; the process's wall time is printed too. Bytes: validate ~ the subset (images used
x mean file size), shard = raw JPEGs read + shard bytes written, transfer = bytes uploaded, loader = shard
bytes read.

Goals (issue 30): per-image cost at the largest size <= 1.15x that at the size before it (10x smaller) for
shard, transfer and loader; validate's time flat; peak RSS at the largest size <= 1.25x for every phase.
The machine may be shared: the load average is printed with each phase.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("validate", "shard", "transfer", "loader")
FLAT_COST = 1.15        # per-image cost ratio, largest size / the one before (shard, transfer, loader)
FLAT_RSS = 1.25         # peak RSS ratio, every phase
LOADER_BATCH, LOADER_RESOLUTION = 64, 224
# validate's smoke run, small: what must stay flat is what grows with the data (listing, sampling), not the
# fixed cost of training; at its defaults (30 steps, 256 images) it took 318 s at load 9 on 2 cores
VALIDATE_ARGS = ("--lr-probe-steps", "0", "--subset", "64", "--steps", "8", "--batch-size", "16",
                 "--profile-batches", "2")


@dataclass
class Figure:
    phase: str
    size: int
    images: int
    seconds: float            # the phase's own clock
    wall_s: float             # the process, start-up included
    bytes_moved: int
    peak_rss_mb: float
    load: float

    @property
    def per_image_ms(self) -> float:
        return 1000 * self.seconds / self.images

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def run_phase(argv: list[str], log: Path, allowed: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Run one phase in its own process; (wall seconds, peak RSS in MB from wait4's rusage)."""
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if process.returncode not in allowed:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{' '.join(argv[:4])} ... exited {process.returncode}; log {log}:\n{tail}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def visionnode(*args: str) -> list[str]:
    return [sys.executable, "-m", "visionnode.pipeline.cli", *args]


def subset(data: Path, per_class: int, target: Path) -> tuple[Path, int, int]:
    """train/ with the first `per_class` images of every class, hard-linked; (root, images, bytes)."""
    classes = sorted(p for p in (data / "train").iterdir() if p.is_dir())
    if all(len(os.listdir(c)) == per_class for c in classes):
        target = data
    else:
        shutil.rmtree(target, ignore_errors=True)
        for folder in classes:
            files = sorted(os.listdir(folder))[:per_class]
            if len(files) < per_class:
                raise SystemExit(f"{folder} holds {len(files)} images, fewer than {per_class}")
            (target / "train" / folder.name).mkdir(parents=True)
            for name in files:
                os.link(folder / name, target / "train" / folder.name / name)
        for extra in data.glob("LOC_*"):
            shutil.copy(extra, target / extra.name)
    sizes = [f.stat().st_size for c in (target / "train").iterdir() for f in c.iterdir()]
    return target, len(sizes), sum(sizes)


def loader_epoch(shards: Path, workers: int, out: Path) -> None:
    """The loader phase, run in its own process: read the shards once (into the page cache, timed apart: the
    epoch measures decoding, not the disk), warm up on the first shard, then time one full epoch."""
    from visionnode.components.common.artifacts import ShardManifest
    from visionnode.components.common.data.ffcv_io import train_loader

    manifest = ShardManifest.load(shards)
    paths = [shards / s.file for s in manifest.shards]
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
    read_s = time.perf_counter() - started
    for index, _ in enumerate(train_loader(paths[:1], LOADER_BATCH, LOADER_RESOLUTION, workers, seed=1)):
        if index == 2:
            break
    loader = train_loader(paths, LOADER_BATCH, LOADER_RESOLUTION, workers, seed=0)
    images, started = 0, time.perf_counter()
    for batch, _labels in loader:
        images += len(batch)
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"images": images, "seconds": seconds, "read_s": read_s,
                               "bytes": sum(p.stat().st_size for p in paths)}))


class S3:
    """The embedded S3 only (no MLflow, no Triton), on a free port; the environment points at it."""

    def __init__(self, state_dir: Path) -> None:
        import secrets

        from visionnode.components.local.stack import LocalStack, StackConfig
        from visionnode.components.local.stack.process import free_ports

        os.environ.update({"VISIONNODE_STATE_DIR": str(state_dir), "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ACCESS_KEY_ID": "vnbench" + secrets.token_hex(6),
                           "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24),
                           "MLFLOW_TRACKING_URI": "", "VISIONNODE_PROGRESS": "0"})
        os.environ.pop("VISIONNODE_MLFLOW_URI", None)
        (port,) = free_ports(1)
        self.stack = LocalStack(StackConfig(state_dir=state_dir, s3_port=port, with_mlflow=False,
                                            with_triton=False, startup_timeout_s=180.0, die_with_parent=True))

    def __enter__(self) -> S3:
        self.stack.up()
        os.environ["VISIONNODE_S3_ENDPOINT"] = self.stack.endpoints.s3_endpoint or ""
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.down()


def measure_size(size: int, data: Path, work: Path, workers: int, phases: set[str],
                 keep_shards: bool) -> list[Figure]:
    classes = len([p for p in (data / "train").iterdir() if p.is_dir()])
    per_class = max(1, size // classes)
    root, images, raw_bytes = subset(data, per_class, work / f"data-{size}")
    out = work / f"size-{size}"
    shards = out / "shards"
    if "shard" in phases:
        shutil.rmtree(out, ignore_errors=True)
    elif phases & {"transfer", "loader"} and not (shards / "manifest.json").is_file():
        raise SystemExit(f"{shards} holds no shards: run the shard phase with --keep-shards first")
    out.mkdir(parents=True, exist_ok=True)
    figures = []

    def record(phase: str, images_: int, seconds: float, wall: float, moved: int, rss: float) -> None:
        figures.append(Figure(phase, size, images_, seconds, wall, moved, rss, os.getloadavg()[0]))
        f = figures[-1]
        print(f"  {phase:<9}{size:>8,} {f.images_per_s:>9.1f} img/s {moved / 1e6:>10.1f} MB "
              f"{rss:>8.0f} MB RSS  own {seconds:7.1f} s, process {wall:7.1f} s, load {f.load:.1f}",
              flush=True)

    if "validate" in phases:
        wall, rss = run_phase(visionnode("validate", "--data", str(root), *VALIDATE_ARGS,
                                         "--workers", str(workers), "--report", str(out / "validate.md"),
                                         "--json", str(out / "validate.json")),
                              out / "validate.log", allowed=(0, 1, 2))  # its gate failed: timed all the same
        result = json.loads((out / "validate.json").read_text())
        # images = the dataset's: validate's cost is per dataset, so its img/s means dataset images/s
        record("validate", images, result["wall_seconds"], wall,
               round(result["images_used"] * raw_bytes / images), rss)
    if "shard" in phases:
        wall, rss = run_phase(visionnode("shard", "--data", str(root), "--out", str(shards),
                                         "--split", "train", "--no-readback", "--workers", str(workers),
                                         "--json", str(out / "shard.json")), out / "shard.log")
        result = json.loads((out / "shard.json").read_text())
        assert result["images_written"] == images, result
        record("shard", images, result["seconds"], wall, raw_bytes + result["total_bytes"], rss)
    if "transfer" in phases:
        wall, rss = run_phase(visionnode("transfer", "upload", str(shards), f"s3://bench-scale/size-{size}",
                                         "--create-bucket", "--json", str(out / "transfer.json")),
                              out / "transfer.log")
        result = json.loads((out / "transfer.json").read_text())
        record("transfer", images, result["seconds"], wall, result["bytes_transferred"], rss)
    if "loader" in phases:
        wall, rss = run_phase([sys.executable, __file__, "--loader-epoch", str(shards),
                               "--workers", str(workers), "--json", str(out / "loader.json")],
                              out / "loader.log")
        result = json.loads((out / "loader.json").read_text())
        record("loader", result["images"], result["seconds"], wall, result["bytes"], rss)
        print(f"  {'':<9}{'':>8} shards read once before the epoch: {result['read_s']:.1f} s "
              f"({result['bytes'] / 1e6 / result['read_s']:.0f} MB/s)", flush=True)
    if not keep_shards:
        shutil.rmtree(shards, ignore_errors=True)  # the S3 copy stays until the end; subsets are hard links
    return figures


def cost_ratio(figure: Figure, before: Figure) -> float:
    """Per-image time against the smaller size's; validate: its time (it reads its subset only)."""
    if figure.phase == "validate":
        return figure.seconds / before.seconds
    return figure.per_image_ms / before.per_image_ms


def report(figures: list[Figure]) -> None:
    sizes = sorted({f.size for f in figures})
    by = {(f.phase, f.size): f for f in figures}
    print()
    print(f"{'phase':<9}{'images':>9}{'img/s':>9}{'ms/img':>9}{'MB moved':>11}{'peak RSS MB':>13}"
          f"{'cost ratio':>12}{'RSS ratio':>11}{'load':>6}")
    phases = [p for p in PHASES if any(f.phase == p for f in figures)]
    for phase in phases:
        for index, size in enumerate(sizes):
            f = by[(phase, size)]
            ratio = rss_ratio = ""
            if index:
                before = by[(phase, sizes[index - 1])]
                ratio = f"{cost_ratio(f, before):.2f}"
                rss_ratio = f"{f.peak_rss_mb / before.peak_rss_mb:.2f}"
            print(f"{phase:<9}{size:>9,}{f.images_per_s:>9.1f}{f.per_image_ms:>9.2f}"
                  f"{f.bytes_moved / 1e6:>11.1f}{f.peak_rss_mb:>13.0f}{ratio:>12}{rss_ratio:>11}"
                  f"{f.load:>6.1f}")
    if len(sizes) < 2:
        return
    last, before = sizes[-1], sizes[-2]
    print(f"\ngoals, {last:,} vs {before:,} images (cost ratio: per-image time; validate: its time):")
    for phase in phases:
        a, b = by[(phase, last)], by[(phase, before)]
        cost = cost_ratio(a, b)
        rss = a.peak_rss_mb / b.peak_rss_mb
        cost_ok = cost <= FLAT_COST
        print(f"  {phase:<9} cost {cost:.2f} ({'met' if cost_ok else 'NOT met'}, <= {FLAT_COST})  "
              f"peak RSS {rss:.2f} ({'met' if rss <= FLAT_RSS else 'NOT met'}, <= {FLAT_RSS})")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `with S3(...)`: the server is stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="train images per run, comma-separated")
    parser.add_argument("--data", type=Path, help="an ImageNet-shaped dataset with at least max(sizes) "
                                                  "train images (default: generate one under --work)")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temp dir, removed after)")
    parser.add_argument("--workers", type=int, default=2, help="phase workers (shard, validate, loader)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="phases to run, comma-separated; without shard, the loader and transfer read "
                             "the shards an earlier --keep-shards run left under --work")
    parser.add_argument("--keep-shards", action="store_true", help="leave each size's shards under --work")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--loader-epoch", type=Path, help=argparse.SUPPRESS)  # the loader phase's process
    args = parser.parse_args()
    if args.loader_epoch:
        loader_epoch(args.loader_epoch, args.workers, args.json)
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    phases = set(args.phases.split(","))
    if not phases <= set(PHASES):
        parser.error(f"--phases: choose from {', '.join(PHASES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="vn-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = args.data
        if data is None:
            data = work / "data"
            started = time.monotonic()
            run_phase(visionnode("data", "synth-imagenet", str(data), "--train-per-class",
                                 str(max(1, sizes[-1] // 1000)), "--workers", str(args.workers),
                                 "--json", str(work / "synth.json")), work / "synth.log")
            synth = json.loads((work / "synth.json").read_text())
            print(f"generated {synth['train_images']:,} images in {time.monotonic() - started:.0f} s: mean "
                  f"{synth['mean_width']:.0f} x {synth['mean_height']:.0f} px, {synth['mean_kb']:.1f} KB",
                  flush=True)
        print(f"cpus {os.cpu_count()}, workers {args.workers}; phase, size, img/s, bytes, peak RSS:",
              flush=True)
        figures: list[Figure] = []
        with S3(work / "s3-state") if "transfer" in phases else contextlib.nullcontext():
            for size in sizes:
                figures += measure_size(size, data, work, args.workers, phases, args.keep_shards)
        report(figures)
        if args.json:
            args.json.write_text(json.dumps([{**f.__dict__, "per_image_ms": f.per_image_ms,
                                              "images_per_s": f.images_per_s} for f in figures], indent=1))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for size in sizes:
                if args.data is None or work / f"data-{size}" != args.data:
                    shutil.rmtree(work / f"data-{size}", ignore_errors=True)
            shutil.rmtree(work / "s3-state", ignore_errors=True)


if __name__ == "__main__":
    main()
