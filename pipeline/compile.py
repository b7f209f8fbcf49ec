"""Compile the DAG to KFP IR YAML, and read pipeline parameters from the compiled spec."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import yaml

from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import atomic_write_bytes

_PARAMETER_TYPES = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool}


def compile_pipeline(out: str | Path) -> Path:
    """Write the pipeline's IR YAML atomically. The output is byte-for-byte reproducible."""
    from kfp import compiler

    from visionnode.pipeline.pipeline import visionnode_pipeline

    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{out} does not end in .yaml", "KFP reads pipeline packages as .yaml files")
    with tempfile.TemporaryDirectory() as scratch:
        package = Path(scratch) / "pipeline.yaml"
        compiler.Compiler().compile(visionnode_pipeline, package_path=str(package))
        return atomic_write_bytes(out, package.read_bytes())


def load_compiled(path: str | Path) -> dict[str, Any]:
    """The pipeline spec with the Kubernetes platform spec (the package's second YAML document) merged in."""
    spec: dict[str, Any] = {}
    for document in yaml.safe_load_all(Path(path).read_text()):
        spec.update(document or {})
    return spec


@functools.cache  # the code does not change within a process: compile once (~1 s), however many ask
def compiled_spec() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        return load_compiled(compile_pipeline(Path(scratch) / "pipeline.yaml"))


CHANNEL_PREFIX = "pipelinechannel--"   # how a nested DAG (exit handler, condition) names what it is fed


def dag_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the compiled pipeline by name: the root DAG's and those of the DAGs it nests (the exit
    handler around the steps, the promotion conditions)."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def fed_parameter(source: dict[str, Any]) -> str | None:
    """The pipeline parameter a task input is fed from (None: another task's output or a constant)."""
    name = source.get("componentInputParameter")
    return name.removeprefix(CHANNEL_PREFIX) if name else None


def parameter_types(spec: dict[str, Any]) -> dict[str, type]:
    """Pipeline parameter name -> Python type, from the compiled root input definitions."""
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: _PARAMETER_TYPES[p["parameterType"]] for name, p in params.items()}


def parameter_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """Pipeline parameter name -> its default as the Python type (the IR stores every number as a float)."""
    types = parameter_types(spec)
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: types[name](p["defaultValue"]) for name, p in params.items() if "defaultValue" in p}


def _nearest(name: str, known: list[str]) -> str:
    """What a mistyped name likely meant: a parameter ending in it (a setting without its phase) or one
    spelled alike; else every known parameter."""
    import difflib

    likely = sorted(k for k in known if k.endswith(f"_{name}")) or difflib.get_close_matches(name, known, n=3)
    if likely:  # the closest first
        return f"did you mean {' or '.join(likely)}?"
    return f"known parameters: {', '.join(sorted(known))}"


def parse_params(pairs: list[str], types: dict[str, type]) -> dict[str, Any]:
    """`["epochs=2", "data_uri=s3://x"]` -> typed values; unknown names and bad values are user errors."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--param {pair!r} is not of the form name=value",
                              "e.g. --param train_epochs=4")
        if name not in types:
            raise ConfigError(f"unknown pipeline parameter {name!r}", _nearest(name, list(types)))
        parsed[name] = _coerce(name, raw, types[name])
    return parsed


def _coerce(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"--param {name}={raw!r} is not a boolean", "use true or false")
        return raw.lower() in ("true", "1")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--param {name}={raw!r} is not a valid {kind.__name__}", "fix the value") from None
