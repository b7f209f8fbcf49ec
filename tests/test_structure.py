"""The code's shape: phases depend only on common/, every setting is declared once and the adapters derive
from it, the compiled pipeline is checked in, configs import without the heavy libraries."""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main
import yaml
from kfp import compiler, dsl
from kfp.dsl import Metrics, Output
from typer.testing import CliRunner

from visionnode.components.common.adapters.declared import (
    at_least,
    between,
    build,
    check_ranges,
    declared,
    one_of,
    setting,
    with_setting_inputs,
    with_setting_options,
)
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import to_jsonable
from visionnode.pipeline.compile import compile_pipeline, load_compiled
from visionnode.pipeline.params import phase_values
from visionnode.pipeline.pipeline import with_declared_parameters, with_parameter_descriptions

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


# ------------------------------------------------------------------------------------------- settings
# Each setting is declared once, on its config (components/common/adapters/declared.py); the CLI option, the
# component input and the pipeline parameter derive from it. These tests prove the derivation on a toy config
# and check that no adapter declares a setting again by hand.
@dataclass
class ToyConfig:
    data: str
    steps: int = setting(7, "Steps to take.", check=at_least(1))
    pace: float = setting(0.5, "How fast each step goes.", cli="--speed")
    levels: list[int] = setting("1,2", "Levels, comma separated.", parse=lambda text: [int(v) for v in
                                                                                   text.split(",")])
    note: str = setting("", "Only on the command line.", pipeline=False)
    hidden: int = setting(3, "Only in the pipeline.", cli=False)
    mode: str = setting("fast", "How to go.", check=one_of("fast", "slow"))
    share: float = setting(0.5, "A share.", pipeline=False,
                           check=between(0, 1, low_open=True, high_open=True))


def toy_command(data: Annotated[str, typer.Option("--data", help="The data.")],
                settings: dict[str, Any]) -> None:
    print(json.dumps(to_jsonable(build(ToyConfig, settings, data=data))))


def toy_op(data: str, metrics: Output[Metrics]) -> str:
    """A toy component.

    Args:
        data: The data.
        metrics: Nothing.
    """
    settings = dict(locals())
    import json

    from tests.test_structure import ToyConfig
    from visionnode.components.common.adapters.declared import build
    from visionnode.components.common.jsonio import to_jsonable

    return json.dumps(to_jsonable(build(ToyConfig, settings, data=data)))


def toy_app() -> typer.Typer:
    app = typer.Typer()
    app.command("toy")(with_setting_options(ToyConfig)(toy_command))
    app.command("other")(with_setting_options(ToyConfig, skip=("steps",))(toy_command))
    return app


def test_a_setting_declared_once_is_a_cli_option_with_its_type_default_and_help() -> None:
    commands = typer.main.get_command(toy_app()).commands  # type: ignore[attr-defined]
    options = {p.name: p for p in commands["toy"].params}
    assert set(options) == {"data", "steps", "pace", "levels", "note", "mode", "share"}  # hidden: cli=False
    assert options["steps"].default == 7 and options["steps"].help == "Steps to take. Must be at least 1."
    assert options["pace"].opts == ["--speed"] and options["levels"].default == "1,2"
    assert "steps" not in {p.name for p in commands["other"].params}  # skip=, and commands do not share
    done = CliRunner().invoke(toy_app(), ["toy", "--data", "d", "--steps", "9", "--levels", "4,5"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {"data": "d", "steps": 9, "pace": 0.5, "levels": [4, 5], "note": "",
                                       "hidden": 3, "mode": "fast", "share": 0.5}


def test_a_setting_declared_once_is_a_component_input_and_a_pipeline_parameter(tmp_path: Path) -> None:
    component = dsl.component(with_setting_inputs(ToyConfig)(toy_op), base_image="python:3.11")
    inputs = component.component_spec.inputs
    assert set(inputs) == {"data", "steps", "pace", "levels", "hidden", "mode"}  # note, share: pipeline=False
    assert (inputs["steps"].default, inputs["steps"].description) == (7, "Steps to take. Must be at least 1.")
    assert (inputs["levels"].type, inputs["levels"].default) == ("String", "1,2")
    # the inputs are in the source KFP ships into the task, which runs as written
    source = inspect.getsource(component.python_func)
    assert "    steps: int = 7,\n" in source
    assert "        steps: Steps to take. Must be at least 1.\n" in source
    namespace: dict[str, Any] = {}
    exec("from kfp.dsl import *\n" + source, namespace)
    ran = json.loads(namespace["toy_op"](data="d", metrics=None, steps=2, levels="3"))
    assert ran == {"data": "d", "steps": 2, "pace": 0.5, "levels": [3], "note": "", "hidden": 3,
                   "mode": "fast", "share": 0.5}

    def dag(data_uri: str, params: dict[str, Any]) -> None:
        """A toy pipeline."""
        component(data=data_uri, **phase_values("toy", params, ToyConfig))

    pipeline = dsl.pipeline(name="toy")(
        with_parameter_descriptions(with_declared_parameters(dag, {"toy": ToyConfig})))
    compiler.Compiler().compile(pipeline, str(tmp_path / "toy.yaml"))
    root = load_compiled(tmp_path / "toy.yaml")["root"]["inputDefinitions"]["parameters"]
    assert set(root) == {"data_uri", "toy_steps", "toy_pace", "toy_levels", "toy_hidden", "toy_mode"}
    assert root["toy_steps"]["defaultValue"] == 7
    assert root["toy_steps"]["description"] == "Steps to take. Must be at least 1."
    assert root["data_uri"]["description"] == "The data."


def test_a_value_out_of_its_declared_range_names_the_option_and_the_range() -> None:
    with pytest.raises(ConfigError, match=r"^--steps 0 is out of range \(use at least 1; default 7\)$"):
        check_ranges(ToyConfig(data="", steps=0))


@pytest.mark.parametrize("share, valid", [(1e-9, True), (0.999, True), (0.0, False), (1.0, False),
                                          (float("nan"), False), (float("inf"), False)])
def test_a_declared_range_holds_at_its_open_bounds_and_refuses_what_is_no_number(share: float,
                                                                                 valid: bool) -> None:
    config = ToyConfig(data="", share=share)
    if valid:
        check_ranges(config)
    else:
        with pytest.raises(ConfigError, match=r"--share .* is out of range \(use above 0 and below 1;"):
            check_ranges(config)


def test_a_declared_choice_is_stated_in_the_help_and_refused_when_unknown() -> None:
    helped = CliRunner().invoke(toy_app(), ["toy", "--help"], env={"COLUMNS": "200"})
    assert "How to go. Must be one of fast, slow." in helped.output
    check_ranges(ToyConfig(data="", mode="slow"))
    with pytest.raises(ConfigError, match=r"^--mode 'medium' is not known \(use one of fast, slow; default "):
        check_ranges(ToyConfig(data="", mode="medium"))


def test_every_phase_command_has_its_own_options() -> None:
    """Each command's options are its own: a shared or mutated signature once put upload's arguments on
    fetch."""
    from visionnode.pipeline.cli import app

    def usage(command: Any, path: tuple[str, ...]) -> dict[tuple[str, ...], list[str]]:
        found = {path: sorted(p.name for p in command.params)}
        for name, sub in getattr(command, "commands", {}).items():
            found |= usage(sub, (*path, name))
        return found

    commands = usage(typer.main.get_command(app), ())
    assert commands[("transfer", "fetch")] == ["cache_dir", "concurrency", "json_path", "part_size_mb",
                                               "source"]
    assert commands[("transfer", "upload")] == ["concurrency", "create_bucket", "destination", "json_path",
                                                "out", "part_size_mb", "shards_dir"]
    assert "load_timeout_s" in commands[("promote",)] and "load_timeout_s" not in commands[("reject",)]


# A component parameter with a literal default that is plumbing the DAG feeds, not a user's setting.
NOT_SETTINGS = {"suggested_lr": "validate's output", "decision": "benchmark's output"}


def decorator_settings(node: ast.FunctionDef, namespace: dict[str, Any]) -> set[str]:
    """The settings a `@with_setting_options(...)`/`@with_setting_inputs(...)` decorator adds to `node`."""
    found: set[str] = set()
    for decorator in node.decorator_list:
        kind = getattr(getattr(decorator, "func", None), "id", "")
        for config in decorator.args if kind in ("with_setting_options", "with_setting_inputs") else []:
            settings = declared(namespace[config.id]).values()  # type: ignore[attr-defined]
            wanted = "cli" if kind == "with_setting_options" else "pipeline"
            found |= {spec.name for spec in settings if getattr(spec, wanted) is not False}
    return found


def hand_declared_settings(path: Path, namespace: dict[str, Any]) -> list[str]:
    """Parameters of the functions in `path` that look like a setting declared by hand: named like one its
    decorator adds, or with a literal default other than None."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.FunctionDef):
            continue
        settings = decorator_settings(node, namespace)
        defaults = dict(zip([a.arg for a in node.args.args][::-1], node.args.defaults[::-1]))
        defaults |= {a.arg: d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None}
        for argument in node.args.args + node.args.kwonlyargs:
            default = defaults.get(argument.arg)
            literal = isinstance(default, ast.Constant) and default.value is not None
            if argument.arg in settings or (literal and argument.arg not in NOT_SETTINGS):
                problems.append(f"{path.relative_to(path.parents[2])}:{argument.lineno} "
                                f"{node.name}({argument.arg})")
    return problems


@pytest.mark.parametrize("phase", PHASES)
def test_no_phase_adapter_declares_a_setting_by_hand(phase: str) -> None:
    for adapter in ("cli", "component"):
        module = __import__(f"visionnode.components.{phase}.{adapter}", fromlist=["_"])
        assert hand_declared_settings(COMPONENTS / phase / f"{adapter}.py", vars(module)) == []


def test_the_hand_declaration_check_finds_a_copied_setting(tmp_path: Path) -> None:
    from visionnode.components.shard.config import ShardConfig

    (tmp_path / "components" / "shard").mkdir(parents=True)
    copied = tmp_path / "components" / "shard" / "cli.py"
    copied.write_text("@with_setting_options(ShardConfig)\n"
                      "def shard_command(data: str, jpeg_quality: int, json_path=None, x=3):\n"
                      "    pass\n")
    assert hand_declared_settings(copied, {"ShardConfig": ShardConfig}) == [
        "components/shard/cli.py:2 shard_command(jpeg_quality)", "components/shard/cli.py:2 shard_command(x)"]


@pytest.mark.parametrize("name", ["crop_min_scale", "target_p99_ms", "images_per_shard"])
def test_a_setting_stands_on_few_lines_of_source(name: str) -> None:
    lines = [f"{path.relative_to(ROOT)}:{i}" for folder in ("components", "pipeline")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) if name in line]
    assert len(lines) <= 5, lines


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
