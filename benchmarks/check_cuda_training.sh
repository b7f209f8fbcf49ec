#!/usr/bin/env bash
# The CUDA training path end to end, for a machine with NVIDIA GPUs (CI has none, so the suite cannot cover
# it): generated data -> FFCV shards -> ResNet-152 training with auto mixed precision (bf16 on Ampere+),
# checkpoints every N steps, a stop at --max-steps and a resume to the end, an fp16 + GradScaler run, and
# torchrun DDP over every visible GPU (NCCL). Prints each run's status, precision, images/s and accuracy.
#
#   bash benchmarks/check_cuda_training.sh            # WORK=DIR keeps the files; ARCH, BATCH, RES,
#                                                           # CLASSES, PER_CLASS, WORKERS override the sizes;
#                                                           # GPUS=1 FP16_PRECISION=fp32 rehearses on a CPU
set -euo pipefail

VISIONNODE=${VISIONNODE:-visionnode}
TORCHRUN=${TORCHRUN:-torchrun}
WORK=${WORK:-$(mktemp -d /tmp/visionnode-cuda-check.XXXXXX)}
ARCH=${ARCH:-resnet152}
BATCH=${BATCH:-128}
RES=${RES:-160:192}
CLASSES=${CLASSES:-10}
PER_CLASS=${PER_CLASS:-260}
WORKERS=${WORKERS:-8}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
if [[ "${GPUS:-0}" -lt 1 ]]; then
  echo "error: PyTorch sees no CUDA GPU; this check is for GPU machines (the test suite covers the CPU path)" >&2
  exit 2
fi

step() { printf '\n==> %s\n' "$*"; }
train() {  # train OUT_DIR JSON_NAME [extra flags...]
  local out=$1 json=$2; shift 2
  $VISIONNODE train --shards "$WORK/shards" --out "$out" --arch "$ARCH" --epochs 2 --batch-size "$BATCH" \
    --res-schedule "$RES" --workers "$WORKERS" --json "$WORK/$json" "$@"
}

step "data + shards in $WORK"
$VISIONNODE data synth "$WORK/data" --classes "$CLASSES" --train-per-class "$PER_CLASS" --val-per-class 20 \
  --min-side 160 --max-side 320 --json "$WORK/data.json" >/dev/null
$VISIONNODE shard --data "$WORK/data" --out "$WORK/shards" --split both --max-resolution 256 \
  --workers "$WORKERS" --json "$WORK/shard.json" >/dev/null

step "auto precision, checkpoint every 5 steps, stopped at step 12"
train "$WORK/model" t1.json --checkpoint-every 5 --max-steps 12 >/dev/null
step "the same command without --max-steps: resumes from the newest checkpoint and finishes"
train "$WORK/model" t2.json >/dev/null
step "fp16 autocast + GradScaler"
train "$WORK/model-fp16" t3.json --precision "${FP16_PRECISION:-fp16}" --max-steps 10 --resume never >/dev/null
step "torchrun DDP over $GPUS GPU(s)"
TRAIN_ARGS=(--shards "$WORK/shards" --out "$WORK/model-ddp" --arch "$ARCH" --epochs 2 --batch-size "$BATCH"
            --res-schedule "$RES" --workers "$WORKERS" --max-steps 10 --resume never --json "$WORK/t4.json")
$TORCHRUN --standalone --nproc-per-node "$GPUS" -m visionnode.components.train "${TRAIN_ARGS[@]}" >/dev/null

python3 - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
names = {"t1.json": "stopped at max-steps", "t2.json": "resumed to the end", "t3.json": "fp16 + GradScaler",
         "t4.json": "torchrun DDP"}
print(f"\n{'run':22s} {'status':10s} {'prec':5s} {'world':>5s} {'steps':>5s} {'resumed@':>8s} "
      f"{'img/s':>8s} {'top-1':>6s} {'loss first->last':>18s}")
for file, label in names.items():
    r = json.loads((work / file).read_text())
    losses = f"{r['initial_loss']:.3f}->{r['final_loss']:.3f}" if r.get("initial_loss") is not None else "-"
    print(f"{label:22s} {r['status']:10s} {r['precision']:5s} {r['world_size']:5d} {r['steps']:5d} "
          f"{str(r['resumed_step']):>8s} {r['images_per_second'] or 0:8.1f} {r['top1'] or 0:6.2f} {losses:>18s}")
t1, t2 = (json.loads((work / f).read_text()) for f in ("t1.json", "t2.json"))
assert t1["status"] == "max_steps" and t2["status"] == "completed", "stop/resume did not end as expected"
assert t2["resumed_step"] == t1["steps"], f"resumed at {t2['resumed_step']}, expected {t1['steps']}"
print("OK: stop at max-steps, resume from the checkpoint, fp16 and DDP runs all finished")
PY
