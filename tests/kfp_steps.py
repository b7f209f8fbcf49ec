"""Tiny KFP components for tests of the pipeline's control flow (no `from __future__ import annotations` here:
KFP reads a component's parameter types from its annotations)."""

from kfp import dsl


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def a_step(fail: bool):
    """Succeeds, or fails with exit code 1 when `fail`."""
    if fail:
        raise SystemExit(1)


@dsl.pipeline(name="finish-test")
def one_step_then_finish(fail: bool):
    """One step inside an exit handler whose final step is the pipeline's own finish_op."""
    from visionnode.pipeline.finish import finish_op

    finish = finish_op()
    with dsl.ExitHandler(finish):
        a_step(fail=fail)
