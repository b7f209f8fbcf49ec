"""Champion/challenger on real services: deploy stages a candidate beside the champion, benchmark measures
both and decides, promote or reject acts on every Triton replica and in the MLflow registry.

The models are brightness classifiers whose top-1 on the labelled images is known in advance (100 % for the
identity mapping, 50 % when half the classes are mapped wrong), so the accuracy rule is tested on real served
answers, not on numbers the test makes up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.serving_helpers import class_names, labelled_images, make_brightness_model, serve
from visionnode.components.benchmark.accuracy import count_right, is_right
from visionnode.components.benchmark.benchmark import benchmark
from visionnode.components.benchmark.config import BenchmarkConfig
from visionnode.components.benchmark.decision import decide
from visionnode.components.common.data.samples import SampleImages
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.jsonio import write_json
from visionnode.components.common.registry import CHAMPION_ALIAS, PROMOTION_TAG
from visionnode.components.common.serving.triton import (
    parse_repository,
    production_models,
    replica_urls,
    triton_http_client,
)
from visionnode.components.deploy.deploy import DeployConfig, deploy
from visionnode.components.deploy.promote import PromoteConfig, promote, reject
from visionnode.components.local.stack import LocalStack, StackConfig
from visionnode.components.local.stack.process import free_ports
from visionnode.pipeline.compile import compiled_spec, parameter_defaults
from visionnode.pipeline.params import check_params

SIZE, CLASSES = 32, 6
PERFECT = list(range(CLASSES))
HALF_WRONG = [0, 1, 2, 0, 1, 2]            # classes 3, 4, 5 answered as 0, 1, 2: top-1 exactly 50 %
ROTATED = [1, 2, 3, 4, 5, 0]               # output j answers class ROTATED[j]: right by name, never by index
EASY_SLO = {"target_qps": 1.0, "target_p99_ms": 60_000.0}
IMPOSSIBLE_SLO = {"target_qps": 1.0, "target_p99_ms": 0.001}


# ------------------------------------------------------------------------------------ the rule, known answers
@pytest.mark.parametrize("slo_met, candidate, champion, allowed, promote_it", [
    (True, 80.0, None, 0.5, True),       # no champion yet: the SLO alone decides
    (False, 99.0, None, 0.5, False),
    (True, 80.0, 80.5, 0.5, True),       # exactly the allowed drop: promoted
    (True, 79.9, 80.5, 0.5, False),      # 0.6 points lower: refused
    (True, 90.0, 80.0, 0.5, True),       # better
    (True, 80.0, 80.0, 0.0, True),       # no drop allowed, none happened
    (True, 79.99, 80.0, 0.0, False),
    (True, None, 80.0, 0.5, False),      # a champion but nothing to compare on: not ruled out, refused
    (False, 90.0, 80.0, 0.5, False),     # better but too slow
])
def test_promotion_rule_on_both_sides_of_each_threshold(slo_met: bool, candidate: float | None,
                                                        champion: float | None, allowed: float,
                                                        promote_it: bool) -> None:
    verdict = "SLO met" if slo_met else "SLO missed: P99 2 ms > 1 ms"
    decision = decide(slo_met, verdict, candidate, champion, allowed)
    assert decision.promote is promote_it, decision


def test_a_refusal_names_every_reason() -> None:
    both = decide(False, "SLO missed: P99 9 ms > 1 ms", 70.0, 80.0, 0.5)
    assert not both.promote and "SLO missed" in both.reason and "10.00 points below" in both.reason
    assert decide(True, "SLO met", 80.0, None, 0.5).reason == "SLO met; no champion to compare top-1 with"


def test_an_answer_is_right_by_class_name_and_a_shared_name_needs_the_index_too() -> None:
    names = ["tench", "crane", "goldfish", "crane"]   # ImageNet lists two classes called crane
    assert is_right("0.9:0:tench", 0, names) and is_right("0.9:5:goldfish", 2, names)  # any index, same name
    assert not is_right("0.9:0:goldfish", 0, names)  # same index, other name
    assert is_right("0.9:3:crane", 3, names) and not is_right("0.9:1:crane", 3, names)
    assert is_right("0.9:2", 2, names) and not is_right("0.9:1", 2, names)  # a model served without labels
    assert is_right("0.9:2:goldfish", 2, None) and not is_right("0.9:1:goldfish", 2, None)  # unnamed images


def test_a_model_whose_labels_name_none_of_the_classes_is_counted_by_index() -> None:
    names = ["tench", "goldfish", "shark"]
    # a wnid-labelled model on description-named images: its labels follow another naming
    assert count_right(["0.9:0:n01440764", "0.9:1:n01443537", "0.9:0:n01440764"], [0, 1, 2], names) \
        == (2, True)
    # one answer that names a class is enough to count every answer by name
    assert count_right(["0.9:5:tench", "0.9:1:n01443537", "0.9:2:shark"], [0, 1, 2], names) == (2, False)
    assert count_right(["0.9:0", "0.9:2"], [0, 1], names) == (1, True)  # served without labels
    assert count_right(["0.9:0", "0.9:2"], [0, 1], None) == (1, False)  # unnamed images: index is the rule


def test_replica_addresses() -> None:
    listed = replica_urls("127.0.0.1:8000, 127.0.0.1:9000,127.0.0.1:8000")
    assert listed == ["127.0.0.1:8000", "127.0.0.1:9000"]
    assert replica_urls("localhost:8000") == ["127.0.0.1:8000"]  # a name: each of its addresses (/etc/hosts)
    with pytest.raises(ConfigError, match="'127.0.0.1' is not HOST:PORT"):
        replica_urls("127.0.0.1")
    with pytest.raises(ConfigError, match="pipeline parameter refused by deploy"):
        check_params(parameter_defaults(compiled_spec()) | {"data_uri": "/d", "deploy_replicas": "host"},
                     local=True)


def test_a_restarted_triton_loads_production_models_each_before_its_front_end_and_no_candidate() -> None:
    index = ["b_jpeg", "a_candidate_jpeg", "b", "a", "a_candidate", "a_jpeg", "b_candidate"]
    assert production_models(index) == ["a", "a_jpeg", "b", "b_jpeg"]


# ------------------------------------------------------------------------------------ on the real stack
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("brightness")
    return {"perfect": make_brightness_model(root / "perfect", PERFECT, SIZE),
            "half_wrong": make_brightness_model(root / "half_wrong", HALF_WRONG, SIZE),
            "rotated": make_brightness_model(root / "rotated", ROTATED, SIZE,
                                             names=[class_names(CLASSES)[c] for c in ROTATED]),
            "wnid_labelled": make_brightness_model(root / "wnid_labelled", PERFECT, SIZE,
                                                   names=[f"n{c:08d}" for c in PERFECT])}


@pytest.fixture(scope="module")
def labelled() -> SampleImages:
    images, labels = labelled_images(per_class=4, size=SIZE, classes=CLASSES)
    return SampleImages(images, "brightness levels", labels, class_names(CLASSES))


def _logits(url: str, model: str, images: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return client.infer(model, [tensor]).as_numpy("logits")


def _top1(url: str, model: str, sample: SampleImages) -> float:
    batches = [sample.images[i:i + 8] for i in range(0, len(sample.images), 8)]
    answers = np.concatenate([_logits(url, model, batch) for batch in batches])
    return 100.0 * float((answers.argmax(1) == sample.labels).mean())


def _stage_and_judge(model_dir: Path, name: str, pool: SampleImages, tmp: Path, **slo: float):
    staged = deploy(DeployConfig(model_dir=model_dir, model_name=name, check_images=4))
    endpoint = write_json(tmp / f"{name}-v{staged.model_version}.json", staged)
    judged = benchmark(BenchmarkConfig(model=staged.candidate_name, champion=name, protocol="http",
                                       concurrency=[1], duration_s=0.5, warmup_s=0.1, baselines=False,
                                       **slo), pool=pool)
    return staged, endpoint, judged


def _files(stack: LocalStack, model: str, version: int) -> list[str]:
    from visionnode.components.common.storage.s3 import s3_client

    location = parse_repository(stack.endpoints.triton_repository or "").location
    assert location is not None
    folder = location.child(model).child(str(version))
    found = s3_client().list_objects_v2(Bucket=folder.bucket, Prefix=folder.key + "/").get("Contents", [])
    return sorted(item["Key"].rsplit("/", 1)[1] for item in found)


def _registry():
    import os

    import mlflow

    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def test_the_first_candidate_is_staged_beside_nothing_and_promoted_on_the_slo_alone(
        stack: LocalStack, models: dict[str, Path], labelled: SampleImages, tmp_path: Path) -> None:
    url = stack.endpoints.triton_http
    staged, endpoint, judged = _stage_and_judge(models["perfect"], "first", labelled, tmp_path, **EASY_SLO)
    client = triton_http_client(url)
    assert not client.is_model_ready("first"), "deploy put the new model live before it proved itself"
    assert client.is_model_ready("first_candidate", str(staged.model_version))
    assert judged.champion_top1 is None and judged.candidate_top1 == 100.0
    assert judged.decision.promote and "no champion" in judged.decision.reason

    result = promote(PromoteConfig(endpoint=endpoint, model_dir=models["perfect"],
                                   reason=judged.decision.reason))
    assert result.promoted and result.outcome.startswith("promoted: first version 1")
    assert client.is_model_ready("first", "1") and client.is_model_ready("first_jpeg", "1")
    assert not client.is_model_ready("first_candidate") and not client.is_model_ready("first_candidate_jpeg")
    assert _top1(url, "first", labelled) == 100.0
    registry = _registry()
    champion = registry.get_model_version_by_alias("first", CHAMPION_ALIAS)
    assert f"first/{champion.version}" == staged.registered_version
    assert champion.tags["triton_model"] == "first" and champion.tags["triton_version"] == "1"
    assert champion.tags[PROMOTION_TAG].startswith("promoted: ")


def test_a_less_accurate_candidate_is_refused_and_the_champion_serves_on(
        stack: LocalStack, models: dict[str, Path], labelled: SampleImages, tmp_path: Path) -> None:
    url = stack.endpoints.triton_http
    serve(DeployConfig(model_dir=models["perfect"], model_name="acc", check_images=4), tmp_path)
    champion_before = _registry().get_model_version_by_alias("acc", CHAMPION_ALIAS).version

    staged, endpoint, judged = _stage_and_judge(models["half_wrong"], "acc", labelled, tmp_path, **EASY_SLO)
    assert (judged.candidate_top1, judged.champion_top1) == (50.0, 100.0)  # measured through Triton
    assert judged.slo_met and not judged.decision.promote
    assert "50.00 points below the champion's 100.00 %" in judged.decision.reason
    # while staged, the candidate answers beside the champion, which still gives its own answers
    assert _top1(url, "acc_candidate", labelled) == 50.0 and _top1(url, "acc", labelled) == 100.0

    result = reject(PromoteConfig(endpoint=endpoint, reason=judged.decision.reason))
    assert not result.promoted and result.outcome == f"not promoted: {judged.decision.reason}"
    client = triton_http_client(url)
    assert client.is_model_ready("acc", "1") and not client.is_model_ready("acc_candidate")
    assert _top1(url, "acc", labelled) == 100.0
    assert _files(stack, "acc_candidate", staged.model_version) == ["WITHDRAWN"]  # its model files are gone
    registry = _registry()
    assert registry.get_model_version_by_alias("acc", CHAMPION_ALIAS).version == champion_before
    refused = registry.get_model_version("acc", staged.registered_version.split("/")[1])
    assert refused.tags[PROMOTION_TAG] == result.outcome


def test_a_champion_that_lists_its_classes_in_another_order_is_judged_by_class_name(
        stack: LocalStack, models: dict[str, Path], labelled: SampleImages, tmp_path: Path) -> None:
    """As after a class is added and the sorted class indices move: judged by index, the champion would
    score 0 % and a half-wrong candidate would replace it."""
    serve(DeployConfig(model_dir=models["rotated"], model_name="order", check_images=4), tmp_path)
    _, endpoint, judged = _stage_and_judge(models["half_wrong"], "order", labelled, tmp_path, **EASY_SLO)
    assert (judged.candidate_top1, judged.champion_top1) == (50.0, 100.0)
    assert _top1(stack.endpoints.triton_http, "order", labelled) == 0.0  # by index
    assert judged.slo_met and not judged.decision.promote
    reject(PromoteConfig(endpoint=endpoint, reason=judged.decision.reason))


def test_a_champion_labelled_in_another_naming_is_counted_by_index_and_the_decision_says_so(
        stack: LocalStack, models: dict[str, Path], labelled: SampleImages, tmp_path: Path) -> None:
    serve(DeployConfig(model_dir=models["wnid_labelled"], model_name="naming", check_images=4), tmp_path)
    _, endpoint, judged = _stage_and_judge(models["half_wrong"], "naming", labelled, tmp_path, **EASY_SLO)
    assert (judged.candidate_top1, judged.champion_top1) == (50.0, 100.0)  # not 0 % by name
    assert not judged.decision.promote
    assert "the champion's labels name none of these classes, so its answers were counted by index" \
        in judged.decision.reason
    reject(PromoteConfig(endpoint=endpoint, reason=judged.decision.reason))


def test_a_candidate_that_misses_the_slo_is_refused_and_one_that_meets_it_is_promoted(
        stack: LocalStack, models: dict[str, Path], labelled: SampleImages, tmp_path: Path) -> None:
    url = stack.endpoints.triton_http
    serve(DeployConfig(model_dir=models["perfect"], model_name="slo", check_images=4), tmp_path)

    _, endpoint, slow = _stage_and_judge(models["perfect"], "slo", labelled, tmp_path, **IMPOSSIBLE_SLO)
    assert not slow.slo_met and not slow.decision.promote and slow.decision.reason.startswith("SLO missed")
    reject(PromoteConfig(endpoint=endpoint, reason=slow.decision.reason))
    assert triton_http_client(url).is_model_ready("slo", "1") and _top1(url, "slo", labelled) == 100.0

    staged, endpoint, fast = _stage_and_judge(models["perfect"], "slo", labelled, tmp_path, **EASY_SLO)
    assert fast.decision.promote and (fast.candidate_top1, fast.champion_top1) == (100.0, 100.0)
    promote(PromoteConfig(endpoint=endpoint, model_dir=models["perfect"], reason=fast.decision.reason))
    client = triton_http_client(url)
    assert staged.model_version == 3 and client.is_model_ready("slo", "3")  # 2 was the refused one
    assert not client.is_model_ready("slo", "1")
    assert _registry().get_model_version_by_alias("slo", CHAMPION_ALIAS).tags["triton_version"] == "3"


def test_a_restarted_triton_serves_the_champion_again_and_not_a_staged_candidate(
        stack: LocalStack, models: dict[str, Path], labelled: SampleImages, tmp_path: Path) -> None:
    """Triton (explicit model control) starts with nothing loaded. A Triton the stack starts loads what
    promote left serving, as a restarted pod's postStart hook does; without it the next run would find no
    champion and promote on the SLO alone. Its repository here is a directory deploy and promote also
    publish to."""
    repository = tmp_path / "repository"
    serve(DeployConfig(model_dir=models["perfect"], model_name="kept", check_images=4,
                       repository=str(repository)), tmp_path)
    staged = deploy(DeployConfig(model_dir=models["half_wrong"], model_name="kept", check_images=4,
                                 repository=str(repository)))
    http, grpc, metrics = free_ports(3, avoid=stack.config.ports())
    restarted = LocalStack(StackConfig(state_dir=tmp_path / "restarted", with_s3=False, with_mlflow=False,
                                       triton_repository=str(repository), triton_http_port=http,
                                       triton_grpc_port=grpc, triton_metrics_port=metrics,
                                       startup_timeout_s=180.0, die_with_parent=True))
    restarted.up()
    try:
        url = restarted.endpoints.triton_http
        client = triton_http_client(url)
        assert client.is_model_ready("kept", "1") and client.is_model_ready("kept_jpeg", "1")
        assert not client.is_model_ready(staged.candidate_name)
        assert not client.is_model_ready(staged.candidate_name + "_jpeg")
        assert _top1(url, "kept", labelled) == 100.0
    finally:
        restarted.down()
        reject(PromoteConfig(endpoint=write_json(tmp_path / "staged.json", staged), reason="test done"))


# ------------------------------------------------------------------------------------ two replicas
@pytest.fixture()
def second_replica(stack: LocalStack, tmp_path: Path):
    """A second Triton on free ports reading the same model repository, as a second pod of the Deployment."""
    http, grpc, metrics = free_ports(3, avoid=stack.config.ports())
    replica = LocalStack(StackConfig(state_dir=tmp_path / "replica", with_s3=False, with_mlflow=False,
                                     triton_repository=stack.endpoints.triton_repository,
                                     triton_http_port=http, triton_grpc_port=grpc,
                                     triton_metrics_port=metrics, startup_timeout_s=180.0,
                                     die_with_parent=True, serve_promoted=False))  # not the session's models
    replica.up()
    try:
        yield replica.endpoints.triton_http
    finally:
        replica.down()


def test_promotion_reaches_every_replica_and_no_request_fails_meanwhile(
        stack: LocalStack, second_replica: str, models: dict[str, Path], labelled: SampleImages,
        tmp_path: Path) -> None:
    replicas = [stack.endpoints.triton_http, second_replica]
    spec = ",".join(replicas)
    first, _ = serve(DeployConfig(model_dir=models["perfect"], model_name="pair", replicas=spec,
                                  check_images=4), tmp_path)
    assert first.replicas == replicas
    for url in replicas:
        assert triton_http_client(url).is_model_ready("pair", "1"), url

    images = labelled.images[:2]
    answered = dict.fromkeys(replicas, 0)
    failures: list[str] = []
    stop = threading.Event()

    def keep_asking(url: str) -> None:
        while not stop.is_set():
            try:
                _logits(url, "pair", images)
                answered[url] += 1
            except Exception as exc:  # any failed request during the promotion is what this test looks for
                failures.append(f"{url}: {exc}")

    workers = [threading.Thread(target=keep_asking, args=(url,)) for url in replicas]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        before = dict(answered)
        staged, promoted = serve(DeployConfig(model_dir=models["perfect"], model_name="pair", replicas=spec,
                                              check_images=4), tmp_path)
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    print(f"requests answered during the promotion: {answered} (before it began: {before}); "
          f"failures: {len(failures)}")
    assert failures == []
    assert all(answered[url] - before[url] > 20 for url in replicas), answered
    assert promoted.promoted and promoted.replicas == replicas and len(promoted.checks) == 2
    for url in replicas:
        client = triton_http_client(url)
        assert client.is_model_ready("pair", "2") and not client.is_model_ready("pair", "1"), url
        assert not client.is_model_ready("pair_candidate"), url
