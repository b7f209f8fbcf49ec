"""train's settings and their defaults, importable without torch (CLI, component, pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionnode.components.common.data.ffcv_io import Augmentation
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.training.lr_probe import LRProbeConfig
from visionnode.components.common.training.recipe import Recipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    shards: str                      # s3://bucket/prefix, a shard dir or a remote-manifest dir
    out_dir: Path
    epochs: int = 16
    batch_size: int = 64             # per process; the global batch is batch_size x world size
    arch: str = "resnet152"
    res_start: int = 160             # progressive resizing: first epoch's resolution ...
    res_end: int = 192               # ... last epoch's, also the evaluation and serving input size
    precision: str = "auto"
    checkpoint_uri: str = ""         # local dir or s3://...; empty means <out_dir>/checkpoints
    checkpoint_every: int = 0        # optimiser steps between checkpoints (0: only at each epoch end)
    # auto (newest in checkpoint_uri, if any), never, or a checkpoint path/URI
    resume: str = "auto"
    compile: bool = False
    workers: int = 2
    max_steps: int = 0               # stop after this many optimiser steps in total (0: run all epochs)
    seed: int = 0
    log_every: int = 10              # steps between MLflow step metrics
    # >0: repeat the first N batches (a sanity check that the model can learn)
    overfit_batches: int = 0
    keep_checkpoints: int = 3
    cache_dir: Path | None = None    # where remote shards are cached (default: the transfer phase's)
    registered_model_name: str = ""  # MLflow model registry name; empty means visionnode-<arch>
    tracking: bool = True            # False: no MLflow run even when a tracking URI is configured
    recipe: Recipe = field(default_factory=Recipe)
    auto_lr: bool = False            # peak LR from an LR probe on the train shards (`--lr auto`)
    lr_probe_steps: int = LRProbeConfig.first_round_steps  # the probe's first-round steps per candidate
    lr_source: str = ""              # where recipe.lr came from (LRPlan.source); empty: given or batch rule
    crop_min_scale: float = 0.08     # RandomResizedCrop keeps this..100 % of the image area
    flip: bool = True                # random horizontal flip
    init_weights: str = ""           # state dict (path or s3://) to fine-tune from; empty: random init
    head_epochs: int = 0             # first epochs train only the classifier head (needs init_weights)

    def validate(self) -> None:
        from visionnode.components.common.training.model import depth_from_arch

        depth_from_arch(self.arch)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not known",
                              f"use one of {', '.join(PRECISIONS)}")
        self.recipe.validate()
        if self.epochs < 1 or self.batch_size < 1 or self.workers < 1:
            raise ConfigError("--epochs, --batch-size and --workers must be at least 1")
        if not 16 <= self.res_start <= self.res_end:
            raise ConfigError(f"resolution schedule {self.res_start}:{self.res_end} is invalid",
                              "use 16 <= START <= END")
        if self.checkpoint_every < 0 or self.max_steps < 0 or self.overfit_batches < 0 or self.log_every < 1:
            raise ConfigError("--checkpoint-every, --max-steps and overfit batches must be >= 0")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be at least 1")
        if self.auto_lr:
            if self.recipe.lr is not None:
                raise ConfigError(f"--lr auto and a given LR {self.recipe.lr:g} exclude each other",
                                  "pass one of them")
            LRProbeConfig(first_round_steps=self.lr_probe_steps).checked()
        if not 0 < self.crop_min_scale <= 1:
            raise ConfigError(f"--crop-min-scale {self.crop_min_scale} is out of range",
                              "use a value above 0 and at most 1: ImageNet's 0.08, up to 1 for no zoom-in")
        if not 0 <= self.head_epochs <= self.epochs:
            raise ConfigError(f"--head-epochs {self.head_epochs} is out of range",
                              f"use 0..{self.epochs} (the number of epochs)")
        if self.head_epochs and not self.init_weights:
            raise ConfigError("--head-epochs trains a new head on pre-trained features",
                              "pass --init-weights too, or --head-epochs 0")

    @property
    def resolved_lr_source(self) -> str:
        return self.lr_source or ("given" if self.recipe.lr is not None else "batch rule")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(min_scale=self.crop_min_scale, flip=self.flip)

    @property
    def res_schedule(self) -> str:
        """The `--res-schedule` text for this config's resolutions."""
        return f"{self.res_start}:{self.res_end}"

    @property
    def checkpoint_location(self) -> str:
        return self.checkpoint_uri or str(Path(self.out_dir) / "checkpoints")

    @property
    def model_name(self) -> str:
        return self.registered_model_name or f"visionnode-{self.arch}"


DEFAULTS = TrainConfig(shards="", out_dir=Path("."))
