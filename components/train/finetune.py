"""Fine-tuning: start from a torchvision-format state dict instead of random weights.

The file is a plain `state_dict` (torchvision's ImageNet weights, or the weights.pt a previous `train` wrote),
on local disk or in S3, read with `torch.load(weights_only=True)`. When its classifier head (`fc`) has another
class count than this dataset, the head is left freshly initialised and everything else is loaded. An
optional head-only warm-up freezes the backbone for the first epochs, so the random head does not send large
gradients back into features that are already good.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from visionnode.components.common.errors import ConfigError, IntegrityError
from visionnode.components.train.checkpoint import load_torch_file

HEAD_PREFIX = "fc."  # torchvision ResNets name their classifier `fc`


@dataclass
class InitWeights:
    source: str
    tensors_loaded: int
    head_replaced: bool     # the file's head had another class count: this run's head starts random
    source_classes: int     # the class count of the file's head


def load_state_dict_file(uri: str) -> dict[str, torch.Tensor]:
    state = load_torch_file(uri, "init weights",
                            "pass a state dict saved with torch.save(model.state_dict(), PATH)",
                            "pass --init-weights with an existing state-dict file or s3:// URI")
    if not isinstance(state, dict) or not state or not all(isinstance(v,
                                                                      torch.Tensor) for v in state.values()):
        raise IntegrityError(f"init weights {uri} are not a state dict of tensors",
                             "pass a state dict saved with torch.save(model.state_dict(), PATH)")
    return state


def load_init_weights(model: nn.Module, uri: str, arch: str) -> InitWeights:
    """Load `uri` into `model`; a head of another class count is dropped (the model keeps its own)."""
    state = load_state_dict_file(uri)
    own = model.state_dict()
    head = [k for k in own if k.startswith(HEAD_PREFIX)]
    source_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0
    replaced = any(k in state and state[k].shape != own[k].shape for k in head)
    if replaced:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and not (replaced and k.startswith(HEAD_PREFIX))]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        named = ", ".join((mismatched + missing + unexpected)[:3])
        raise ConfigError(f"init weights {uri} do not fit {arch}: {len(mismatched)} tensors of another "
                          "shape, "
                          f"{len(missing)} missing, {len(unexpected)} unexpected (e.g. {named})",
                          "pass weights of the same architecture as --arch")
    model.load_state_dict(state, strict=not replaced)
    return InitWeights(source=uri, tensors_loaded=len(state), head_replaced=replaced,
                       source_classes=source_classes)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) every parameter but the head; SGD skips parameters without a gradient."""
    for name, param in model.named_parameters():
        if not name.startswith(HEAD_PREFIX):
            param.requires_grad_(trainable)
