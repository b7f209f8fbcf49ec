"""Helpers for the deploy/benchmark tests: a small OpenVINO model in the quantize output format, and a
python-backend model whose service time the test controls (to cross-check the load generator).

The small model is used when tests/quantize_fixtures.py (`int8_model`) is not available yet; it has the
exact contract of a quantize output: uint8 NHWC [N, S, S, 3] in, float32 logits out, model.json.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visionnode.components.common.artifacts import ClassIndex, InferenceMetadata, Preprocessing, TensorSpec
from visionnode.components.common.training.model import IMAGENET_MEAN, IMAGENET_STD


class _TinyServingNet(nn.Module):
    """uint8 NHWC -> logits, normalisation folded in, like quantize's ServingModel."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, classes)
        self.register_buffer("shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("scale", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return self.head(self.features((x - self.shift) / self.scale))


def make_small_openvino_model(out: Path, size: int = 32, classes: int = 6, seed: int = 0) -> Path:
    """Write model.xml/.bin + model.json (InferenceMetadata) of a small random CNN; returns `out`."""
    torch.manual_seed(seed)
    return save_openvino_model(_TinyServingNet(classes).eval(), out, size, classes)


class BrightnessClassifier(nn.Module):
    """uint8 NHWC -> logits: class c for an image whose mean pixel is nearest `level(mapping[c])`. With the
    identity mapping it labels `labelled_images` perfectly; another mapping gets exactly the classes it keeps
    right (a model whose top-1 the test knows in advance)."""

    def __init__(self, mapping: list[int]) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor([float(level(m)) for m in mapping]).view(1, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = images.to(torch.float32).mean(dim=(1, 2, 3)).view(-1, 1)
        return -(brightness - self.levels).abs()


def level(label: int) -> int:
    return 20 + 35 * label


def labelled_images(per_class: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of uniform brightness level(label) (with a little noise), and their labels."""
    labels = np.repeat(np.arange(classes), per_class)
    noise = np.random.default_rng(5).integers(-3, 4, (len(labels), size, size, 3))
    images = np.clip(np.array([level(c) for c in labels])[:, None, None, None] + noise, 0, 255)
    return images.astype(np.uint8), labels.astype(np.int64)


def make_brightness_model(out: Path, mapping: list[int], size: int = 32,
                          names: list[str] | None = None) -> Path:
    return save_openvino_model(BrightnessClassifier(mapping).eval(), out, size, len(mapping), names)


def class_names(classes: int) -> list[str]:
    return [f"class {i}" for i in range(classes)]


def save_openvino_model(net: nn.Module, out: Path, size: int, classes: int,
                        names: list[str] | None = None) -> Path:
    """A torch module (uint8 NHWC in, logits out) as an OpenVINO IR + model.json, as quantize writes them;
    its class list is `names` (default: class_names)."""
    import openvino as ov

    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    ov_model = ov.convert_model(net, example_input=example, input=[([-1, size, size, 3], ov.Type.u8)])
    ov_model.inputs[0].get_tensor().set_names({"images"})
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(out / "model.xml"))
    wnids = [f"n{i:08d}" for i in range(classes)]
    InferenceMetadata(
        arch="tinycnn", precision="fp32",
        input=TensorSpec("images", [-1, size, size, 3], "uint8", "NHWC"),
        output=TensorSpec("logits", [-1, classes], "float32"),
        classes=ClassIndex(wnids, names or class_names(classes)),
        preprocessing=Preprocessing(input_size=size, resize_size=size), onnx=None,
    ).save(out)
    return out


SLEEP_MODEL_PY = '''
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Sleeps `sleep_ms` per execute() call (one call serves every request Triton batched into it)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.sleep_s = float(config["parameters"]["sleep_ms"]["string_value"]) / 1000.0
        self.classes = int(config["output"][0]["dims"][-1])

    def execute(self, requests):
        time.sleep(self.sleep_s)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            logits = np.zeros((x.shape[0], self.classes), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return responses
'''


def write_sleep_model(repo: Path, name: str, sleep_ms: float, size: int, config: str | None = None) -> None:
    """A python-backend model whose service time is `sleep_ms` per execute(); by default max_batch_size 0
    and one instance (requests served strictly one after another). `config` replaces the config.pbtxt
    (it must declare a `sleep_ms` parameter)."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(SLEEP_MODEL_PY)
    (repo / name / "config.pbtxt").write_text(config or f'''name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "images" data_type: TYPE_UINT8 dims: [ -1, {size}, {size}, 3 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ -1, 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters: {{ key: "sleep_ms" value: {{ string_value: "{sleep_ms}" }} }}
''')


@dataclass(frozen=True)
class ServerCounts:
    """What Triton itself counted for one model (its statistics API), summed over loaded versions."""

    requests: int        # answered successfully
    failures: int        # refused or failed (queue full, queue timeout, bad input)
    request_ns: int      # time the successful requests spent inside Triton, in all
    queue_ns: int        # ... of which waiting in the scheduler's queue
    compute_ns: int      # ... of which in the model's execute()
    inferences: int      # batch rows executed (images)
    executions: int      # execute() calls (batches)

    def __sub__(self, earlier: ServerCounts) -> ServerCounts:
        return ServerCounts(*(getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)))


def server_counts(http_url: str, model: str) -> ServerCounts:
    from visionnode.components.common.serving.triton import triton_http_client

    totals = dict.fromkeys((f.name for f in fields(ServerCounts)), 0)
    for version in triton_http_client(http_url).get_inference_statistics(model)["model_stats"]:
        stats = version["inference_stats"]
        totals["requests"] += stats["success"]["count"]
        totals["failures"] += stats["fail"]["count"]
        totals["request_ns"] += stats["success"]["ns"]
        totals["queue_ns"] += stats["queue"]["ns"]
        totals["compute_ns"] += stats["compute_infer"]["ns"]
        totals["inferences"] += version["inference_count"]
        totals["executions"] += version["execution_count"]
    return ServerCounts(**totals)


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def serve_models(staging: Path, names: list[str], http_url: str, version: int = 1) -> None:
    """Publish `<staging>/<name>/` dirs into the repository the running Triton reads, and load them."""
    from visionnode.components.common.serving.triton import parse_repository, triton_http_client
    from visionnode.components.common.settings import resolve_endpoints
    from visionnode.components.deploy.publish import publish
    from visionnode.components.deploy.replicas import load_and_wait

    target = parse_repository(resolve_endpoints().triton_repository)
    publish(staging, target, names, version)
    client = triton_http_client(http_url, 120.0)
    for name in names:
        load_and_wait(client, name, version, 120.0)


def serve(config, scratch: Path):
    """deploy (stage the candidate) then promote it: what a pipeline run whose candidate proved itself does.
    Returns (deploy result, promotion result)."""
    from visionnode.components.common.jsonio import write_json
    from visionnode.components.deploy.deploy import deploy
    from visionnode.components.deploy.promote import PromoteConfig, promote

    staged = deploy(config)
    endpoint = write_json(scratch / f"{config.model_name}-v{staged.model_version}.json", staged)
    return staged, promote(PromoteConfig(endpoint=endpoint, model_dir=config.model_dir))


def optional_fixture(request, name: str):
    """Another area's session fixture when its module is there yet, else None (TEMPORARY fallback while the
    shard/quantize fixtures are being written in parallel); with CI=true a missing fixture fails the test."""
    import os

    import pytest

    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: fixture {name!r} is missing, so the test would check less", pytrace=False)
        return None
