"""FP32 vs INT8 on the val shards: top-1/top-5 of each, top-1 agreement between them, the drop in points."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from visionnode.components.common.confusion import Confusion
from visionnode.components.common.progress import progress_bar

Logits = Callable[[np.ndarray], np.ndarray]


@dataclass
class AccuracyReport:
    """Percentages (0..100); `top1_drop_pts` = FP32 top-1 - INT8 top-1 in percentage points."""

    images: int
    fp32_top1: float
    fp32_top5: float
    int8_top1: float
    int8_top5: float
    top1_agreement: float     # share of images where FP32 and INT8 predict the same class
    top1_drop_pts: float
    fp32_only_right: int = 0  # images FP32 gets right and INT8 wrong (the paired test's discordant pairs)
    int8_only_right: int = 0  # images INT8 gets right and FP32 wrong
    top5_k: int = 5           # k actually used (min(5, classes))
    median_margin: float = 0.0  # FP32 logit gap between its first and second class, median over images
    flip_max_margin: float = 0.0  # the largest such gap among images where INT8 answers differently

    @property
    def points_per_image(self) -> float:
        """How coarse the figures are: one image changes top-1 by this many points."""
        return 100.0 / self.images if self.images else float("nan")

    def metrics(self) -> dict[str, float]:
        return {"fp32_top1": self.fp32_top1, "fp32_top5": self.fp32_top5, "int8_top1": self.int8_top1,
                "int8_top5": self.int8_top5, "top1_agreement": self.top1_agreement,
                "top1_drop_pts": self.top1_drop_pts, "eval_images": float(self.images),
                "fp32_only_right": float(self.fp32_only_right),
                "int8_only_right": float(self.int8_only_right),
                "median_margin": self.median_margin, "flip_max_margin": self.flip_max_margin}


class _Tally:
    def __init__(self, k: int) -> None:
        self.k = k
        self.top1 = 0
        self.topk = 0

    def add(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tally a batch; returns each image's top-1 class and whether it is right."""
        ranked = np.argsort(-logits, axis=1)[:, : self.k]
        right = ranked[:, 0] == labels
        self.top1 += int(right.sum())
        self.topk += int((ranked == labels[:, None]).any(axis=1).sum())
        return ranked[:, 0], right


def compare_accuracy(fp32: Logits, int8: Logits, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                     num_classes: int, total: int | None = None,
                     int8_confusion: Confusion | None = None) -> AccuracyReport:
    """Run both models over the same uint8 batches and tally top-1/top-k and their agreement (and the INT8
    model's confusion matrix into `int8_confusion`, when given)."""
    k = min(5, num_classes)
    ref, quant = _Tally(k), _Tally(k)
    seen = agree = fp32_only = int8_only = 0
    margins: list[np.ndarray] = []
    flip_margins: list[np.ndarray] = [np.zeros(0)]
    with progress_bar(total, "evaluating FP32 vs INT8") as advance:
        for images, labels in batches:
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
            reference = fp32(images)
            ref_class, ref_right = ref.add(reference, labels)
            quant_class, quant_right = quant.add(int8(images), labels)
            same = ref_class == quant_class
            if int8_confusion is not None:
                int8_confusion.add(labels, quant_class)
            agree += int(same.sum())
            fp32_only += int((ref_right & ~quant_right).sum())
            int8_only += int((quant_right & ~ref_right).sum())
            margins.append(top2_margin(reference))
            flip_margins.append(margins[-1][~same])
            seen += len(labels)
            advance(len(labels))
    if seen == 0:
        from visionnode.components.common.errors import DataError

        raise DataError("the val shards yielded no images", "check the val split of the shard manifest")

    def pct(count: int) -> float:
        return 100.0 * count / seen

    return AccuracyReport(images=seen, fp32_top1=pct(ref.top1), fp32_top5=pct(ref.topk),
                          int8_top1=pct(quant.top1), int8_top5=pct(quant.topk), top1_agreement=pct(agree),
                          top1_drop_pts=pct(ref.top1) - pct(quant.top1), fp32_only_right=fp32_only,
                          int8_only_right=int8_only, top5_k=k,
                          median_margin=float(np.median(np.concatenate(margins))),
                          flip_max_margin=float(np.concatenate(flip_margins).max(initial=0.0)))


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per image: the gap between the largest and second-largest logit (how decided the answer is)."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]).astype(np.float64)
