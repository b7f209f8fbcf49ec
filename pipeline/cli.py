"""The `visionnode` command: one sub-command per phase plus `stack`, `data` and `pipeline`.

Each module listed in COMMAND_MODULES exposes `register(app)`, which adds its thin Typer adapters.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "visionnode.components.local.data_cli",
    "visionnode.components.local.stack.cli",
    "visionnode.components.validate.cli",
    "visionnode.components.shard.cli",
    "visionnode.components.transfer.cli",
    "visionnode.components.train.cli",
    "visionnode.components.quantize.cli",
    "visionnode.components.deploy.cli",
    "visionnode.components.benchmark.cli",
    "visionnode.pipeline.commands",
)

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


for module_name in COMMAND_MODULES:
    importlib.import_module(module_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
