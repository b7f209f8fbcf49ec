"""The pipeline's final step (a KFP exit handler): it runs after every other step, failed or not, and ends
the run's MLflow parent run with the run's real status and summary (components/common/run_summary.py)."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from visionnode.components.common.adapters.kfp import phase_component


# Any phase image holds what this step needs (the package and mlflow); it runs in deploy's.
@phase_component("deploy")
def finish_op(
    status: dsl.PipelineTaskFinalStatus,
    summary: Output[Markdown],
):
    """End the pipeline's MLflow parent run with the run's real status (FINISHED, FAILED or KILLED) and its
    summary: the headline figures of every step and the promotion outcome (`promoted: ...` or
    `not promoted: <reason>`). Runs last, whether the other steps succeeded or not.

    Args:
        status: KFP's final status of the steps this one waits for (state and error message).
        summary: Output Markdown: the run's status, the promotion outcome and the headline figures.
    """
    from pathlib import Path

    from visionnode.components.common.jsonio import atomic_write_text
    from visionnode.components.common.run_summary import finish_pipeline_run

    finished = finish_pipeline_run(status.state, status.error_message or "")
    text = finished.markdown if finished else f"## Pipeline run: {status.state}\n\n(MLflow tracking is off)\n"
    atomic_write_text(Path(summary.path), text)
    summary.metadata.update({"status": finished.status if finished else status.state,
                             "promotion": finished.summary["promotion"] if finished else ""})
