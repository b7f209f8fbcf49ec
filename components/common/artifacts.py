"""The contract between phases: the files each phase's output artifact holds, as typed objects.

shard     -> ShardManifest   (`manifest.json` beside the `.beton` files)
transfer  -> ShardManifest   (same schema; every shard also has `uri`, and `base_uri` is set)
train     -> ModelBundle     (`weights.pt` state_dict + `model.json`)
quantize  -> InferenceModel  (`model.xml`/`model.bin` OpenVINO IR, `model.onnx`, `model.json`)
deploy    -> Endpoint        (artifact metadata: model name, version, URLs)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionnode.components.common.adapters.declared import setting
from visionnode.components.common.errors import DataError, IntegrityError
from visionnode.components.common.jsonio import read_json, write_json
from visionnode.components.common.storage.s3 import parse_s3_uri

# torchvision's ImageNet normalisation (RGB, after scaling to 0..1). Kept here, not in model.py, so that
# reading
# artifacts never imports torch (the transfer CLI starts seconds faster).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MANIFEST_FILE = "manifest.json"
MODEL_METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
SHARDS_FORMAT = "visionnode.shards/v1"
MODEL_FORMAT = "visionnode.model/v1"
INFERENCE_FORMAT = "visionnode.inference/v1"


def data_digest_setting() -> Any:
    """The `data_digest` setting of every phase that reads the data or shards made from it (in the pipeline
    the fingerprint step feeds it, so it is no pipeline parameter)."""
    return setting("", "Refuse data whose fingerprint (`visionnode data fingerprint`) is not this; empty: "
                   "not checked.", pipeline=False)


@dataclass
class ClassIndex:
    """Class index = position of the wnid in the sorted wnid list (as torchvision's ImageFolder)."""

    wnids: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.wnids) != len(self.names):
            raise DataError(f"class index has {len(self.wnids)} wnids but {len(self.names)} names")

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


@dataclass
class ShardInfo:
    file: str                       # file name relative to the shard dir
    split: str                      # "train" or "val"
    count: int                      # images in the shard
    bytes: int
    sha256: str
    class_histogram: dict[int, int]  # class index -> images
    uri: str | None = None          # set by transfer

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShardInfo":
        data = dict(data)
        data["class_histogram"] = {int(k): int(v) for k, v in data.get("class_histogram", {}).items()}
        return cls(**data)


@dataclass
class SkippedFile:
    path: str
    reason: str


def describe_skipped(skipped: list[SkippedFile], root: str | Path, shown: int = 3) -> str:
    """The first few unreadable files and why, relative to the dataset root, for a one-line error."""
    def relative(path: str) -> str:
        return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path

    listed = "; ".join(f"{relative(s.path)}: {s.reason}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{listed}{more}"


@dataclass
class ShardManifest:
    classes: ClassIndex
    shards: list[ShardInfo]
    settings: dict[str, Any]                    # what determines the bytes (ShardConfig.settings())
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    base_uri: str | None = None                 # where the shards live in the store (shard or transfer)
    data_digest: str | None = None              # fingerprint of the raw data listing they were made from
    format: str = SHARDS_FORMAT

    def check_made_from(self, data_digest: str) -> None:
        """These shards must come from the run's data (its fingerprint), when both are known."""
        if data_digest and self.data_digest and data_digest != self.data_digest:
            raise IntegrityError(f"the shards under {self.base_uri} were made from data {self.data_digest}, "
                                 f"not this run's {data_digest}", "re-run the pipeline from the shard step")

    def content_digest(self) -> str:
        """What a model trained on these shards depends on: the class index and every shard's bytes."""
        digest = hashlib.sha256("\n".join(self.classes.wnids).encode())
        for shard in sorted(self.shards, key=lambda s: s.file):
            digest.update(f"\n{shard.file}\t{shard.sha256}".encode())
        return digest.hexdigest()[:16]

    def shards_for(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    def images_in(self, split: str) -> int:
        return sum(s.count for s in self.shards_for(split))

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def save(self, directory: str | Path) -> Path:
        return write_json(Path(directory) / MANIFEST_FILE, self)

    @classmethod
    def load(cls, path: str | Path) -> "ShardManifest":
        path = Path(path)
        if str(path).startswith("s3:"):
            parse_s3_uri(str(path))  # `s3:/x` and the like: say how an S3 URI is written
        if path.is_dir():
            path = path / MANIFEST_FILE
        if not path.is_file():
            raise DataError(f"no shard manifest at {path}",
                            "run `visionnode shard --data DATASET --out DIR` first and pass that DIR (or its "
                            "s3:// copy from `visionnode transfer upload`)")
        data = _read_format(path, SHARDS_FORMAT, "shard manifest", "point at the output directory of "
                            "`visionnode shard`")
        return cls(
            classes=ClassIndex(**data["classes"]),
            shards=[ShardInfo.from_dict(s) for s in data["shards"]],
            settings=data.get("settings", {}),
            skipped=[SkippedFile(**s) for s in data.get("skipped", [])],
            empty_classes=list(data.get("empty_classes", [])),
            base_uri=data.get("base_uri"),
            data_digest=data.get("data_digest"),
        )


@dataclass
class Preprocessing:
    """How a model expects its pixels: resize/crop size, normalisation (RGB, 0..1 scale before mean/std)."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class ModelMetadata:
    """What `train` writes beside the weights so that quantize and deploy never guess."""

    arch: str
    num_classes: int
    classes: ClassIndex
    preprocessing: Preprocessing
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    registered_model: str = ""     # its MLflow registered model version, 'name/version' ('' = not registered)
    format: str = MODEL_FORMAT

    def save(self, directory: str | Path) -> Path:
        return write_json(Path(directory) / MODEL_METADATA_FILE, self)

    @classmethod
    def load(cls, directory: str | Path) -> "ModelMetadata":
        data = _read_format(Path(directory) / MODEL_METADATA_FILE, MODEL_FORMAT, "model",
                            "point --model at the output directory of `visionnode train`")
        return cls(
            arch=data["arch"], num_classes=data["num_classes"], classes=ClassIndex(**data["classes"]),
            preprocessing=_preprocessing(data["preprocessing"]), metrics=data.get("metrics", {}),
            training=data.get("training", {}), registered_model=data.get("registered_model", ""),
        )


@dataclass
class TensorSpec:
    name: str
    shape: list[int]   # -1 for the dynamic batch dimension
    dtype: str         # numpy dtype name, e.g. "uint8", "float32"
    layout: str = ""   # "NHWC" for images


@dataclass
class InferenceMetadata:
    """What `quantize` writes beside the OpenVINO IR: deploy reads input/output specs and labels from it."""

    arch: str
    precision: str                 # "int8" or "fp32"
    input: TensorSpec
    output: TensorSpec
    classes: ClassIndex
    preprocessing: Preprocessing   # already folded into the graph; kept to document what the graph does
    ir_xml: str = "model.xml"
    onnx: str | None = "model.onnx"
    accuracy: dict[str, float] = field(default_factory=dict)
    source_model: str = ""         # the FP32 registered version it came from, 'name/version' ('' = none)
    format: str = INFERENCE_FORMAT

    def save(self, directory: str | Path) -> Path:
        return write_json(Path(directory) / MODEL_METADATA_FILE, self)

    @classmethod
    def load(cls, directory: str | Path) -> "InferenceMetadata":
        data = _read_format(Path(directory) / MODEL_METADATA_FILE, INFERENCE_FORMAT, "inference model",
                            "point --model at the output directory of `visionnode quantize`")
        return cls(
            arch=data["arch"], precision=data["precision"], input=TensorSpec(**data["input"]),
            output=TensorSpec(**data["output"]), classes=ClassIndex(**data["classes"]),
            preprocessing=_preprocessing(data["preprocessing"]), ir_xml=data.get("ir_xml", "model.xml"),
            onnx=data.get("onnx"), accuracy=data.get("accuracy", {}),
            source_model=data.get("source_model", ""),
        )


def _preprocessing(data: dict[str, Any]) -> Preprocessing:
    return Preprocessing(input_size=data["input_size"], resize_size=data["resize_size"],
                         mean=tuple(data["mean"]), std=tuple(data["std"]))


def check_shard_source(source: str) -> None:
    """Fail fast on shards that cannot be read:
    a malformed s3 URI, or a local dir without a shard manifest."""
    if not str(source).startswith("s3://"):
        ShardManifest.load(source)
    else:
        parse_s3_uri(source)


def _read_format(path: Path, expected: str, what: str, hint: str) -> dict[str, Any]:
    """The JSON document at `path`, refused unless it declares the `expected` format."""
    data = read_json(path)
    if data.get("format") != expected:
        raise DataError(f"{path} is not a VisionNode {what} (format={data.get('format')!r})", hint)
    return data
