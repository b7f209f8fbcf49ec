"""Benchmark: INT8 ResNet-152 (1,000 classes, 224 px) vs FP32, side by side in one run.

    .venv/bin/python benchmarks/bench_quantize.py [--calibration-images 300] [--seconds 10]

Weights are random (ImageNet cannot be downloaded here): torchvision's init without zero-init residuals,
then BatchNorm running statistics re-estimated on the synthetic images so activations have realistic ranges.
Top-1 against labels is therefore chance; what is meaningful is FP32 vs INT8 top-1 agreement (fidelity)
and everything about size, memory and speed. Calibration: synthetic images from synthesize_dataset,
resized (short side 256) and centre-cropped to 224 — the val preprocessing.
Targets (issue 6): INT8 size <= 65 MB, inference-process RSS <= 1.5 GB, INT8 OpenVINO / PyTorch eager FP32
throughput at batch 8 >= 15x. The machine is shared: figures are medians and still noisy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionnode.components.common.artifacts import ClassIndex, ModelMetadata, Preprocessing
from visionnode.components.common.training.model import build_resnet, normalize_uint8_nchw
from visionnode.components.local.synth import SynthConfig, synthesize_dataset, synthetic_wnid
from visionnode.components.quantize.accuracy import compare_accuracy
from visionnode.components.quantize.export import (
    convert_to_openvino,
    export_onnx,
    load_trained_model,
    save_ir,
    torch_logits,
)
from visionnode.components.quantize.perf import (
    ENGINES,
    compile_openvino,
    measure_performance,
    openvino_logits,
)
from visionnode.components.quantize.quantize import quantize_openvino

SIZE, RESIZE, CLASSES = 224, 256, 1000
TARGET_SIZE_MB, TARGET_RSS_GB, TARGET_SPEEDUP = 65.0, 1.5, 15.0


def centre_crop(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = RESIZE / min(image.size)
    image = image.resize((max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    left, top = (image.width - SIZE) // 2, (image.height - SIZE) // 2
    return np.asarray(image.crop((left, top, left + SIZE, top + SIZE)))


def synthetic_images(work: Path, count: int) -> np.ndarray:
    per_class = -(-count // 10)
    config = SynthConfig(classes=10, train_per_class=per_class, val_per_class=0, min_side=160, max_side=320,
                         seed=3)
    root = synthesize_dataset(work / "synth", config).root
    files = sorted((root / "train").rglob("*.JPEG"))
    rng = np.random.default_rng(0)
    return np.stack([centre_crop(p) for p in rng.permutation(files)[:count]])


def random_model_dir(work: Path, images: np.ndarray) -> Path:
    """ResNet-152 with random weights and BatchNorm statistics re-estimated on `images`."""
    torch.manual_seed(0)
    model = build_resnet(152, CLASSES, zero_init_residual=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for start in range(0, min(len(images), 64), 16):
            model(normalize_uint8_nchw(torch.from_numpy(images[start:start + 16]).permute(0, 3, 1, 2)))
    model_dir = work / "fp32"
    model_dir.mkdir()
    torch.save(model.eval().state_dict(), model_dir / "weights.pt")
    wnids = [synthetic_wnid(c) for c in range(CLASSES)]
    ModelMetadata("resnet152", CLASSES, ClassIndex(wnids, wnids), Preprocessing(SIZE, RESIZE),
                  training={"note": "random weights, BN statistics from synthetic images (benchmark)"}
                  ).save(model_dir)
    return model_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="per engine and measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="mixed", choices=("mixed", "performance"))
    parser.add_argument("--fast-bias-correction", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--full-int8", action="store_true",
                        help="quantize the Adds, stem and projections too (the product default keeps them "
                        "FP32)")
    args = parser.parse_args()

    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        clock = time.perf_counter()
        images = synthetic_images(work, args.calibration_images + args.eval_images)
        calibration, held_out = images[: args.calibration_images], images[args.calibration_images:]
        model_dir = random_model_dir(work, calibration)
        steps["data + model"] = time.perf_counter() - clock

        clock = time.perf_counter()
        model = load_trained_model(model_dir)
        fp32 = convert_to_openvino(export_onnx(model, work / "int8" / "model.onnx"))
        steps["export"] = time.perf_counter() - clock
        clock = time.perf_counter()
        int8 = quantize_openvino(fp32, [image[None] for image in calibration], args.preset,
                                 args.fast_bias_correction, args.full_int8)
        xml = save_ir(int8, work / "int8" / "model.xml")
        steps["quantize"] = time.perf_counter() - clock

        fp32_compiled = compile_openvino(fp32, "LATENCY", args.threads, fp32_exact=True)
        export_diff = float(np.abs(openvino_logits(fp32_compiled)(held_out[:2])
                                   - torch_logits(model, held_out[:2])).max())
        batches = [(chunk, np.zeros(len(chunk), np.int64)) for chunk in np.array_split(
            held_out, max(1, len(held_out) // 8))]
        fidelity = compare_accuracy(openvino_logits(fp32_compiled), openvino_logits(compile_openvino(xml)),
                                    batches, CLASSES, total=len(held_out))
        del fp32_compiled

        clock = time.perf_counter()
        perf = measure_performance(model.serving_module(), fp32, xml, SIZE, args.threads, 8, args.seconds)
        steps["measure"] = time.perf_counter() - clock

    print(f"\nResNet-152, {CLASSES} classes, {SIZE}x{SIZE}, {args.threads} threads, preset {args.preset}, "
          f"fast_bias_correction={args.fast_bias_correction}, full_int8={args.full_int8}, "
          f"{args.calibration_images} calibration images "
          f"(random weights; shared machine: noisy)")
    print(f"{'engine':<16}{'latency b1 (ms)':>18}{'throughput b8 (img/s)':>24}{'vs PyTorch':>12}")
    base = perf.engines["pytorch_fp32"].throughput_ips
    for name in ENGINES:
        t = perf.engines[name]
        print(f"{name:<16}{t.latency_b1_ms:>18.1f}{t.throughput_ips:>24.1f}{t.throughput_ips / base:>11.1f}x")
    size_mb, rss_gb = perf.int8_size_bytes / 1e6, perf.int8_peak_rss_bytes / 1e9
    print(f"\nINT8 model on disk : {size_mb:.1f} MB (target <= {TARGET_SIZE_MB:g}) "
          f"{'OK' if size_mb <= TARGET_SIZE_MB else 'MISSED'}")
    print(f"INT8 process RSS   : {rss_gb:.2f} GB (target <= {TARGET_RSS_GB:g}) "
          f"{'OK' if rss_gb <= TARGET_RSS_GB else 'MISSED'}; load+compile {perf.int8_load_s:.1f} s")
    print(f"INT8 / PyTorch FP32 throughput (b8): {perf.speedup_vs_pytorch:.1f}x "
          f"(target >= {TARGET_SPEEDUP:g}) "
          f"{'OK' if perf.speedup_vs_pytorch >= TARGET_SPEEDUP else 'MISSED'}; "
          f"INT8 / OpenVINO FP32: {perf.speedup_vs_openvino_fp32:.1f}x")
    print(f"FP32 vs INT8 top-1 agreement on {fidelity.images} held-out synthetic images: "
          f"{fidelity.top1_agreement:.1f}% (random weights: a fidelity check, not accuracy)")
    print(f"export check: max |OpenVINO FP32 - PyTorch| logits = {export_diff:.2e}")
    print("step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items()))
    print("samples per median (latency/throughput): " + ", ".join(
        f"{n} {perf.engines[n].latency_samples}/{perf.engines[n].throughput_samples}" for n in ENGINES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
