"""`python -m visionnode.components.train --shards ... --out ...`: the entry point torchrun launches.

    torchrun --nproc-per-node 2 -m visionnode.components.train --shards s3://bucket/shards --out /tmp/model
"""

import typer

from visionnode.components.train.cli import train_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(train_command)

if __name__ == "__main__":
    app()
