"""Candidate vs champion: top-1 of both served models on the same labelled val images, through Triton.

Both answer from the same server(s) in the same run, so the comparison holds whatever data the champion was
trained or evaluated on before. An answer counts by the class name the model serves it under (Triton's
classification extension reads each model's labels.txt), so a champion trained on another class list (a class
added or dropped, which moves the indices) is judged on these images' classes, not on index coincidences. A
model none of whose answers names one of these classes is judged by index: its labels follow another naming
(wnids where the images have descriptions, or none). A model of another input size gets the same images
decoded at its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visionnode.components.common.data.samples import SampleImages, labelled_images
from visionnode.components.common.serving.triton import served_label


@dataclass
class TopOneComparison:
    images: int                     # labelled images each model answered (0: none to compare on)
    candidate_top1: float | None    # percent
    champion_top1: float | None     # percent; None when no champion is served
    champion_by_index: bool = False  # its labels name none of the images' classes (count_right)

    @property
    def note(self) -> str:
        """How the champion was counted, when it was not by class name."""
        return ("the champion's labels name none of these classes, so its answers were counted by index"
                if self.champion_by_index else "")


def served_top1(client, model: str, input_name: str, output_name: str, labelled: SampleImages,
                batch: int = 8) -> tuple[float, bool]:
    """Top-1 (percent) of `model` as Triton serves it, over `labelled`'s images, and whether it was counted
    by index although the images have class names (count_right's rule)."""
    import tritonclient.http as httpclient

    assert labelled.labels is not None
    answers: list[str] = []
    for start in range(0, len(labelled.images), batch):
        part = np.ascontiguousarray(labelled.images[start:start + batch])
        tensor = httpclient.InferInput(input_name, list(part.shape), "UINT8")
        tensor.set_data_from_numpy(part)
        served = client.infer(model, [tensor],
                              outputs=[httpclient.InferRequestedOutput(output_name, class_count=1)])
        answers += [top.decode() for top in served.as_numpy(output_name)[:, 0]]
    names = [served_label(name) for name in labelled.class_names] if labelled.class_names else None
    right, by_index = count_right(answers, [int(label) for label in labelled.labels], names)
    return 100.0 * right / len(answers), by_index


def count_right(answers: list[str], labels: list[int], names: list[str] | None) -> tuple[int, bool]:
    """How many of Triton's classification answers (`score:index[:label]`, one per image) name the image's
    class, and whether they were counted by index although `names` (the images' class list as served labels)
    was given: by name (is_right) when at least one answer names a class of `names`, else by index (the
    model's labels follow another naming, or it has none)."""
    served = {answer.split(":", 2)[2] for answer in answers if answer.count(":") >= 2}
    by_name = names if names is not None and served & set(names) else None
    right = sum(is_right(answer, label, by_name) for answer, label in zip(answers, labels))
    return right, names is not None and by_name is None


def is_right(top: str, label: int, names: list[str] | None) -> bool:
    """Whether Triton's classification answer `top` (`score:index[:label]`) names class `label` of `names`
    (the images' class list as served labels): by name where both sides have one, by index otherwise, and by
    both where the name is not unique in the list (ImageNet has two classes called crane), so that a shared
    name never counts a confusion as right."""
    _, index, *served = top.split(":", 2)
    if not served or names is None:
        return int(index) == label
    return served[0] == names[label] and (names.count(names[label]) == 1 or int(index) == label)


def compare_top1(http_url: str, candidate: str, champion: str, shards: str | None, limit: int,
                 pool: SampleImages) -> TopOneComparison:
    """The candidate's and (when it serves) the champion's top-1 on up to `limit` labelled val images from
    `shards` (else on `pool`, when its images carry labels)."""
    from visionnode.components.benchmark.benchmark import input_spec
    from visionnode.components.common.serving.triton import ready_version, triton_http_client

    client = triton_http_client(http_url)
    champion_serves = bool(champion) and ready_version(client, champion) is not None
    figures: dict[str, float | None] = {}
    by_index: dict[str, bool] = {}
    count = 0
    for role, model in (("candidate", candidate), ("champion", champion if champion_serves else "")):
        if not model:
            figures[role] = None
            continue
        input_name, output_name, size = input_spec(http_url, model)
        labelled = _labelled(shards, limit, size, pool)
        if labelled is None:
            figures[role] = None
            continue
        figures[role], by_index[role] = served_top1(client, model, input_name, output_name, labelled)
        count = len(labelled.images)
    return TopOneComparison(count, figures["candidate"], figures["champion"], by_index.get("champion", False))


def _labelled(shards: str | None, limit: int, size: int, pool: SampleImages) -> SampleImages | None:
    if shards:
        return labelled_images(shards, limit, size)
    if pool.labels is not None and pool.images.shape[1] == size:
        return SampleImages(pool.images[:limit], pool.source, pool.labels[:limit], pool.class_names)
    return None
