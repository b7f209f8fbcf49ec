"""A Triton model repository generated from a few parameters (config.pbtxt, labels.txt, version dirs).

Two layouts:
- the served one (python backend, runs everywhere including the embedded Triton, which ships only that
  backend): `<name>/` runs the OpenVINO IR on uint8 NHWC tensors, `<name>_jpeg/` takes encoded images,
  decodes them server-side and calls `<name>` (BLS), so one model instance and one batcher do the work;
- the native `openvino` backend variant for official Triton images (model.xml/.bin only), generated and
  validated as text but not served here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from visionnode.components.common.artifacts import InferenceMetadata, TensorSpec
from visionnode.components.common.errors import ConfigError, DataError
from visionnode.components.common.jsonio import atomic_write_text

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_PY = "model.py"
JPEG_SUFFIX = "_jpeg"
JPEG_INPUT = "image_bytes"
TENSOR_TEMPLATE = "triton_model.py.tmpl"
JPEG_TEMPLATE = "triton_jpeg_model.py.tmpl"
_TRITON_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                  "int32": "TYPE_INT32", "bytes": "TYPE_STRING"}


@dataclass
class ServingConfig:
    """The few knobs config.pbtxt is generated from."""

    max_batch_size: int = 16
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16])
    max_queue_delay_us: int = 3_000
    queue_timeout_us: int = 2_000_000     # a request waiting longer than this is rejected
    max_queue_size: int = 64              # requests beyond this are rejected at once (overload)
    # Two instances, not one: Triton 2.51 seems to wake its dynamic batcher for a new request only while an
    # instance waits for work (our reading of its source), so with one instance a request that lands just after
    # the previous response waits out the batcher's 500 ms idle timeout (measured: 5 of ~1,300 sequential
    # requests, 64 of 2,400 at concurrency 8; none with two; tests/test_deploy.py checks it).
    instances: int = 2
    ov_performance_hint: str = "THROUGHPUT"
    ov_num_streams: str = ""              # "": one stream per 4 cores of the serving machine
    ov_threads: int = 0                   # 0 lets OpenVINO use every core

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size={self.max_batch_size} must be at least 1")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size}")
        if not 0 <= self.max_queue_delay_us <= 100_000:
            raise ConfigError(f"max_queue_delay_us={self.max_queue_delay_us} is outside 0..100000",
                              "a longer delay only adds latency")
        if self.queue_timeout_us <= 0 or self.max_queue_size <= 0 or self.instances < 1:
            raise ConfigError("queue timeout, queue size and instance count must be positive")


def serving_input_spec(meta: InferenceMetadata) -> TensorSpec:
    """The model's input spec, checked against what the served model promises: uint8 NHWC [N, S, S, 3]."""
    spec = meta.input
    if spec.dtype != "uint8" or len(spec.shape) != 4 or spec.shape[3] != 3 or spec.shape[1] != spec.shape[2]:
        raise DataError(f"model input '{spec.name}' is {spec.dtype} {spec.shape}, not uint8 [N, S, S, 3]",
                        "deploy serves the output of `visionnode quantize` (uint8 NHWC images)")
    if spec.shape[1] <= 0:
        raise DataError(f"model input '{spec.name}' has no fixed image size ({spec.shape})",
                        "re-export the model with a fixed resolution")
    if meta.output.dtype != "float32" or len(meta.output.shape) != 2:
        raise DataError(f"model output '{meta.output.name}' is {meta.output.dtype} {meta.output.shape}, "
                        "not float32 logits [N, classes]")
    if meta.output.shape[1] not in (-1, meta.classes.num_classes):
        raise DataError(f"model output has {meta.output.shape[1]} classes but model.json names "
                        f"{meta.classes.num_classes}")
    return spec


def _dims(spec: TensorSpec) -> str:
    return ", ".join(str(d) for d in spec.shape[1:])


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def _batching(cfg: ServingConfig) -> str:
    preferred = ", ".join(str(b) for b in cfg.preferred_batch_sizes)
    return f"""dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {cfg.max_queue_delay_us}
  default_queue_policy {{
    timeout_action: REJECT
    default_timeout_microseconds: {cfg.queue_timeout_us}
    allow_timeout_override: true
    max_queue_size: {cfg.max_queue_size}
  }}
}}"""


def _output_block(meta: InferenceMetadata) -> str:
    return f"""output [
  {{
    name: "{meta.output.name}"
    data_type: TYPE_FP32
    dims: [ {meta.classes.num_classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]"""


def tensor_model_config(name: str, meta: InferenceMetadata, cfg: ServingConfig) -> str:
    params = {"ov_model_file": "model.xml", "ov_performance_hint": cfg.ov_performance_hint,
              "ov_num_streams": cfg.ov_num_streams, "ov_inference_num_threads": str(cfg.ov_threads)}
    comment = f"# Generated by `visionnode deploy`: {meta.arch} {meta.precision} (OpenVINO IR) on Triton's python backend."
    return _model_config(comment, name, "python", _image_input(meta), meta, cfg, _parameters(params))


def jpeg_model_config(name: str, meta: InferenceMetadata, cfg: ServingConfig) -> str:
    spec = serving_input_spec(meta)
    size = spec.shape[1]
    params = {"target_model": name, "target_input": spec.name, "target_output": meta.output.name,
              "input_size": str(size), "resize_size": str(meta.preprocessing.resize_size or size)}
    comment = (f"# Generated by `visionnode deploy`: encoded JPEG/PNG bytes in, decoded and centre-cropped to "
               f"{size}x{size},\n# then served by \"{name}\" (BLS call) so that both models share one OpenVINO "
               "instance and one batcher.")
    encoded_input = f"""  {{
    name: "{JPEG_INPUT}"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}"""
    return _model_config(comment, f"{name}{JPEG_SUFFIX}", "python", encoded_input, meta, cfg, _parameters(params))


def openvino_backend_config(name: str, meta: InferenceMetadata, cfg: ServingConfig) -> str:
    """The native `openvino` backend variant (official Triton images ship that backend)."""
    streams = cfg.ov_num_streams or "AUTO"
    params = (f'parameters: {{ key: "PERFORMANCE_HINT" value: {{ string_value: "{cfg.ov_performance_hint}" }} }}\n'
              f'parameters: {{ key: "NUM_STREAMS" value: {{ string_value: "{streams}" }} }}')
    comment = "# Generated by `visionnode deploy`: Triton's native OpenVINO backend (official Triton images)."
    return _model_config(comment, name, "openvino", _image_input(meta), meta, cfg, params)


def _image_input(meta: InferenceMetadata) -> str:
    spec = serving_input_spec(meta)
    return f"""  {{
    name: "{spec.name}"
    data_type: {_TRITON_DTYPES[spec.dtype]}
    format: FORMAT_NHWC
    dims: [ {_dims(spec)} ]
  }}"""


def _model_config(comment: str, name: str, backend: str, input_block: str, meta: InferenceMetadata,
                  cfg: ServingConfig, parameters: str) -> str:
    return f"""{comment}
name: "{name}"
backend: "{backend}"
max_batch_size: {cfg.max_batch_size}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
{input_block}
]
{_output_block(meta)}
{_batching(cfg)}
instance_group [ {{ count: {cfg.instances} kind: KIND_CPU }} ]
{parameters}
"""


def labels_text(meta: InferenceMetadata) -> str:
    """One class name per line, in class-index order (Triton's classification extension reads it)."""
    return "".join(name.replace("\n", " ").strip() + "\n" for name in meta.classes.names)


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's own protobuf schema (ModelConfig); None when unavailable."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise DataError(f"generated config.pbtxt does not parse as a Triton ModelConfig: {exc}") from None


def template_text(template: str) -> str:
    return resources.files("visionnode.components.deploy").joinpath(template).read_text(encoding="utf-8")


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass
class GeneratedModel:
    name: str
    directory: Path     # <repo>/<name>
    version: int
    config: str


def _write_model(repo: Path, name: str, version: int, config: str, labels: str,
                 files: dict[str, Path | str]) -> GeneratedModel:
    """Write `<repo>/<name>/{config.pbtxt, labels.txt, <version>/...}`; `files` maps target name -> source
    path (copied) or text (written)."""
    parse_config(config)
    model_dir = repo / name
    version_dir = model_dir / str(version)
    staging = model_dir / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for target, source in files.items():
        if isinstance(source, Path):
            shutil.copyfile(source, staging / target)
        else:
            (staging / target).write_text(source, encoding="utf-8")
    shutil.rmtree(version_dir, ignore_errors=True)
    staging.rename(version_dir)  # the version dir appears complete or not at all
    atomic_write_text(model_dir / LABELS_FILE, labels)
    atomic_write_text(model_dir / CONFIG_FILE, config)
    return GeneratedModel(name, model_dir, version, config)


def write_served_models(repo: Path, name: str, version: int, model_dir: Path, meta: InferenceMetadata,
                        cfg: ServingConfig) -> list[GeneratedModel]:
    """The python-backend tensor model and its JPEG front end, version `version`."""
    xml = model_dir / meta.ir_xml
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise DataError(f"{xml} (and its .bin) do not exist", "point --model at the output of `visionnode quantize`")
    labels = labels_text(meta)
    tensor_files: dict[str, Path | str] = {"model.xml": xml, "model.bin": xml.with_suffix(".bin"),
                                           "model.json": model_dir / "model.json",
                                           MODEL_PY: template_text(TENSOR_TEMPLATE)}
    return [
        _write_model(repo, name, version, tensor_model_config(name, meta, cfg), labels, tensor_files),
        _write_model(repo, name + JPEG_SUFFIX, version, jpeg_model_config(name, meta, cfg), labels,
                     {MODEL_PY: template_text(JPEG_TEMPLATE)}),
    ]


def write_openvino_backend_model(repo: Path, name: str, version: int, model_dir: Path, meta: InferenceMetadata,
                                 cfg: ServingConfig) -> GeneratedModel:
    xml = model_dir / meta.ir_xml
    return _write_model(repo, name, version, openvino_backend_config(name, meta, cfg), labels_text(meta),
                        {"model.xml": xml, "model.bin": xml.with_suffix(".bin")})
