"""Candidate vs champion: top-1 of both served models on the same labelled val images, through Triton.

Both answer from the same server(s) in the same run, so the comparison holds whatever data the champion was
trained or evaluated on before. A model of another input size gets the same images decoded at its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visionnode.components.common.data.samples import SampleImages, labelled_images


@dataclass
class TopOneComparison:
    images: int                     # labelled images each model answered (0: none to compare on)
    candidate_top1: float | None    # percent
    champion_top1: float | None     # percent; None when no champion is served


def served_top1(client, model: str, input_name: str, output_name: str, images: np.ndarray,
                labels: np.ndarray, batch: int = 8) -> float:
    """Top-1 (percent) of `model` as Triton serves it, over `images` with their `labels`."""
    import tritonclient.http as httpclient

    hits = 0
    for start in range(0, len(images), batch):
        part = np.ascontiguousarray(images[start:start + batch])
        tensor = httpclient.InferInput(input_name, list(part.shape), "UINT8")
        tensor.set_data_from_numpy(part)
        logits = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput(output_name)])
        hits += int((logits.as_numpy(output_name).argmax(1) == labels[start:start + batch]).sum())
    return 100.0 * hits / len(images)


def compare_top1(http_url: str, candidate: str, champion: str, shards: str | None, limit: int,
                 pool: SampleImages) -> TopOneComparison:
    """The candidate's and (when it serves) the champion's top-1 on up to `limit` labelled val images from
    `shards` (else on `pool`, when its images carry labels)."""
    from visionnode.components.benchmark.benchmark import input_spec
    from visionnode.components.common.serving.triton import ready_version, triton_http_client

    client = triton_http_client(http_url)
    champion_serves = bool(champion) and ready_version(client, champion) is not None
    figures: dict[str, float | None] = {}
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
        assert labelled.labels is not None
        figures[role] = served_top1(client, model, input_name, output_name, labelled.images, labelled.labels)
        count = len(labelled.images)
    return TopOneComparison(count, figures["candidate"], figures["champion"])


def _labelled(shards: str | None, limit: int, size: int, pool: SampleImages) -> SampleImages | None:
    if shards:
        return labelled_images(shards, limit, size)
    if pool.labels is not None and pool.images.shape[1] == size:
        return SampleImages(pool.images[:limit], pool.source, pool.labels[:limit])
    return None
