"""Which classes a model mixes up: the confusion matrix on the val images, and the views people read.

With at most MAX_MATRIX_CLASSES classes the whole matrix is readable (KFP's ClassificationMetrics view, a
heatmap in MLflow); with more (ImageNet's 1,000), the most-confused class pairs as a Markdown table are.
Train and quantize both write `confusion_matrix.json` beside their model and log the views to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionnode.components.common.jsonio import read_json, write_json
from visionnode.components.common.tracking import Tracker, save_figure

CONFUSION_FILE = "confusion_matrix.json"
CONFUSED_PAIRS_FILE = "confused_pairs.md"
CONFUSION_PLOT = "confusion_matrix.png"
MAX_MATRIX_CLASSES = 50
TOP_PAIRS = 20


@dataclass
class Confusion:
    names: list[str]           # class names, in class-index order
    matrix: np.ndarray         # int64 [true class, predicted class] image counts

    @classmethod
    def empty(cls, names: list[str]) -> Confusion:
        return cls(list(names), np.zeros((len(names), len(names)), dtype=np.int64))

    def add(self, labels: np.ndarray, predictions: np.ndarray) -> None:
        cells = (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64))
        np.add.at(self.matrix, cells, 1)

    @property
    def readable_as_matrix(self) -> bool:
        return len(self.names) <= MAX_MATRIX_CLASSES

    def most_confused(self, top: int = TOP_PAIRS) -> list[tuple[str, str, int, float]]:
        """(true class, predicted class, images, share of the true class's images), most images first."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:top]
        totals = self.matrix.sum(axis=1)
        pairs = []
        for flat in order:
            true, predicted = divmod(int(flat), len(self.names))
            if off[true, predicted] == 0:
                break
            pairs.append((self.names[true], self.names[predicted], int(off[true, predicted]),
                          float(off[true, predicted] / totals[true])))
        return pairs

    def markdown(self, title: str, top: int = TOP_PAIRS) -> str:
        images, right = int(self.matrix.sum()), int(np.trace(self.matrix))
        lines = [f"## {title}: most-confused class pairs", "",
                 f"{images} val images, {len(self.names)} classes, "
                 f"top-1 {100 * right / max(images, 1):.2f} %.",
                 ""]
        pairs = self.most_confused(top)
        if not pairs:
            return "\n".join([*lines, "No image was mistaken for another class.", ""])
        lines += ["| true class | predicted as | images | share of the class |", "|---|---|---:|---:|"]
        lines += [f"| {t} | {p} | {n} | {100 * share:.1f} % |" for t, p, n, share in pairs]
        return "\n".join(lines) + "\n"

    def save(self, directory: Path) -> Path:
        return write_json(Path(directory) / CONFUSION_FILE,
                          {"names": self.names, "matrix": self.matrix.tolist()})

    @classmethod
    def load(cls, directory: Path) -> Confusion:
        data = read_json(Path(directory) / CONFUSION_FILE)
        return cls(list(data["names"]), np.asarray(data["matrix"], dtype=np.int64))


def write_confusion(confusion: Confusion, directory: Path, title: str, tracker: Tracker | None) -> None:
    """confusion_matrix.json + confused_pairs.md (+ a heatmap PNG when readable) into `directory`, all logged
    to the MLflow run."""
    from visionnode.components.common.jsonio import atomic_write_text

    files = [confusion.save(directory), atomic_write_text(Path(directory) / CONFUSED_PAIRS_FILE,
                                                          confusion.markdown(title))]
    if tracker is not None:
        for path in files:
            tracker.log_artifact(path, artifact_path="confusion")
    if confusion.readable_as_matrix:
        import matplotlib.pyplot as plt

        figure = _heatmap(confusion, title)
        save_figure(figure, Path(directory) / CONFUSION_PLOT, tracker)
        plt.close(figure)


def _heatmap(confusion: Confusion, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(confusion.names)
    side = min(12.0, 3.0 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion.matrix, cmap="Blues")
    ax.set_xticks(range(n), confusion.names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), confusion.names, fontsize=7)
    if n <= 20:
        for (true, predicted), count in np.ndenumerate(confusion.matrix):
            if count:
                ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}: confusion matrix")
    return fig
