"""ComfyUI attn2 replace patches that add the IP-Adapter term to a cross-attention layer.

ComfyUI calls a replace patch registered under `transformer_options["patches_replace"]["attn2"][key]`
as `patch(q, k, v, extra_options)` with q, k, v already projected by the layer's to_q/to_k/to_v, and
applies the layer's to_out to what it returns. Each patch here returns

    text attention (or whatever patch was at that key before: several Apply nodes chain)
    + weight * attn(q, to_k_ip(tokens), to_v_ip(tokens))      (ipadapter_train.adapter.ip_attention)

`ImagePromptPatch` is what Apply installs: fixed reference tokens for the cond rows of the batch, the
negative (or dropped) image's tokens for the uncond rows, active between two sigmas. Its keys and values
are computed once, so the patch holds a few small tensors and never the adapter's weights.
`TrainingPatch` is what the training back end installs: it projects the tokens of the current step
through the adapter's trainable layer, so gradients reach to_k_ip / to_v_ip.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

import comfy.ldm.modules.attention as comfy_attention

from ..ipadapter_train.api import IPLayer, IPState, attend, decoupled_term, image_kv

ATTN2 = "attn2"
COND, UNCOND = 0, 1  # the values ComfyUI puts in extra_options["cond_or_uncond"]
Patch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def existing_patch(transformer_options: dict, key: tuple[str, int, int]) -> Patch | None:
    """The attn2 replace patch ComfyUI would call for `key` now: (block, number, index), then (block, number)."""
    table = transformer_options.get("patches_replace", {}).get(ATTN2, {})
    return table.get(key) or table.get(key[:2])


def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict,
                   previous: Patch | None) -> torch.Tensor:
    """What the layer computes without this patch: the previous patch, or ComfyUI's own attention."""
    if previous is not None:
        return previous(q, k, v, extra_options)
    return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                               attn_precision=extra_options.get("attn_precision"),
                                               transformer_options=extra_options)


class _ChainedPatch:
    """Shared plumbing: wraps the previous patch, survives ModelPatcher.clone and model_patches_to."""

    def __init__(self, previous: Patch | None) -> None:
        self.previous = previous

    def __deepcopy__(self, memo: dict) -> "_ChainedPatch":
        # ModelPatcher.clone deep-copies model_options; the patch never changes, so share it.
        return self

    def to(self, device_or_dtype: Any) -> "_ChainedPatch":
        """Called by ComfyUI before sampling; tensors are moved lazily at call time, the chain is forwarded."""
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self


class SigmaGate:
    """Whether the current sampling step lies in [sigma_end, sigma_start]; one gate serves all of an Apply's
    layers, so the sigma is read (a device-to-host sync on a GPU) once per step, not once per layer."""

    def __init__(self, sigma_start: float, sigma_end: float) -> None:
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self._sigmas: torch.Tensor | None = None  # the step's sigmas tensor last read (ComfyUI shares it)
        self._active = True

    def __call__(self, extra_options: dict) -> bool:
        """True while the current sigma is inside the gate (no sigma known: always)."""
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        if sigmas is not self._sigmas:
            self._sigmas = sigmas
            self._active = self.sigma_end <= float(sigmas.detach().flatten()[0]) <= self.sigma_start
        return self._active


class ImagePromptPatch(_ChainedPatch):
    """Apply's patch for one layer: fixed image keys/values for cond and uncond rows, gated by sigma."""

    def __init__(self, cond_kv: tuple[torch.Tensor, torch.Tensor], uncond_kv: tuple[torch.Tensor, torch.Tensor],
                 weight: float, gate: SigmaGate, previous: Patch | None = None) -> None:
        super().__init__(previous)
        self.kv = {COND: cond_kv, UNCOND: uncond_kv}  # each [1, T, hidden], fp32 on the CPU
        self.weight = float(weight)
        self.gate = gate
        self._batch_kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def batch_kv(self, chunks: list[int], rows: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image keys and values for a batch laid out as `chunks` of `rows` rows, on `like`'s device and dtype.

        Built once per layout and kept: every later step of the sampling reuses them. They are made in the
        current inference mode (part of the key), since autograd cannot save inference tensors.
        """
        key = (tuple(chunks), rows, like.device, like.dtype, torch.is_inference_mode_enabled())
        if key not in self._batch_kv:
            parts = [self.kv[UNCOND if c == UNCOND else COND] for c in chunks]
            self._batch_kv[key] = tuple(torch.cat([kv[i].expand(rows, -1, -1) for kv in parts])
                                        .to(device=like.device, dtype=like.dtype) for i in (0, 1))
        return self._batch_kv[key]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        out = text_attention(q, k, v, extra_options, self.previous)
        if self.weight == 0 or not self.gate(extra_options):
            return out
        chunks = list(extra_options.get("cond_or_uncond") or [COND])
        batch = q.shape[0]
        if batch % len(chunks):  # not ComfyUI's equal-sized chunks: treat every row as cond
            chunks = [COND] * batch
        k_ip, v_ip = self.batch_kv(chunks, batch // len(chunks), q)
        return out + self.weight * attend(q, k_ip, v_ip, extra_options["n_heads"])


class TrainingPatch(_ChainedPatch):
    """The training back end's patch for one layer: tokens of the current step through a trainable layer."""

    def __init__(self, layer: IPLayer, state: IPState, previous: Patch | None = None) -> None:
        super().__init__(previous)
        self.layer = layer
        self.state = state

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        out = text_attention(q, k, v, extra_options, self.previous)
        tokens, scale = self.state.tokens, self.state.scale
        if tokens is None or scale == 0:
            return out
        return out + scale * decoupled_term(q, tokens, self.layer, extra_options["n_heads"])


def apply_image_prompt(model: Any, adapter: Any, layers: list, cond_tokens: torch.Tensor,
                       uncond_tokens: torch.Tensor, weight: float, start_at: float = 0.0,
                       end_at: float = 1.0) -> Any:
    """A clone of `model` (a ModelPatcher) with an `ImagePromptPatch` on every adapter layer.

    cond_tokens / uncond_tokens: [1, T, cross_dim] image tokens (adapter.project of the CLIP features).
    start_at / end_at are fractions of the sampling, turned into sigmas by the model's own schedule, so
    any sampler and scheduler gate the same way. A patch already at a layer's key is kept and wrapped.
    """
    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    gate = SigmaGate(sampling.percent_to_sigma(start_at), sampling.percent_to_sigma(end_at))
    before = patched.model_options.get("transformer_options", {})
    with torch.no_grad():
        for layer in layers:
            ip_layer = adapter.layer(layer.index)
            cond = tuple(t.float().cpu() for t in image_kv(cond_tokens, ip_layer))
            uncond = tuple(t.float().cpu() for t in image_kv(uncond_tokens, ip_layer))
            patch = ImagePromptPatch(cond, uncond, weight, gate, existing_patch(before, layer.comfy_key))
            patched.set_model_attn2_replace(patch, *layer.comfy_key)
    return patched

