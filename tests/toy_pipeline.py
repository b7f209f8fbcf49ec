"""A three-step pipeline for the local cache's tests: make -> use (cached) -> side (never cached).

Each step appends its name to the file $TOY_EXECUTIONS, so a test sees which steps really ran. Kept apart from
the tests: kfp reads component signatures at run time, which `from __future__ import annotations` would turn
into strings.
"""

from kfp import dsl


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def make_op(x: int, out: dsl.Output[dsl.Dataset], metrics: dsl.Output[dsl.Metrics]) -> None:
    import os

    with open(os.environ["TOY_EXECUTIONS"], "a") as log:
        log.write("make\n")
    with open(out.path, "w") as fh:
        fh.write(str(x))
    from visionnode.components.common.adapters.kfp import record_metrics

    record_metrics(metrics, {"x": x})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def use_op(data: dsl.Input[dsl.Dataset], fail: bool, out: dsl.Output[dsl.Dataset]) -> None:
    import os

    with open(os.environ["TOY_EXECUTIONS"], "a") as log:
        log.write("use\n")
    if fail:
        raise SystemExit("use failed on purpose")
    with open(data.path) as fh, open(out.path, "w") as result:
        result.write(fh.read() + "!")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def side_op(data: dsl.Input[dsl.Dataset]) -> None:
    import os

    with open(os.environ["TOY_EXECUTIONS"], "a") as log:
        log.write("side\n")


@dsl.pipeline(name="toy")
def toy_pipeline(x: int = 1, fail: bool = False) -> None:
    made = make_op(x=x).set_caching_options(True)
    used = use_op(data=made.outputs["out"], fail=fail).set_caching_options(True)
    side_op(data=used.outputs["out"]).set_caching_options(False)


TOY_STEPS = ("make", "use", "side")
