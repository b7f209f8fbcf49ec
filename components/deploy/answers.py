"""Does Triton answer like the model? The same images through Triton and through local OpenVINO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionnode.components.common.artifacts import InferenceMetadata
from visionnode.components.common.data.samples import encode_png, sample_images
from visionnode.components.common.errors import IntegrityError
from visionnode.components.common.serving.triton import JPEG_SUFFIX
from visionnode.components.deploy.repository import JPEG_INPUT


@dataclass
class AnswerCheck:
    images: int
    source: str
    top1_agreement: float          # tensor model vs local OpenVINO
    jpeg_top1_agreement: float     # PNG bytes through <name>_jpeg vs local OpenVINO
    max_abs_logit_diff: float
    classification_label: str      # Triton's classification extension answer for the first image


def local_logits(xml: Path, images: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    outputs = []
    for start in range(0, len(images), 8):
        request.infer({0: images[start:start + 8]})
        outputs.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(outputs)


def _agreement(reference: np.ndarray, served: np.ndarray) -> float:
    """Fraction of images whose served top-1 is the local top-1 (a near-tie within 1e-3 of the logit range
    counts as agreeing: INT8 kernels may round differently per batch size)."""
    local_top, served_top = reference.argmax(1), served.argmax(1)
    spread = np.maximum(reference.max(1) - reference.min(1), 1e-6)
    gap = reference[np.arange(len(reference)), local_top] - reference[np.arange(len(reference)), served_top]
    return float(np.mean((local_top == served_top) | (gap <= 1e-3 * spread)))


def _infer_http(client, model: str, inputs: list, output: str, class_count: int = 0) -> object:
    import tritonclient.http as httpclient

    return client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput(output,
                                                                                class_count=class_count)])


def served_logits(client, name: str, meta: InferenceMetadata, images: np.ndarray, batch: int) -> np.ndarray:
    import tritonclient.http as httpclient

    outputs = []
    for start in range(0, len(images), batch):
        part = np.ascontiguousarray(images[start:start + batch])
        tensor = httpclient.InferInput(meta.input.name, list(part.shape), "UINT8")
        tensor.set_data_from_numpy(part)
        outputs.append(_infer_http(client, name, [tensor], meta.output.name).as_numpy(meta.output.name))
    return np.concatenate(outputs)


def served_jpeg_logits(client, name: str, meta: InferenceMetadata, images: np.ndarray,
                       batch: int) -> np.ndarray:
    import tritonclient.http as httpclient

    outputs = []
    for start in range(0, len(images), batch):
        encoded = np.array([[encode_png(im)] for im in images[start:start + batch]], dtype=np.object_)
        tensor = httpclient.InferInput(JPEG_INPUT, list(encoded.shape), "BYTES")
        tensor.set_data_from_numpy(encoded)
        outputs.append(_infer_http(client, name, [tensor], meta.output.name).as_numpy(meta.output.name))
    return np.concatenate(outputs)


def classification_label(client, name: str, meta: InferenceMetadata, image: np.ndarray) -> tuple[int, str]:
    """Triton's classification extension for one image: (class index, label from labels.txt)."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(meta.input.name, [1, *image.shape], "UINT8")
    tensor.set_data_from_numpy(image[None])
    answer = _infer_http(client, name, [tensor], meta.output.name, class_count=1).as_numpy(meta.output.name)
    entry = answer.reshape(-1)[0]
    _, index, label = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)
    return int(index), label


@dataclass
class Reference:
    """Sample images and local OpenVINO's logits for them: computed once, compared with every replica."""

    meta: InferenceMetadata
    images: np.ndarray
    source: str
    logits: np.ndarray


def local_reference(model_dir: Path, meta: InferenceMetadata, shards: str | None, count: int) -> Reference:
    samples = sample_images(shards, count, meta.input.shape[1])
    return Reference(meta, samples.images, samples.source, local_logits(Path(model_dir) / meta.ir_xml,
                                                                        samples.images))


def check_answers(client, url: str, name: str, reference: Reference, max_batch_size: int) -> AnswerCheck:
    """Triton's answers (the server at `url`) for `name` (tensor input) and `name`_jpeg (PNG bytes) against
    local OpenVINO's."""
    meta, images, logits = reference.meta, reference.images, reference.logits
    batch = min(8, max_batch_size)
    served = served_logits(client, name, meta, images, batch)
    jpeg = served_jpeg_logits(client, name + JPEG_SUFFIX, meta, images, batch)
    index, label = classification_label(client, name, meta, images[0])
    check = AnswerCheck(images=len(images), source=reference.source,
                        top1_agreement=_agreement(logits, served),
                        jpeg_top1_agreement=_agreement(logits, jpeg),
                        max_abs_logit_diff=float(np.abs(logits - served).max()),
                        classification_label=f"{index}:{label}")
    where = f"'{name}' on Triton at {url}"
    if check.top1_agreement < 1.0 or check.jpeg_top1_agreement < 1.0:
        raise IntegrityError(f"{where}: Triton's top-1 differs from local OpenVINO on the same images "
                             f"(tensor {check.top1_agreement:.0%}, jpeg {check.jpeg_top1_agreement:.0%} "
                             "agree)",
                             "the served files differ from --model; redeploy")
    expected = int(logits[0].argmax())
    if index != expected or label != meta.classes.names[index]:
        raise IntegrityError(f"{where}: Triton's classification answer '{index}:{label}' does not match "
                             f"class {expected} '{meta.classes.names[expected]}'",
                             "labels.txt is out of step with model.json; redeploy")
    return check
