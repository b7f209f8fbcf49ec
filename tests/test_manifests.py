"""manifests/: offline checks of the kustomize tree.

- every kustomization points at files that exist; every overlay renders (`kustomize build`, or the kustomize
  built into `kubectl kustomize`; the rendering checks are skipped when neither binary is installed);
- every built-in object, in the base files and in each rendered overlay, validates strictly against the
  Kubernetes OpenAPI schemas bundled with kubernetes-validate; the PyTorchJob (a custom resource) gets a
  structural check plus strict validation of its pod templates as core/v1 PodTemplates;
- policy: Services are ClusterIP (Triton's replicas also by name, through a headless Service), every
  container has requests and limits and every pod the cluster would run (the PyTorchJob Workers with the
  init container the training operator adds from our template) passes the Pod Security level the namespace
  enforces; no credential is committed and MinIO's root user reaches only MinIO and its setup Job (every
  client has a bucket-scoped user); Triton reloads the deployed models after a restart and is not ready
  before; the job survives one pre-emption per node; and the pieces agree with each other (Triton's
  repository = the pipeline's deploy_repository, NNODES = pods, GPUS = GPU limit, image tags = version, the
  training operator's version = the README's).
"""

from __future__ import annotations

import ast
import base64
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.skips import skip_unless_ci
from visionnode.components.common.adapters.kfp import project_version

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest we support, newest bundled
NAMESPACE = "visionnode"
S3_ENV = MANIFESTS / "base" / "s3.env"            # user-created, git-ignored
S3_ENV_EXAMPLE = MANIFESTS / "base" / "s3.example.env"
# Every credential file (X.env, user-created from X.example.env, git-ignored) and the Secret it becomes.
ENV_SECRETS = {"minio-root": "minio-root", "s3": "visionnode-s3", "mlflow-s3": "mlflow-s3",
               "triton-s3": "triton-s3"}
ENV_EXAMPLES = {MANIFESTS / "base" / f"{stem}.example.env": secret for stem, secret in ENV_SECRETS.items()}
USER_ENV_FILES = {MANIFESTS / "base" / f"{stem}.env" for stem in ENV_SECRETS}
ROOT_SECRET = "minio-root"
OPERATOR_DIR = MANIFESTS / "training-operator"
# kubeflow/training-operator: the last line serving kubeflow.org/v1 PyTorchJob
OPERATOR_VERSION = "v1.9.0"
OPERATOR_TEMPLATE = OPERATOR_DIR / "pytorch-init-container.gotmpl"
# The operator's flags and defaults (cmd/training-operator.v1/main.go, pkg/config/config.go in release-1.9).
OPERATOR_TEMPLATE_FILE = "/etc/config/initContainer.yaml"   # --pytorch-init-container-template-file
OPERATOR_INIT_IMAGE = "alpine:3.10"                         # --pytorch-init-container-image
OPERATOR_INIT_MAX_TRIES = 100                               # --pytorch-init-container-max-tries
OVERLAYS = {
    "local": MANIFESTS / "overlays" / "local",
    "production": MANIFESTS / "overlays" / "production",
    "local-training": MANIFESTS / "overlays" / "local" / "training",
    "production-training": MANIFESTS / "overlays" / "production" / "training",
}
SERVICE_OVERLAYS = ("local", "production")
TRAINING_OVERLAYS = ("local-training", "production-training")
OPERATOR_ENV = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"}  # set by the PyTorchJob operator
IMAGE_NAMES = {"base", "triton-openvino", "validate", "shard", "transfer", "train", "quantize", "deploy",
               "benchmark"}
SECRETISH = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- helpers

def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def resource_files(directory: Path) -> list[Path]:
    """The plain resource files a kustomization lists (not patches, not generator inputs)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [directory / r for r in kustomization.get("resources", []) if (directory / r).is_file()]


def base_resources() -> list[dict[str, Any]]:
    docs = []
    for directory in (MANIFESTS / "base", MANIFESTS / "training"):
        for path in resource_files(directory):
            docs.extend(load_docs(path))
    return docs


def validate_builtin(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) for every pod template in Deployments, StatefulSets, Jobs and PyTorchJobs.

    PyTorchJob pods are what the training operator creates: Workers get the init container it adds."""
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            yield f"{kind}/{name}", doc["spec"]["template"]["spec"]
        elif kind == "PyTorchJob":
            for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
                yield f"{kind}/{name}/{role}", operator_pod_spec(doc, role)


def render_operator_template(template: str, master_addr: str) -> list[dict[str, Any]]:
    """The init containers the training operator renders from its Go template (pytorch/initcontainer.go)."""
    fields = {".MasterAddr": master_addr, ".InitContainerImage": OPERATOR_INIT_IMAGE,
              ".MaxTries": str(OPERATOR_INIT_MAX_TRIES)}
    actions = set(re.findall(r"\{\{\s*(.*?)\s*\}\}", template))
    assert actions <= set(fields), f"template actions the operator does not provide: {actions - set(fields)}"
    text = re.sub(r"\{\{\s*(.*?)\s*\}\}", lambda m: fields[m.group(1)], template)
    containers = yaml.safe_load(text)
    assert isinstance(containers, list) and containers, "the operator unmarshals a list of containers"
    return containers


def operator_pod_spec(job: dict[str, Any], role: str, template: str | None = None) -> dict[str, Any]:
    """A replica's pod spec as the operator creates it: with a Master, Workers get its init containers."""
    replicas = job["spec"]["pytorchReplicaSpecs"]
    spec = yaml.safe_load(yaml.safe_dump(replicas[role]["template"]["spec"]))
    if role == "Worker" and "Master" in replicas:
        master = f"{job['metadata']['name']}-master-0"
        injected = render_operator_template(template or OPERATOR_TEMPLATE.read_text(), master)
        spec["initContainers"] = spec.get("initContainers", []) + injected
    return spec


# Pod Security Standards, "restricted" (which includes "baseline"), as the admission controller checks a pod.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
BASELINE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                    "net.ipv4.ip_unprivileged_port_start",
                    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
                    "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What Pod Security "restricted" refuses in a pod spec (empty: admitted)."""
    found = []
    pod = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"{field}: true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    for sysctl in pod.get("sysctls", []):
        if sysctl["name"] not in BASELINE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    if pod.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    if pod.get("seccompProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        found.append("pod seccompProfile")
    containers = spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", [])
    for container in containers:
        name, security = container["name"], container.get("securityContext", {})
        if security.get("privileged"):
            found.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities.drop must include ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities.add {capabilities['add']}")
        if security.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if security.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = security.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if security.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, rendered from a copy of manifests/ with an s3.env made from the example."""
    command = renderer()
    if command is None:
        skip_unless_ci("neither `kustomize` nor `kubectl` is installed: overlay rendering checks skipped "
                       "(the per-file checks still run)")
    copy = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, copy, ignore=lambda _, names: [n for n in names
                                                             if MANIFESTS / "base" / n in USER_ENV_FILES])
    for example in ENV_EXAMPLES:
        user_file = copy / "base" / example.name.replace(".example.env", ".env")
        user_file.write_text(example.read_text().replace("<access-key>", "vn" + secrets.token_hex(8))
                             .replace("<secret-key>", secrets.token_urlsafe(30)))
    out = {}
    for name, overlay in OVERLAYS.items():
        target = copy / overlay.relative_to(MANIFESTS)
        done = subprocess.run([*command, str(target)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        out[name] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


# ------------------------------------------------------------------------------------ structure / files

@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_kustomization_references_exist(directory: Path):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization.get("resources", []):
        if resource.startswith("github.com/"):  # a remote base: only pinned to a release tag
            assert re.search(r"\?ref=v\d+\.\d+\.\d+$", resource), f"unpinned remote resource {resource}"
            continue
        target = directory / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"missing resource {resource}"
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            assert (directory / patch["path"]).is_file(), f"missing patch {patch['path']}"
    for generator in kustomization.get("secretGenerator", []) + kustomization.get("configMapGenerator", []):
        for entry in generator.get("files", []) + generator.get("envs", []):
            path = directory / entry.split("=", 1)[-1]
            if path in USER_ENV_FILES:  # the user creates it from the example; it must never be committed
                assert path.with_name(path.name.replace(".env", ".example.env")).is_file()
                continue
            assert path.is_file(), f"missing generator input {entry}"


def test_user_secret_file_is_git_ignored():
    rules = [line for line in (MANIFESTS / ".gitignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules == ["*.env", "!*.example.env"]  # s3.env etc. ignored, s3.example.env etc. kept
    for user_file in USER_ENV_FILES:
        assert user_file.match(rules[0]) and not user_file.match(rules[1][1:])
    for example in ENV_EXAMPLES:
        assert example.match(rules[1][1:])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_base_files_validate_against_kubernetes_schemas(version: str):
    docs = base_resources()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "PersistentVolumeClaim", "Deployment", "Service", "Job", "PyTorchJob"} <= kinds
    for doc in docs:
        if doc["kind"] == "PyTorchJob":
            check_pytorchjob(doc, version)
        else:
            validate_builtin(doc, version)


def test_strategic_patches_target_base_objects():
    in_base = {(d["kind"], d["metadata"]["name"]) for d in base_resources()}
    for directory in kustomization_dirs():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        if any(r.startswith("github.com/") for r in kustomization.get("resources", [])):
            # patches an upstream base: checked by test_training_operator_reads_our_init_container_template
            continue
        for patch in kustomization.get("patches", []):
            if "target" in patch:  # JSON 6902: checked by rendering
                continue
            for doc in load_docs(directory / patch["path"]):
                assert (doc["kind"], doc["metadata"]["name"]) in in_base, f"{patch['path']}: {doc['kind']}"


def test_schema_validation_catches_a_typo():
    deployment = one(base_resources(), "Deployment", "triton")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(broken, K8S_VERSIONS[0])


# --------------------------------------------------------------------------------------- PyTorchJob

REPLICA_KEYS = {"replicas", "restartPolicy", "template"}
RUN_POLICY_KEYS = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit",
                   "schedulingPolicy", "suspend", "managedBy"}
SPEC_KEYS = {"runPolicy", "pytorchReplicaSpecs", "elasticPolicy", "nprocPerNode"}


def check_pytorchjob(doc: dict[str, Any], version: str) -> None:
    """Structure of kubeflow.org/v1 PyTorchJob for the fields we use; pod templates validated as core/v1."""
    assert doc["apiVersion"] == "kubeflow.org/v1"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= SPEC_KEYS, set(spec) - SPEC_KEYS
    assert set(spec.get("runPolicy", {})) <= RUN_POLICY_KEYS
    assert spec.get("runPolicy", {}).get("cleanPodPolicy", "None") in ("None", "Running", "All")
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"} and "Master" in replicas
    assert replicas["Master"]["replicas"] == 1, "a PyTorchJob has exactly one Master"
    for role, replica in replicas.items():
        assert set(replica) <= REPLICA_KEYS, f"{role}: {set(replica) - REPLICA_KEYS}"
        assert isinstance(replica["replicas"], int) and replica["replicas"] >= 1
        assert replica["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        containers = replica["template"]["spec"]["containers"]
        assert "pytorch" in [c["name"] for c in containers], "the operator configures the container 'pytorch'"
        validate_builtin({"apiVersion": "v1", "kind": "PodTemplate",
                          "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}"},
                          "template": replica["template"]}, version)


def trainer_containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    job = one(docs, "PyTorchJob", "resnet152-train")
    return [(replica, next(c for c in replica["template"]["spec"]["containers"] if c["name"] == "pytorch"))
            for replica in job["spec"]["pytorchReplicaSpecs"].values()]


def train_cli_options() -> set[str]:
    try:
        import typer
        from typer.main import get_command

        from visionnode.components.train.cli import train_command
    except ImportError as exc:
        skip_unless_ci(f"the train CLI does not import ({exc}): its options cannot be checked")
    app = typer.Typer()
    app.command()(train_command)
    return {opt for param in get_command(app).params for opt in param.opts + param.secondary_opts}


@pytest.mark.parametrize("overlay", TRAINING_OVERLAYS)
def test_pytorchjob_overlay_is_consistent(rendered, overlay: str):
    docs = rendered[overlay]
    job = one(docs, "PyTorchJob", "resnet152-train")
    assert job["metadata"]["namespace"] == NAMESPACE
    check_pytorchjob(job, K8S_VERSIONS[-1])
    pods = sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values())
    options = train_cli_options()
    for replica, container in trainer_containers(docs):
        env = {name: e.get("value") for name, e in env_of(container).items()}
        assert int(env["NNODES"]) == pods, "NNODES must equal Master + Worker replicas"
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        gpus = limits.get("nvidia.com/gpu")
        assert requests.get("nvidia.com/gpu") == gpus, "extended resources need requests == limits"
        assert int(env["GPUS"]) == (int(gpus) if gpus else 1), "one torchrun process per GPU (1 on CPU)"

        assert container["command"] == ["torchrun"]
        args = container["args"]
        assert "--nproc-per-node=$(GPUS)" in args and "--nnodes=$(NNODES)" in args
        assert "--node-rank=$(RANK)" in args and "--master-addr=$(MASTER_ADDR)" in args
        module_at = args.index("-m")
        assert args[module_at + 1] == "visionnode.components.train"
        train_args = dict(a.split("=", 1) for a in args[module_at + 2:])
        assert train_args["--resume"] == "auto"
        assert train_args["--shards"].startswith("s3://")
        checkpoint_uri = train_args["--checkpoint-uri"]
        assert checkpoint_uri.startswith("s3://") and "$(RUN_NAME)" in checkpoint_uri
        assert train_args["--out"].startswith("/workspace/")
        assert set(train_args) <= options, f"unknown train options: {set(train_args) - options}"
        for reference in re.findall(r"\$\((\w+)\)", " ".join(args)):
            assert reference in env or reference in OPERATOR_ENV, f"$({reference}) is never set"

        from_secrets = {source["secretRef"]["name"] for source in container["envFrom"]}
        assert {"visionnode-s3", "visionnode-mlflow"} <= from_secrets
        volumes = {v["name"]: v for v in replica["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", "DataLoader/NCCL shared memory"
        assert "/workspace" in mounts and "/tmp" in mounts


def test_production_training_uses_gpus_and_several_workers(rendered):
    job = one(rendered["production-training"], "PyTorchJob", "resnet152-train")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] >= 2
    for _, container in trainer_containers(rendered["production-training"]):
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_local_training_needs_no_gpu(rendered):
    for _, container in trainer_containers(rendered["local-training"]):
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


# ---------------------------------------------------------------------------------- rendered overlays

@pytest.mark.parametrize("overlay", list(OVERLAYS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_overlay_validates(rendered, overlay: str, version: str):
    for doc in rendered[overlay]:
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] == "Namespace"
        if doc["kind"] == "PyTorchJob":
            check_pytorchjob(doc, version)
        else:
            validate_builtin(doc, version)


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_services_are_cluster_ip(rendered, overlay: str):
    services = [d for d in rendered[overlay] if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"minio", "mlflow", "triton", "triton-headless"}
    for service in services:
        assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_every_triton_replica_is_reachable_by_name_and_production_runs_two(rendered, overlay: str):
    """deploy and promote load and unload on every pod through the headless Service (one A record per pod),
    which selects exactly the Triton Deployment's pods and serves its HTTP port."""
    docs = rendered[overlay]
    headless, triton = one(docs, "Service", "triton-headless"), one(docs, "Deployment", "triton")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == triton["spec"]["selector"]["matchLabels"]
    assert {(p["port"], p["targetPort"]) for p in headless["spec"]["ports"]} == {(8000, "http")}
    assert triton["spec"].get("replicas", 1) == (2 if overlay == "production" else 1)
    # the restarted-pod reload stays: postStart loads the deployed models, readiness waits for them
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert container["lifecycle"]["postStart"]["exec"]["command"][-1] == "load"
    assert container["readinessProbe"]["exec"]["command"][-1] == "ready"


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_container_is_locked_down_and_sized(rendered, overlay: str):
    specs = list(pod_specs(rendered[overlay]))
    assert specs
    for label, spec in specs:
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", label
        assert spec.get("automountServiceAccountToken") is False, label
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{label}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("readOnlyRootFilesystem") is True, where
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{where}: {section}"
            for name, entry in env_of(container).items():
                if SECRETISH.search(name):
                    assert "valueFrom" in entry, f"{where}: env {name} is a literal, not a secretKeyRef"


def test_namespace_enforces_restricted_pod_security(rendered):
    namespace = one(rendered["production"], "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_visionnode_images_carry_the_project_version(rendered, overlay: str):
    version = project_version()
    for label, spec in pod_specs(rendered[overlay]):
        for container in spec["containers"]:
            image = container["image"]
            pinned = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
            assert pinned, f"{label}: unpinned {image}"
            if image.startswith("visionnode/"):
                name, tag = image.removeprefix("visionnode/").split(":")
                assert name in IMAGE_NAMES and tag == version, f"{label}: {image} (docker/build.sh builds " \
                                                                f"visionnode/<name>:{version})"


# ------------------------------------------------------------------------------------------ services

def test_minio_takes_its_root_credentials_from_the_secret(rendered):
    docs = rendered["production"]
    minio = one(docs, "Deployment", "minio")
    container = minio["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {"name": ROOT_SECRET,
                                                                   "key": "MINIO_ROOT_USER"}
    assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": ROOT_SECRET,
                                                                       "key": "MINIO_ROOT_PASSWORD"}
    volumes = {v["name"]: v for v in minio["spec"]["template"]["spec"]["volumes"]}
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    assert volumes[data["name"]]["persistentVolumeClaim"]["claimName"] == "minio-data"
    assert one(docs, "PersistentVolumeClaim", "minio-data")
    assert "/data" in container["args"]


def test_production_volumes_are_bigger_than_local(rendered):
    def size(overlay: str, name: str) -> float:
        claim = one(rendered[overlay], "PersistentVolumeClaim", name)
        quantity = claim["spec"]["resources"]["requests"]["storage"]
        number, unit = re.fullmatch(r"(\d+)(Gi|Ti)", quantity).groups()
        return int(number) * (1024 if unit == "Ti" else 1)

    for claim in ("minio-data", "mlflow-db"):
        assert size("production", claim) > size("local", claim)


def test_mlflow_stores_runs_in_sqlite_on_a_volume_and_artifacts_in_minio(rendered):
    docs = rendered["production"]
    mlflow = one(docs, "Deployment", "mlflow")
    assert mlflow["spec"]["replicas"] == 1 and mlflow["spec"]["strategy"]["type"] == "Recreate"
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    backend = next(a for a in args if a.startswith("--backend-store-uri="))
    db_dir = str(Path(backend.split("sqlite:///", 1)[1]).parent)
    volumes = {v["name"]: v for v in mlflow["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == db_dir)
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "mlflow-db"
    assert "--artifacts-destination=s3://mlflow" in args and "--serve-artifacts" in args
    env = env_of(container)
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    # what components are told (Secret visionnode-mlflow) is this Service
    service = one(docs, "Service", "mlflow")
    tracking = one(docs, "Secret", "visionnode-mlflow")
    uri = base64.b64decode(tracking["data"]["MLFLOW_TRACKING_URI"]).decode()
    assert uri == f"http://mlflow.{NAMESPACE}.svc.cluster.local:{service['spec']['ports'][0]['port']}"


def test_triton_serves_from_minio_with_probes_and_three_ports(rendered):
    docs = rendered["production"]
    triton = one(docs, "Deployment", "triton")
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0].endswith("/triton-openvino")
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    assert {p["port"] for p in one(docs, "Service", "triton")["spec"]["ports"]} == {8000, 8001, 8002}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = container["args"]
    assert "command" not in container, "the image's entrypoint (visionnode stack triton) runs tritonserver"
    assert "--address=0.0.0.0" in args, "in a pod the Service reaches Triton on the pod's address"
    _assert_triton_command_accepts(args)
    repository = next(a for a in args if a.startswith("--repository=")).split("=", 1)[1]
    assert re.fullmatch(rf"s3://minio\.{NAMESPACE}\.svc\.cluster\.local:9000/[a-z0-9.-]+/.+", repository)
    env = env_of(container)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "triton-s3", "key": key}
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory", "python backend shared memory"


def _assert_triton_command_accepts(args: list[str]) -> None:
    """Every manifest arg is an option of the image's entrypoint command, `visionnode stack triton`."""
    from typer.main import get_command

    from visionnode.pipeline.cli import app

    triton = get_command(app).commands["stack"].commands["triton"]  # type: ignore[attr-defined]
    options = {opt for param in triton.params for opt in param.opts}
    for arg in args:
        assert arg.split("=", 1)[0] in options, f"`visionnode stack triton` has no option {arg}"


def test_bucket_job_creates_what_the_services_read(rendered):
    job = one(rendered["production"], "Job", "minio-buckets")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "vn/mlflow" in script and "vn/visionnode" in script
    assert "vn/visionnode/triton-models/" in script  # Triton will not start on an empty S3 prefix


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=",
                           1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def job_env(container: dict[str, Any], secrets_: dict[str, dict[str, str]]) -> dict[str, str]:
    """The bucket Job's environment, each secretKeyRef resolved from `secrets_` (Secret name -> data)."""
    env = {}
    for name, entry in env_of(container).items():
        ref = entry["valueFrom"]["secretKeyRef"] if "valueFrom" in entry else None
        env[name] = secrets_[ref["name"]][ref["key"]] if ref else entry["value"]
    return env


def run_bucket_job(tmp_path: Path, secrets_: dict[str, dict[str, str]], mc: bool) -> tuple[int, str,
                                                                                           list[str]]:
    """The Job's script with its Secrets; `mc` a stand-in that logs each call (or none on PATH)."""
    container = one(base_resources(), "Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-ec"]
    bin_dir, log = tmp_path / "bin", tmp_path / "mc.log"
    bin_dir.mkdir()
    if mc:
        (bin_dir / "mc").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
        (bin_dir / "mc").chmod(0o755)
    shell = {"PATH": f"{bin_dir}:{os.path.dirname(shutil.which('sh') or '/bin/sh')}"}
    done = subprocess.run(["/bin/sh", "-ec", container["args"][0]], capture_output=True, text=True,
                          timeout=30,
                          env={**shell, **job_env(container, secrets_)})
    return done.returncode, done.stderr, log.read_text().splitlines() if log.exists() else []


def test_bucket_job_refuses_the_example_placeholders(tmp_path: Path):
    """Copying an .example.env without filling it in must not give MinIO a guessable password."""
    placeholders = {secret: env_file(example) for example, secret in ENV_EXAMPLES.items()}
    code, stderr, calls = run_bucket_job(tmp_path, placeholders, mc=True)
    assert code == 1 and calls == []
    assert stderr.startswith("error: a Secret (minio-root, visionnode-s3, mlflow-s3, triton-s3) is empty or "
                             "still")


def test_bucket_job_gives_each_client_its_own_scoped_user(tmp_path: Path):
    """As root, the Job creates one user per client Secret and attaches the policy limited to its bucket."""
    filled = {secret: {key: f"{secret}-{key}-{secrets.token_hex(4)}" for key in env_file(example)}
              for example, secret in ENV_EXAMPLES.items()}
    code, stderr, calls = run_bucket_job(tmp_path, filled, mc=True)
    assert code == 0, stderr
    root = filled[ROOT_SECRET]
    assert f"--config-dir /tmp/mc alias set vn http://minio:9000 {root['MINIO_ROOT_USER']} " \
           f"{root['MINIO_ROOT_PASSWORD']}" in calls
    policies = one(rendered_configmaps(), "ConfigMap", "minio-policies")["data"]
    for secret, policy in (("visionnode-s3", "visionnode"), ("mlflow-s3", "mlflow"), ("triton-s3", "triton")):
        key, password = filled[secret]["AWS_ACCESS_KEY_ID"], filled[secret]["AWS_SECRET_ACCESS_KEY"]
        assert f"--config-dir /tmp/mc admin policy create vn {policy} /policies/{policy}.json" in calls
        assert f"--config-dir /tmp/mc admin user add vn {key} {password}" in calls
        assert f"--config-dir /tmp/mc admin policy attach vn {policy} --user {key}" in calls
        assert f"{policy}.json" in policies
    # the other side: with one client's keys empty the Job stops before it touches MinIO
    (tmp_path / "empty").mkdir()
    empty = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    code, _, calls = run_bucket_job(tmp_path / "empty", {**filled, "triton-s3": empty}, mc=True)
    assert code == 1 and calls == []


def rendered_configmaps() -> list[dict[str, Any]]:
    """The ConfigMaps base/kustomization.yaml generates from files, as kustomize names their keys."""
    kustomization = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    configmaps = []
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, source = entry.rpartition("=")
            data[key or Path(source).name] = (MANIFESTS / "base" / source).read_text()
        configmaps.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return configmaps


# -------------------------------------------------------------------------------------- run config

def pipeline_constants() -> dict[str, Any]:
    """Secret names and keys the pipeline's tasks read (pipeline/pipeline.py), without importing the DAG."""
    tree = ast.parse((ROOT / "pipeline" / "pipeline.py").read_text())
    wanted = {"S3_SECRET", "MLFLOW_SECRET", "S3_SECRET_KEYS"}
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id in wanted}


def param_files() -> list[Path]:
    return sorted(MANIFESTS.rglob("pipeline-params.yaml"))


def test_secrets_are_the_ones_the_pipeline_reads(rendered):
    constants = pipeline_constants()
    secrets_ = {d["metadata"]["name"]: d for d in rendered["production"] if d["kind"] == "Secret"}
    assert {constants["S3_SECRET"], constants["MLFLOW_SECRET"]} <= set(secrets_)
    assert set(constants["S3_SECRET_KEYS"]) <= set(secrets_[constants["S3_SECRET"]]["data"])
    example_keys = {line.split("=", 1)[0] for line in S3_ENV_EXAMPLE.read_text().splitlines()
                    if line and not line.startswith("#")}
    assert set(constants["S3_SECRET_KEYS"]) <= example_keys


@pytest.mark.parametrize("params_file", param_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_pipeline_params_point_at_the_deployed_services(rendered, params_file: Path):
    params = yaml.safe_load(params_file.read_text())
    overlay = "production" if "production" in params_file.parts else "local"
    triton = one(rendered[overlay], "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    repository = next(a for a in triton["args"] if a.startswith("--repository=")).split("=", 1)[1]
    assert params["deploy_repository"] == repository, "deploy must write where Triton reads"
    assert params["deploy_triton_http"] == f"triton.{NAMESPACE}.svc.cluster.local:8000"
    assert params["deploy_triton_grpc"] == f"triton.{NAMESPACE}.svc.cluster.local:8001"
    assert params["deploy_replicas"] == f"triton-headless.{NAMESPACE}.svc.cluster.local:8000"
    assert one(rendered[overlay], "Service", "triton-headless")  # what deploy_replicas resolves
    configmap = one(rendered[overlay], "ConfigMap", "visionnode-pipeline-params")
    assert yaml.safe_load(configmap["data"]["params.yaml"]) == params


@pytest.mark.parametrize("params_file", param_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_pipeline_params_are_valid_pipeline_parameters(params_file: Path):
    """Exactly what `visionnode pipeline submit --param-file FILE` does with the file."""
    try:
        from visionnode.pipeline.commands import _params
    except ImportError as exc:
        skip_unless_ci(f"the pipeline does not import yet ({exc})")
    try:
        parsed = _params(None, params_file)
    except ImportError as exc:  # a phase's component module is not written yet
        skip_unless_ci(f"the pipeline does not compile yet ({exc})")
    assert parsed["data_uri"].startswith("s3://")
    assert set(parsed) == set(yaml.safe_load(params_file.read_text()))


@pytest.mark.parametrize("params_file", param_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_pipeline_params_pin_no_location_runs_would_share(params_file: Path):
    """A fixed checkpoint or shard prefix makes every run resume or overwrite the one before (issue 27): the
    pipeline's defaults give each run its checkpoints and each data/settings pair its shards."""
    params = yaml.safe_load(params_file.read_text())
    assert not {"train_checkpoint_uri", "shard_store_uri"} & set(params), params_file


# ------------------------------------------------------------------------------------- credentials

def committed_files() -> list[Path]:
    return [p for p in MANIFESTS.rglob("*") if p.is_file() and p not in USER_ENV_FILES]


def test_no_literal_credentials_committed():
    for path in committed_files():
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path}: an AWS access key id"
        assert "minioadmin" not in text, f"{path}: MinIO's default credentials"
        for match in re.finditer(r"^\s*([A-Z_]+)\s*[=:]\s*(\S+)", text, re.MULTILINE):
            name, value = match.groups()
            if SECRETISH.search(name) and not name.endswith("_URI"):
                assert re.fullmatch(r"<[a-z-]+>", value), f"{path}: {name} has a literal value"
        if path.suffix != ".yaml":
            continue
        for doc in load_docs(path):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "Secret":
                pytest.fail(f"{path}: a Secret manifest is committed (use the secretGenerator + s3.env)")
            for generator in doc.get("secretGenerator", []):
                for literal in generator.get("literals", []):
                    assert not SECRETISH.search(literal.split("=", 1)[0]), f"{path}: secret literal {literal}"
            for _, spec in pod_specs([doc] if "kind" in doc and "metadata" in doc else []):
                for container in spec["containers"]:
                    for name, entry in env_of(container).items():
                        if SECRETISH.search(name):
                            assert "valueFrom" in entry, f"{path}: env {name} is a literal"


def test_example_secret_holds_placeholders_only():
    for example in ENV_EXAMPLES:
        values = env_file(example)
        credentials = {k: v for k, v in values.items() if SECRETISH.search(k) or k.endswith("_USER")}
        assert sorted(credentials.values()) == ["<access-key>", "<secret-key>"], example.name
    assert env_file(S3_ENV_EXAMPLE)["VISIONNODE_S3_ENDPOINT"] == f"http://minio.{NAMESPACE}.svc.cluster.local:9000"


# --------------------------------------------------------------------------- Pod Security "restricted"

def enforced_level(docs: list[dict[str, Any]]) -> str:
    return one(docs, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]


def training_job_in(overlay: str, rendered_: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return one(rendered_[overlay], "PyTorchJob", "resnet152-train")


# The operator's built-in init container (release-1.9 pkg/controller.v1/pytorch/initcontainer.go): what every
# Worker got before we shipped our template. Written here in its structure, with its one template field.
OPERATOR_DEFAULT_TEMPLATE = """
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources: {limits: {cpu: 100m, memory: 20Mi}, requests: {cpu: 50m, memory: 10Mi}}
  command: ['sh', '-c', 'until nslookup {{.MasterAddr}}; do sleep 2; done']
"""


def test_restricted_check_refuses_the_operators_default_init_container(rendered):
    """Both sides of the admission check: our Worker pod passes, the same pod with the built-in one does
    not."""
    job = training_job_in("production-training", rendered)
    assert restricted_violations(operator_pod_spec(job, "Worker")) == []
    refused = restricted_violations(operator_pod_spec(job, "Worker", template=OPERATOR_DEFAULT_TEMPLATE))
    assert refused == ["init-pytorch: allowPrivilegeEscalation must be false",
                       "init-pytorch: capabilities.drop must include ALL"]
    # the pod-level defaults (runAsNonRoot, seccomp) cover it here, but not in a pod without them
    bare = {"containers": render_operator_template(OPERATOR_DEFAULT_TEMPLATE, "x-master-0")}
    assert "init-pytorch: runAsNonRoot must be true" in restricted_violations(bare)
    assert "init-pytorch: seccompProfile must be RuntimeDefault or Localhost" in restricted_violations(bare)
    ours = {"containers": render_operator_template(OPERATOR_TEMPLATE.read_text(), "x-master-0")}
    assert restricted_violations(ours) == [], "our template is admissible in any restricted namespace"


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_pod_passes_the_namespace_pod_security_level(rendered, overlay: str):
    """Every pod the cluster would create here, the Workers' operator-injected init container included."""
    assert enforced_level(rendered["production"]) == "restricted"
    specs = list(pod_specs(rendered[overlay]))
    assert specs
    for label, spec in specs:
        assert restricted_violations(spec) == [], label
    if overlay in TRAINING_OVERLAYS:
        worker = dict(specs)["PyTorchJob/resnet152-train/Worker"]
        assert [c["name"] for c in worker["initContainers"]] == ["init-pytorch"]


def render_operator_kustomization(tmp_path: Path) -> list[dict[str, Any]]:
    """manifests/training-operator rendered with its remote base replaced by the upstream objects we patch."""
    command = renderer()
    if command is None:
        skip_unless_ci("neither `kustomize` nor `kubectl` is installed")
    copy = tmp_path / "training-operator"
    shutil.copytree(OPERATOR_DIR, copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    remote = [r for r in kustomization["resources"] if r.startswith("github.com/")]
    upstream = "github.com/kubeflow/training-operator.git/manifests/overlays/standalone"
    assert remote == [f"{upstream}?ref={OPERATOR_VERSION}"]
    # the upstream standalone overlay's Deployment (manifests/base/deployment.yaml), as far as the patch
    # touches it
    (copy / "upstream.yaml").write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "training-operator",
                                                                    "namespace": "kubeflow"},
        "spec": {"selector": {"matchLabels": {"control-plane": "kubeflow-training-operator"}},
                 "template": {"metadata": {"labels": {"control-plane": "kubeflow-training-operator"}},
                              "spec": {"containers": [{"name": "training-operator",
                                                       "image": "kubeflow/training-operator",
                                                       "command": ["/manager"]}]}}}}))
    kustomization["resources"] = ["upstream.yaml"]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    done = subprocess.run([*command, str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def template_file_in_operator(docs: list[dict[str, Any]]) -> str | None:
    """The text the operator finds at its template path, or None (then it uses its built-in one)."""
    deployment = one(docs, "Deployment", "training-operator")
    spec = deployment["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "training-operator")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is None or not OPERATOR_TEMPLATE_FILE.startswith(mount["mountPath"].rstrip("/") + "/"):
            continue
        key = OPERATOR_TEMPLATE_FILE[len(mount["mountPath"].rstrip("/")) + 1:]
        configmap = one(docs, "ConfigMap", source["name"])
        return configmap["data"].get(key)
    return None


def test_training_operator_reads_our_init_container_template(tmp_path: Path):
    docs = render_operator_kustomization(tmp_path)
    assert {d["metadata"]["namespace"] for d in docs} == {"kubeflow"}
    assert template_file_in_operator(docs) == OPERATOR_TEMPLATE.read_text()
    # the other side: without the patch the operator finds no file and falls back to its built-in template
    unpatched = [d for d in docs if d["kind"] != "Deployment"] + [yaml.safe_load(yaml.safe_dump(
        one(docs, "Deployment", "training-operator")))]
    unpatched[-1]["spec"]["template"]["spec"]["containers"][0].pop("volumeMounts")
    assert template_file_in_operator(unpatched) is None


def test_readme_names_the_training_operator_version_and_install_command():
    readme = (MANIFESTS / "README.md").read_text()
    kustomization = (OPERATOR_DIR / "kustomization.yaml").read_text()
    assert f"?ref={OPERATOR_VERSION}" in kustomization
    assert f"training operator {OPERATOR_VERSION}" in readme
    assert "kubectl apply --server-side -k manifests/training-operator" in readme
    assert "kubeflow.org/v1" in readme


# ------------------------------------------------------------------------------ PyTorchJob restarts

def restarts_counted(nodes: int, preemptions_per_node: int) -> int:
    """What the operator (core.PastBackoffLimit) sums after pre-emptions: restartCount over running pods.

    Static rendezvous: a pre-empted node ends every pod's torchrun, so each pre-emption restarts up to every
    pod once (the pre-empted pod is often recreated from scratch, but may restart in place)."""
    return nodes * preemptions_per_node * nodes


def survives(backoff_limit: int, nodes: int, preemptions_per_node: int = 1) -> bool:
    return restarts_counted(nodes, preemptions_per_node) < backoff_limit  # the job fails at >= backoffLimit


@pytest.mark.parametrize("overlay", TRAINING_OVERLAYS)
def test_training_job_survives_one_preemption_per_node(rendered, overlay: str):
    job = training_job_in(overlay, rendered)
    nodes = sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values())
    limit = job["spec"]["runPolicy"]["backoffLimit"]
    assert survives(limit,
                    nodes), f"backoffLimit {limit} < {restarts_counted(nodes, 1) + 1} for {nodes} nodes"
    assert not survives(3, nodes), "the check would have passed the old limit"
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        container = next(c for c in replica["template"]["spec"]["containers"] if c["name"] == "pytorch")
        # torchrun as PID 1 exits 1 when its processes exit 143 (pre-empted, checkpoint written), and
        # restartPolicy ExitCode treats exit codes below 128 as permanent: it would end the job instead.
        if container["command"] == ["torchrun"]:
            assert replica["restartPolicy"] == "OnFailure", role


def test_readme_says_what_a_preemption_does():
    readme = (MANIFESTS / "README.md").read_text()
    assert "a preempted job restarts where it stopped" not in readme
    assert "backoffLimit" in readme and "last checkpoint" in readme


# ------------------------------------------------------------------------------ Triton after restarts

class FakeTriton(http.server.BaseHTTPRequestHandler):
    """Triton's HTTP endpoints that triton_models.py uses: a repository index, model readiness, load."""

    repository: set[str] = set()
    loaded: set[str] = set()

    def _answer(self, status: int, body: Any = None) -> None:
        data = json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        match = re.fullmatch(r"/v2/models/([^/]+)/ready", self.path)
        if self.path == "/v2/health/live":
            self._answer(200)
        elif match:
            self._answer(200 if match.group(1) in self.loaded else 400)
        else:
            self._answer(404)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        match = re.fullmatch(r"/v2/repository/models/([^/]+)/load", self.path)
        if self.path == "/v2/repository/index":
            self._answer(200, [{"name": n} for n in sorted(self.repository)])
        elif match and match.group(1) in self.repository:
            self.loaded.add(match.group(1))
            self._answer(200)
        else:
            self._answer(400, {"error": "failed to load"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_triton() -> Iterator[tuple[str, type[FakeTriton]]]:
    handler = type("Triton", (FakeTriton,), {"repository": set(), "loaded": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def triton_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]


def run_triton_hook(command: list[str], container: dict[str, Any], url: str) -> int:
    """A probe/hook command of the Triton container, run here with the script from its ConfigMap."""
    script = one(rendered_configmaps(), "ConfigMap", "triton-models")["data"]["triton_models.py"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    path = Path(command[1])
    assert command[0] == "python" and str(path.parent) in mounts and path.name == "triton_models.py"
    env = {name: e["value"] for name, e in env_of(container).items() if "value" in e}
    done = subprocess.run([sys.executable, "-c", script, *command[2:]], capture_output=True, text=True,
                          timeout=30,
                          env={**env, "TRITON_LOCAL_URL": url, "TRITON_START_WAIT_S": "5"})
    return done.returncode


def test_triton_reloads_deployed_models_after_a_restart_and_is_not_ready_before(rendered, fake_triton):
    url, triton = fake_triton
    container = triton_container(rendered["production"])
    ready = container["readinessProbe"]["exec"]["command"]
    load = container["lifecycle"]["postStart"]["exec"]["command"]
    models = env_of(container)["TRITON_MODELS"]["value"].split(",")
    # before the first deploy: nothing to load, ready, so deploy reaches it through the Service
    assert run_triton_hook(ready, container, url) == 0
    assert run_triton_hook(load, container, url) == 0 and triton.loaded == set()
    # a restarted server: the models are in the repository but not loaded (explicit model control)
    triton.repository |= set(models) | {"some_other_model"}
    assert run_triton_hook(ready, container, url) == 1, "ready with a deployed model not loaded"
    assert run_triton_hook(load, container, url) == 0
    assert triton.loaded == set(models), "loads exactly the deployed VisionNode models"
    assert run_triton_hook(ready, container, url) == 0
    triton.loaded.discard(models[1])
    assert run_triton_hook(ready, container, url) == 1, "every deployed model must be ready"


@pytest.mark.parametrize("params_file", param_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_triton_loads_the_models_deploy_publishes(rendered, params_file: Path):
    from visionnode.components.common.serving.triton import JPEG_SUFFIX

    model = yaml.safe_load(params_file.read_text())["deploy_model_name"]
    overlay = "production" if "production" in params_file.parts else "local"
    container = triton_container(rendered[overlay])
    assert env_of(container)["TRITON_MODELS"]["value"].split(",") == [model, model + JPEG_SUFFIX]


# ------------------------------------------------------------------------------------ S3 credentials

def secret_refs(container: dict[str, Any]) -> set[str]:
    names = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
             if "secretKeyRef" in e.get("valueFrom", {})}
    return names | {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_minio_root_credentials_reach_only_minio_and_its_setup_job(rendered, overlay: str):
    expected = {"Deployment/minio": {ROOT_SECRET}, "Job/minio-buckets": {ROOT_SECRET, "visionnode-s3",
                                                                         "mlflow-s3",
                                                                         "triton-s3"},
                "Deployment/mlflow": {"mlflow-s3"}, "Deployment/triton": {"triton-s3"},
                "PyTorchJob/resnet152-train/Master": {"visionnode-s3", "visionnode-mlflow"},
                "PyTorchJob/resnet152-train/Worker": {"visionnode-s3", "visionnode-mlflow"}}
    specs = dict(pod_specs(rendered[overlay]))
    assert specs and set(specs) <= set(expected)
    for label, spec in specs.items():
        used = set().union(*(secret_refs(c) for c in spec.get("initContainers", []) + spec["containers"]))
        assert used == expected[label], label
    for secret in (d for d in rendered[overlay] if d["kind"] == "Secret"
                   and d["metadata"]["name"] != ROOT_SECRET):
        assert not any(key.startswith("MINIO_ROOT") for key in secret["data"]), secret["metadata"]["name"]


def policy_buckets(policy: dict[str, Any]) -> set[str]:
    """The buckets a MinIO/S3 policy grants anything on (None for a wildcard)."""
    buckets = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in statement["Action"]), statement["Action"]
        for resource in statement["Resource"]:
            bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
            buckets.add(bucket if "*" not in bucket else "*")
    return buckets


def test_each_s3_user_is_limited_to_its_bucket():
    policies = {name.removesuffix(".json"): json.loads(text) for name, text in
                one(rendered_configmaps(), "ConfigMap", "minio-policies")["data"].items()}
    assert {name: policy_buckets(p) for name, p in policies.items()} == {
        "visionnode": {"visionnode"}, "mlflow": {"mlflow"}, "triton": {"visionnode"}}
    triton_objects = {r for s in policies["triton"]["Statement"] for r in s["Resource"] if "/" in r}
    assert all(r.startswith("arn:aws:s3:::visionnode/triton-models/") for r in triton_objects), triton_objects
    # the other side: a root-like policy is caught
    assert policy_buckets({"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"],
                                          "Resource": ["arn:aws:s3:::*"]}]}) == {"*"}
    with pytest.raises(AssertionError):
        policy_buckets({"Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                       "Resource": ["arn:aws:s3:::mlflow"]}]})


# --------------------------------------------------------------------------------- MLflow allowed hosts

def test_mlflow_accepts_only_its_own_host_names(rendered):
    from mlflow.server.security_utils import is_allowed_host_header

    docs = rendered["production"]
    env = env_of(one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0])
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")]
    port = one(docs, "Service", "mlflow")["spec"]["ports"][0]["port"]
    tracking = base64.b64decode(one(docs, "Secret",
                                    "visionnode-mlflow")["data"]["MLFLOW_TRACKING_URI"]).decode()
    for host in (tracking.split("//", 1)[1], f"mlflow:{port}", f"mlflow.{NAMESPACE}:{port}",
                 f"mlflow.{NAMESPACE}.svc:{port}", "localhost:5000", "127.0.0.1:15000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("mlflow.attacker.example", f"mlflow.attacker.example:{port}",
                 f"mlflow.{NAMESPACE}.svc.cluster.local.attacker.example:{port}", f"mlflowx:{port}",
                 "localhost.attacker.example", "attacker.example"):
        assert not is_allowed_host_header(allowed, host), host
    # the other side: the old pattern let a foreign name through
    assert is_allowed_host_header(["mlflow.*"], "mlflow.attacker.example")
