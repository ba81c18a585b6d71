"""Building models without paying for their init: meta-device construction, a cheap random fill, freezing.

Loaders build a model empty and assign a file's tensors into it, so the weights exist once in memory;
test and demo models fill the empty model with random values instead.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


def empty_model(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with its parameters on the meta device (no memory, no init); buffers stay real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def assign_state(factory: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str,
                 kind: str) -> nn.Module:
    """Build a model empty and assign `state` into it; a missing, extra or mis-shaped tensor is an
    IPAdapterError naming `source` and the `kind` of model expected."""
    from ..errors import IPAdapterError

    model = empty_model(factory)
    expected = model.state_dict()  # meta tensors: shapes only
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"{len(missing)} missing (e.g. {missing[0]})" if missing else ""
        what += ("; " if missing and unexpected else "") + (
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise IPAdapterError(f"{source} does not match {kind}: {what} weights.")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise IPAdapterError(f"{source} has {k} of shape {tuple(v.shape)} where "
                                 f"{tuple(expected[k].shape)} was expected.")
    model.load_state_dict(state, strict=True, assign=True)
    return model


def fill_random_(module: nn.Module, seed: int = 0, std: float = 0.02, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Give every parameter a real random value: N(0, std) weights, zero biases, norms at 1/0.

    A plain normal fill is much faster than the models' own init; keeping norms at identity keeps
    activations bounded, which is all test and demo models need.
    """
    gen = torch.Generator().manual_seed(seed)
    for mod in module.modules():
        is_norm = isinstance(mod, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d))
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            t = torch.empty(p.shape, dtype=dtype)
            if is_norm and name == "weight":
                t.fill_(1.0)
            elif name == "bias":
                t.zero_()
            else:
                t.normal_(0.0, std, generator=gen)
            mod._parameters[name] = nn.Parameter(t, requires_grad=False)
    log.debug("filled %s with random weights (seed %d)", type(module).__name__, seed)
    return module


def freeze(model: nn.Module) -> nn.Module:
    """Put a model in eval mode with no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model


# Models built here carry this mark on their config, and files written from them carry it in their
# safetensors metadata, so every report made with them can say its numbers are random-weight figures.
RANDOM_MARK = "ipadapter_train_random_weights"


def mark_random(model: nn.Module, value: bool = True) -> nn.Module:
    """Record on the model's config whether its weights are random."""
    setattr(model.config, RANDOM_MARK, bool(value))
    return model


def is_random(model: nn.Module) -> bool:
    """True for models built with random weights here (or loaded from a file marked so)."""
    return bool(getattr(getattr(model, "config", None), RANDOM_MARK, False))


def random_metadata(random_weights: bool) -> dict[str, str]:
    """safetensors metadata for a model file, with the random-weights mark when it applies."""
    return {"format": "pt", RANDOM_MARK: "true"} if random_weights else {"format": "pt"}
