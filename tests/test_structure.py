"""The code's shape: phases depend only on common/, every default has one source, the compiled pipeline is
checked in, configs import without the heavy libraries."""

from __future__ import annotations

import ast
import difflib
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from visionnode.pipeline.compile import compile_pipeline, dag_tasks, fed_parameter, load_compiled

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"
PHASES = ("validate", "shard", "transfer", "train", "quantize", "deploy", "benchmark")
GOLDEN = ROOT / "tests" / "golden" / "visionnode-152.yaml"
REGENERATE = "visionnode pipeline compile tests/golden/visionnode-152.yaml"
HEAVY_LIBRARIES = ("torch", "ffcv", "openvino", "nncf", "tritonclient", "boto3", "mlflow", "cv2")


# ------------------------------------------------------------------------------------------- imports
def imported_modules(path: Path, package: list[str]) -> list[tuple[int, str]]:
    """(line, absolute dotted module) for every import in `path`, a module of `package`; relative imports
    resolved (`from ..common import x` yields `...common.x`, since x may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.extend((node.lineno, module if node.module else f"{module}.{alias.name}")
                         for alias in node.names)
    return found


def phase_to_phase_imports(components: Path) -> list[str]:
    """Every import in components/<phase>/ of another phase's package (anything but common/ and itself)."""
    problems = []
    for phase in PHASES:
        for path in sorted((components / phase).rglob("*.py")):
            package = ["visionnode", "components", *path.relative_to(components).parent.parts]
            for line, module in imported_modules(path, package):
                match = re.match(r"visionnode\.components\.(\w+)", module)
                if match and match.group(1) not in (phase, "common"):
                    problems.append(f"{phase}/{path.name}:{line} imports {module}")
    return problems


def test_phases_import_only_common_and_themselves() -> None:
    assert phase_to_phase_imports(COMPONENTS) == []


def upward_imports_from_common(components: Path) -> list[str]:
    """Every import in components/common/ of a phase or of the local-only tooling (components/local/): what a
    cluster image needs must not depend on what only a laptop runs."""
    problems = []
    for path in sorted((components / "common").rglob("*.py")):
        package = ["visionnode", "components", *path.relative_to(components).parent.parts]
        for line, module in imported_modules(path, package):
            match = re.match(r"visionnode\.components\.(\w+)", module)
            if match and match.group(1) != "common":
                problems.append(f"{path.relative_to(components)}:{line} imports {module}")
    return problems


def test_common_imports_neither_phases_nor_local_tooling() -> None:
    assert upward_imports_from_common(COMPONENTS) == []


def test_the_layer_check_finds_an_import_of_local_tooling_from_common(tmp_path: Path) -> None:
    (tmp_path / "common" / "data").mkdir(parents=True)
    (tmp_path / "common" / "data" / "x.py").write_text(
        "def f():\n    from visionnode.components.local.stack.process import read_record\n")
    assert upward_imports_from_common(tmp_path) == [
        "common/data/x.py:2 imports visionnode.components.local.stack.process"]


def test_the_import_check_finds_absolute_and_relative_phase_to_phase_imports(tmp_path: Path) -> None:
    components = tmp_path / "components"
    for phase in PHASES:
        (components / phase).mkdir(parents=True)
    (components / "train" / "fine.py").write_text("from ..common.recipe import Recipe\nfrom .config import "
                                                  "X\n")
    (components / "benchmark" / "late.py").write_text(
        "def f():\n    from visionnode.components.deploy.deploy import deploy\n")
    (components / "quantize" / "relative.py").write_text("from ..transfer import transfer\n")
    assert phase_to_phase_imports(components) == [
        "quantize/relative.py:1 imports visionnode.components.transfer",
        "benchmark/late.py:2 imports visionnode.components.deploy.deploy",
    ]


def test_configs_and_clis_import_without_the_heavy_libraries() -> None:
    modules = [f"visionnode.components.{p}.{m}" for p in PHASES for m in ("config", "cli")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_LIBRARIES!r})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    assert loaded.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- defaults
# Component parameter -> (config attribute path, CLI parameter), where the names differ on purpose or a side
# has no such setting (None). Every other component parameter has the same name in the config and the CLI.
NAME_MAP: dict[str, dict[str, tuple[str | None, str | None]]] = {
    "validate": {},
    "shard": {"shards_uri": (None, None)},  # the store's base; the CLI takes the exact --out instead
    "transfer": {"part_size_mb": ("part_size_mb", "part_size")},
    # the config holds the resolved LR (recipe.lr), the component and the CLI the word a user writes
    "train": {"lr": (None, "lr"), "suggested_lr": (None, None)},
    "quantize": {},
    "deploy": {"triton_http": ("triton_http", "triton_url"), "triton_grpc": ("triton_grpc", "grpc_url"),
               "model_name": ("model_name", "name"), "instances": ("serving.instances", "instances")},
    "benchmark": {"duration_s": ("duration_s", "duration")},
}
CLI_COMMANDS = {"transfer": "place_command"}
NOT_SETTINGS: set[str] = set()  # plumbing the pipeline fills in, not a user's knob
# Where the pipeline's default differs from the phase's on purpose, and why.
PIPELINE_CHOICES: dict[str, str] = {}
# Where the CLI's default differs from the component's on purpose, and why.
CLI_CHOICES: dict[str, str] = {
    "train.lr": "auto in the DAG takes validate's probe; a lone `visionnode train` has none and its own "
                "probe runs on one process only (not under torchrun), so the command defaults to batch-rule",
}


def component_defaults(phase: str) -> dict[str, Any]:
    module = __import__(f"visionnode.components.{phase}.component", fromlist=["_"])
    component = getattr(module, f"{phase}_op")
    parameters = inspect.signature(component.python_func).parameters
    return {name: p.default for name, p in parameters.items()
            if p.default is not inspect.Parameter.empty and name not in NOT_SETTINGS}


def config_value(phase: str, path: str) -> Any:
    value: Any = __import__(f"visionnode.components.{phase}.config", fromlist=["_"]).DEFAULTS
    for attribute in path.split("."):
        value = getattr(value, attribute)
    return value


def cli_defaults(phase: str) -> dict[str, Any]:
    module = __import__(f"visionnode.components.{phase}.cli", fromlist=["_"])
    command = inspect.unwrap(getattr(module, CLI_COMMANDS.get(phase, f"{phase}_command")))
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}


def pipeline_defaults(phase: str, spec: dict) -> dict[str, Any]:
    """Component parameter -> the default the compiled pipeline gives it (through the parameter it is fed)."""
    task_inputs = dag_tasks(spec)[f"{phase}-op"]["inputs"]["parameters"]
    root = spec["root"]["inputDefinitions"]["parameters"]
    return {name: root[fed_parameter(source)].get("defaultValue")
            for name, source in task_inputs.items() if fed_parameter(source)}


def same(a: Any, b: Any) -> bool:
    """Equal as settings: a list equals its comma-separated text; numbers compare as numbers (the IR stores
    every number as a float, a CLI may take a number as text)."""
    a, b = (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for v in (a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def default_disagreements(phase: str, spec: dict) -> list[str]:
    problems = []
    cli, compiled = cli_defaults(phase), pipeline_defaults(phase, spec)
    component_spec = spec["components"][f"comp-{phase}-op"]["inputDefinitions"]["parameters"]
    for name, default in component_defaults(phase).items():
        config_path, cli_name = NAME_MAP[phase].get(name, (name, name))
        sides = {"compiled component": component_spec[name].get("defaultValue")}
        if config_path:
            sides[f"config {config_path}"] = config_value(phase, config_path)
        if cli_name and f"{phase}.{name}" not in CLI_CHOICES:
            sides[f"CLI --{cli_name.replace('_', '-')}"] = cli[cli_name]
        if name in compiled and f"{phase}.{name}" not in PIPELINE_CHOICES:
            sides["pipeline parameter"] = compiled[name]
        problems += [f"{phase}.{name}: component {default!r} but {side} {value!r}"
                     for side, value in sides.items() if not same(default, value)]
    return problems


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return load_compiled(compile_pipeline(tmp_path_factory.mktemp("ir") / "p.yaml"))


@pytest.mark.parametrize("phase", PHASES)
def test_component_config_cli_and_pipeline_agree_on_every_default(phase: str, spec: dict) -> None:
    assert component_defaults(phase), "a component without settings: is NOT_SETTINGS hiding them?"
    assert default_disagreements(phase, spec) == []


def test_a_mismatched_default_is_reported(spec: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from visionnode.components.shard.config import DEFAULTS

    monkeypatch.setattr(DEFAULTS, "images_per_shard", 4000)
    assert default_disagreements("shard", spec) == [
        "shard.images_per_shard: component 5000 but config images_per_shard 4000"]


# ------------------------------------------------------------------------------------------- golden pipeline
def comparable(text: str) -> dict:
    """The compiled package without what changes on every release: the SDK version and the image tags."""
    text = re.sub(r"(image: visionnode/[\w-]+):\S+", r"\1:TAG", text)
    documents = [d for d in yaml.safe_load_all(text) if d]
    for document in documents:
        document.pop("sdkVersion", None)
    return {"documents": documents}


def test_compiled_pipeline_matches_the_checked_in_golden_file(tmp_path: Path) -> None:
    compiled = compile_pipeline(tmp_path / "p.yaml").read_text()
    if comparable(compiled) != comparable(GOLDEN.read_text()):
        diff = difflib.unified_diff(GOLDEN.read_text().splitlines(), compiled.splitlines(),
                                    "golden", "compiled now", lineterm="", n=2)
        pytest.fail("the compiled pipeline differs from tests/golden/visionnode-152.yaml; if the interface "
                    f"change is on purpose, regenerate it with `{REGENERATE}`\n" + "\n".join(list(diff)[:80]))


def test_the_golden_comparison_ignores_sdk_and_image_tag_but_not_a_default() -> None:
    golden = GOLDEN.read_text()
    retagged = re.sub(r"(image: visionnode/[\w-]+):\S+", r"\1:9.9.9", golden).replace(
        "sdkVersion: kfp-", "sdkVersion: kfp-9.")
    assert comparable(retagged) == comparable(golden)
    changed = golden.replace("defaultValue: 5000.0", "defaultValue: 4000.0", 1)
    assert changed != golden and comparable(changed) != comparable(golden)


# ------------------------------------------------------------------------------------------- module size
LONG_MODULES: dict[str, str] = {}  # path -> why it stays above the limit


def test_modules_under_components_stay_small() -> None:
    limit = 400
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in COMPONENTS.rglob("*.py")}
    assert {path: n for path, n in long.items() if n > limit and path not in LONG_MODULES} == {}
