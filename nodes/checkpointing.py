"""Gradient checkpointing for ComfyUI's UNet (SD1.5, SDXL) while the adapter trains, undone afterwards.

Each layer of the UNet's input, middle and output blocks (ResBlock, SpatialTransformer, up/downsampler)
gets a forward that runs under `torch.utils.checkpoint` (non-reentrant): its activations are not kept for
the backward pass but recomputed there, as ComfyUI's own LoRA trainer does with every block. The graph's
MODEL is shared with the rest of the graph, so the original forwards come back when training ends.

ComfyUI passes one `transformer_options` dict down the whole UNet and updates it on the way ("block",
"block_index", ...); the attn2 patches find their adapter layer through those values. By the time a
layer is recomputed during backward the dict holds the values of the last block, so each checkpointed
call keeps a copy of the dicts it was given and recomputes with that copy, not with the live dict.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.utils.checkpoint
from torch import nn

import comfy.model_management

from ..ipadapter_train.api import TrainingCancelled

log = logging.getLogger(__name__)


def checkpointed_layers(unet: nn.Module) -> list[nn.Module]:
    """The layers whose activations checkpointing recomputes: every child of every UNet block."""
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    return [layer for block in blocks for layer in block.children()]


def _checkpointed_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # validation, or a caller under no_grad: nothing to save anyway
            return forward(*args, **kwargs)
        given = [v for v in (*args, *kwargs.values()) if isinstance(v, dict)]
        frozen = [dict(d) for d in given]  # the values of this call, for the recompute
        runs: list[list[dict]] = []

        def call() -> Any:
            copies = [dict(d) for d in frozen]
            by_id = {id(d): c for d, c in zip(given, copies)}
            a = [by_id.get(id(v), v) for v in args]
            kw = {k: by_id.get(id(v), v) for k, v in kwargs.items()}
            try:
                out = forward(*a, **kw)
            except comfy.model_management.InterruptProcessingException as exc:
                # a cancel landing in the recompute (inside backward) is the core's cancel, as in the forward
                raise TrainingCancelled() from exc
            runs.append(copies)
            return out

        out = torch.utils.checkpoint.checkpoint(call, use_reentrant=False)
        for d, changed in zip(given, runs[0]):
            d.update(changed)  # what the layer wrote into the options, as if it had run unwrapped
        return out

    return run


def enable(unet: nn.Module) -> Callable[[], None]:
    """Checkpoint the UNet's block layers; return the function that restores their own forwards."""
    saved: list[tuple[nn.Module, Any]] = []
    for layer in checkpointed_layers(unet):
        saved.append((layer, layer.__dict__.get("forward")))
        layer.forward = _checkpointed_forward(layer.forward)
    log.info("Gradient checkpointing on %d UNet layers.", len(saved))

    def restore() -> None:
        for layer, own in saved:
            if own is None:
                del layer.forward
            else:
                layer.forward = own

    return restore
