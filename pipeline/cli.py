"""The `visionnode` command: one sub-command per phase plus `stack`, `data` and `pipeline`.

Each module in COMMANDS exposes `register(app)`, which adds its thin Typer adapters.
"""

from __future__ import annotations

import typer

from visionnode.components.benchmark import cli as benchmark_cli
from visionnode.components.deploy import cli as deploy_cli
from visionnode.components.local import data_cli
from visionnode.components.local.stack import cli as stack_cli
from visionnode.components.quantize import cli as quantize_cli
from visionnode.components.shard import cli as shard_cli
from visionnode.components.train import cli as train_cli
from visionnode.components.transfer import cli as transfer_cli
from visionnode.components.validate import cli as validate_cli
from visionnode.pipeline import commands as pipeline_commands

# the local tooling, the phases in DAG order, the pipeline
COMMANDS = (data_cli, stack_cli, validate_cli, shard_cli, transfer_cli, train_cli, quantize_cli, deploy_cli,
            benchmark_cli, pipeline_commands)

app = typer.Typer(
    name="visionnode",
    help="VisionNode-152: ResNet-152 on ImageNet-1K — validate, shard, transfer, train, quantize, deploy, "
         "benchmark — as a Kubeflow pipeline or locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

def _print_version(value: bool) -> None:
    if value:
        from visionnode.components.common.adapters.kfp import project_version

        typer.echo(f"visionnode {project_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """VisionNode-152: ResNet-152 on ImageNet-1K as a Kubeflow pipeline or locally."""


for commands in COMMANDS:
    commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
