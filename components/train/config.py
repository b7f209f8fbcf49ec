"""train's settings and their defaults, importable without torch (CLI, component, pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from visionnode.components.common.adapters.declared import at_least, between, check_ranges, one_of, setting
from visionnode.components.common.data.ffcv_io import Augmentation
from visionnode.components.common.errors import ConfigError
from visionnode.components.common.training.archs import ARCHS, depth_from_arch
from visionnode.components.common.training.lr_probe import LRProbeConfig
from visionnode.components.common.training.recipe import (
    LR_AUTO,
    LR_BATCH_RULE,
    SCHEDULES,
    Recipe,
    parse_lr,
    parse_res_schedule,
    parse_warmup,
    resolve_lr,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    shards: str                      # s3://bucket/prefix, a shard dir or a remote-manifest dir
    out_dir: Path
    epochs: int = setting(16, "Epochs to train.", check=at_least(1))
    batch_size: int = setting(64, "Images per optimizer step per process (the global batch is this x the "
                              "world size).", check=at_least(1))
    # the peak LR as a user writes it; resolved() applies it to `recipe` (and `auto_lr`)
    lr: str = setting(LR_AUTO, f"Peak learning rate: {LR_BATCH_RULE} (0.1 x global batch / 256), a number "
                      f"> 0, or {LR_AUTO}: an LR probe's (in the pipeline validate's, the batch rule when it "
                      "did not run; a lone command probes the train shards first).",
                      cli_default=LR_BATCH_RULE)
    arch: str = setting("resnet152", "The ResNet to train.", check=one_of(*ARCHS))
    res_schedule: str = setting("160:192", "Progressive resizing START:END in pixels (linear over epochs, "
                                "multiples of 32); END is the evaluation and serving size.")
    precision: str = setting("auto", "Arithmetic precision; auto: bf16 where the CPU/GPU runs it natively, "
                             "else fp32/fp16 (fp16 needs CUDA).", check=one_of(*PRECISIONS))
    checkpoint_uri: str = setting("", "Checkpoint dir or s3://bucket/prefix; empty: the run's own (a lone "
                                  "command: OUT/checkpoints; a pipeline run: s3://<bucket of the shards>/"
                                  "checkpoints/<run id>). A checkpoint found there is resumed only if this "
                                  "run wrote it or its configuration and data are identical.")
    checkpoint_every: int = setting(0, "Also checkpoint every N optimizer steps (0: at epoch ends only).",
                                    pipeline=False, check=at_least(0))
    resume: str = setting("auto", "auto (newest checkpoint, if any), never, or a checkpoint path/URI.",
                          pipeline=False)
    compile: bool = setting(False, "torch.compile the model.", pipeline=False)
    workers: int = setting(2, "FFCV decoding threads.", check=at_least(1))
    max_steps: int = setting(0, "Stop after this many optimizer steps in total, then evaluate (0: all "
                             "epochs); for a rehearsal of a large run.", check=at_least(0))
    seed: int = setting(0, "Seed for weights and data order.", pipeline=False)
    log_every: int = setting(10, "Steps between MLflow step metrics.", pipeline=False, check=at_least(1))
    # >0: repeat the first N batches (a sanity check that the model can learn)
    overfit_batches: int = 0
    keep_checkpoints: int = 3
    cache_dir: Path | None = None    # where remote shards are cached (default: the transfer phase's)
    registered_model_name: str = ""  # MLflow model registry name; empty means visionnode-<arch>
    tracking: bool = True            # False: no MLflow run even when a tracking URI is configured
    recipe: Recipe = field(default_factory=Recipe)
    auto_lr: bool = False            # peak LR from an LR probe on the train shards (`--lr auto`)
    lr_probe_steps: int = setting(LRProbeConfig.steps, "--lr auto's LR probe: steps each candidate peak "
                                  "LR trains before it is judged on held-out loss.",
                                  pipeline=False)
    lr_source: str = ""              # where recipe.lr came from (LRPlan.source); empty: given or batch rule
    crop_min_scale: float = setting(0.08, "RandomResizedCrop's smallest kept share of the image area: "
                                    "ImageNet's 0.08, up to 1 for no zoom-in (raise it for small objects).",
                                    check=between(0, 1, low_open=True))
    flip: bool = setting(True, "Random horizontal flips (off for text, symbols, anything handed).")
    init_weights: str = setting("", "State dict (path or s3://...) to fine-tune from, e.g. torchvision's "
                                "ImageNet weights; a head of another class count is replaced.")
    head_epochs: int = setting(0, "With init_weights: the first epochs train only the classifier head.")
    warmup_epochs: str = setting("auto", "Linear LR warm-up in epochs (at most a quarter of all steps); "
                                 "auto: one epoch per decade the peak LR is above the batch rule's.",
                                 pipeline=False)
    schedule: str = setting(Recipe.schedule, "LR decay after warm-up.", pipeline=False,
                            check=one_of(*SCHEDULES))

    def validate(self) -> None:
        self.recipe.validate()
        check_ranges(self)
        parse_res_schedule(self.res_schedule)
        parse_lr(self.lr)
        parse_warmup(self.warmup_epochs)
        if self.overfit_batches < 0:
            raise ConfigError("overfit batches must be >= 0")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be at least 1")
        if self.auto_lr:
            if self.recipe.lr is not None:
                raise ConfigError(f"--lr auto and a given LR {self.recipe.lr:g} exclude each other",
                                  "pass one of them")
            LRProbeConfig(steps=self.lr_probe_steps).checked()
        if not 0 <= self.head_epochs <= self.epochs:
            raise ConfigError(f"--head-epochs {self.head_epochs} is out of range",
                              f"use 0..{self.epochs} (the number of epochs)")
        if self.head_epochs and not self.init_weights:
            raise ConfigError("--head-epochs trains a new head on pre-trained features",
                              "pass --init-weights too, or --head-epochs 0")

    def resolved(self, suggested_lr: float | None = None) -> TrainConfig:
        """This config with `lr`, `warmup_epochs` and `schedule` (as a user wrote them) applied to `recipe`.
        A number is the peak LR as given; batch-rule leaves it to the recipe's rule; auto takes
        `suggested_lr`, an LR probe's suggestion from upstream (validate's in the pipeline, made on a
        ResNet-18: at most 0.03 for ResNet-50 and deeper; 0: no suggestion, so the batch
        rule), or with None (a lone command) has train run its own probe first."""
        recipe = replace(self.recipe, warmup_epochs=parse_warmup(self.warmup_epochs), schedule=self.schedule)
        if suggested_lr is None:
            choice = parse_lr(self.lr)
            return replace(self, recipe=replace(recipe, lr=choice if isinstance(choice, float) else None),
                           auto_lr=choice == LR_AUTO)
        peak_lr, source = resolve_lr(self.lr, suggested_lr, depth_from_arch(self.arch))
        return replace(self, recipe=replace(recipe, lr=peak_lr), lr_source=source)

    @property
    def res_start(self) -> int:
        """The first epoch's resolution (progressive resizing)."""
        return parse_res_schedule(self.res_schedule)[0]

    @property
    def res_end(self) -> int:
        """The last epoch's resolution, also the evaluation and serving input size."""
        return parse_res_schedule(self.res_schedule)[1]

    @property
    def resolved_lr_source(self) -> str:
        return self.lr_source or ("given" if self.recipe.lr is not None else "batch rule")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(min_scale=self.crop_min_scale, flip=self.flip)

    @property
    def checkpoint_location(self) -> str:
        return self.checkpoint_uri or str(Path(self.out_dir) / "checkpoints")

    @property
    def model_name(self) -> str:
        return self.registered_model_name or f"visionnode-{self.arch}"
