"""Shard writing throughput: `visionnode shard` vs FFCV's stock multi-worker DatasetWriter, side by side.

    .venv/bin/python benchmarks/bench_shard_write.py [--images 600] [--workers 2] [--repeats 3]

Both write the same photo-sized synthetic JPEGs (300-500 px) at max side 256, JPEG q90, with the same worker
count. The stock writer is FFCV's documented path (an indexable dataset of PIL images, RGBImageField resizes
and encodes inside its workers); it is also checked for byte-determinism, which ours guarantees.
Goal: >= 300 img/s on 2 cores at max side 256. Figures are medians of `--repeats` runs; on a shared machine
expect noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VISIONNODE_PROGRESS", "0")

from visionnode.components.common.data.imagenet import open_imagenet  # noqa: E402
from visionnode.components.common.data.images import load_rgb  # noqa: E402
from visionnode.components.common.jsonio import sha256_file  # noqa: E402
from visionnode.components.local.synth import SynthConfig, synthesize_dataset  # noqa: E402
from visionnode.components.shard.shard import ShardConfig, shard_dataset  # noqa: E402

MAX_SIDE = 256
GOAL = 300.0


class RawImages:
    """FFCV's documented input: an indexable dataset of (PIL image, label)."""

    def __init__(self, records):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        return load_rgb(record.path), record.label


def stock_ffcv_write(data: Path, target: Path, workers: int) -> tuple[float, str]:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    records = open_imagenet(data).scan("train").records
    started = time.perf_counter()
    writer = DatasetWriter(str(target), {"image": RGBImageField(write_mode="jpg", max_resolution=MAX_SIDE,
                                                                jpeg_quality=90),
                                         "label": IntField()}, num_workers=workers)
    writer.from_indexed_dataset(RawImages(records), chunksize=32)
    return len(records) / (time.perf_counter() - started), sha256_file(target)


def ours(data: Path, out: Path, workers: int, images_per_shard: int) -> tuple[float, list[str]]:
    result = shard_dataset(ShardConfig(data=data, out=out, split="train", images_per_shard=images_per_shard,
                                       max_resolution=MAX_SIDE, jpeg_quality=90, workers=workers,
                                       readback=False))
    from visionnode.components.common.artifacts import ShardManifest

    return result.write_images_per_s, [s.sha256 for s in ShardManifest.load(out).shards]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="train images to generate (10 classes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ffcv.writer  # noqa: F401  warm: FFCV's import JIT-compiles for seconds; keep it out of the timings

    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        tmp = Path(tmp)
        per_class = max(1, args.images // 10)
        print(f"generating {per_class * 10} synthetic photo-sized JPEGs (300-500 px) ...", flush=True)
        data = synthesize_dataset(tmp / "data", SynthConfig(classes=10, train_per_class=per_class,
                                                            val_per_class=0,
                                                            seed=1, min_side=300, max_side=500)).root
        images_per_shard = max(1, per_class * 10 // 3)  # three shards
        ours_rates, stock_rates, ours_shas, stock_shas = [], [], [], []
        for run in range(args.repeats):
            rate, shas = ours(data, tmp / f"ours-{run}", args.workers, images_per_shard)
            ours_rates.append(rate)
            ours_shas.append(shas)
            rate, sha = stock_ffcv_write(data, tmp / f"stock-{run}.beton", args.workers)
            stock_rates.append(rate)
            stock_shas.append(sha)
            print(f"run {run + 1}: visionnode shard {ours_rates[-1]:7.1f} img/s | "
                  f"stock FFCV DatasetWriter {stock_rates[-1]:7.1f} img/s", flush=True)

    ours_median, stock_median = statistics.median(ours_rates), statistics.median(stock_rates)
    print()
    print(f"images: {per_class * 10}, max side {MAX_SIDE}, JPEG q90, workers {args.workers}, "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    print(f"visionnode shard (deterministic): median {ours_median:.1f} img/s "
          f"(goal >= {GOAL:.0f}: {'met' if ours_median >= GOAL else 'NOT met'})")
    print(f"stock FFCV DatasetWriter:         median {stock_median:.1f} img/s")
    print(f"ratio visionnode / stock: {ours_median / stock_median:.2f}x")
    print(f"byte-identical across runs: visionnode {len({tuple(s) for s in ours_shas}) == 1}, "
          f"stock FFCV {len(set(stock_shas)) == 1}")


if __name__ == "__main__":
    main()
