"""The decoupled image-attention term of IP-Adapter, shared by every back end.

    out = attn(q, K_text, V_text) + scale * attn(q, to_k_ip(tokens), to_v_ip(tokens))

This module computes the second term from a layer's query (already projected by its `to_q`), the image
tokens and the layer's `to_k_ip` / `to_v_ip`. The diffusers processor (`diffusion/attention.py`) and the ComfyUI
attn2 patch (`nodes/attn_patch.py`) both call it, so the two back ends run the same math; both read the
image tokens and the scale of the current UNet call from an `IPState`. It imports only torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .module import IPLayer


@dataclass
class IPState:
    """What every patched layer reads during one UNet call: the image tokens and the scale."""

    tokens: torch.Tensor | None = None  # [B, T, cross_dim]; None = adapter off
    scale: float = 1.0


def image_kv(tokens: torch.Tensor, layer: IPLayer, dtype: torch.dtype | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the image tokens for one layer.

    tokens [B, T, cross_dim] -> (k, v), each [B, T, hidden]. The projection runs in the adapter's own
    dtype (fp32 master weights; autocast still applies), and the result is cast to `dtype` if given.
    """
    weight = layer.to_k_ip.weight
    tokens = tokens.to(device=weight.device, dtype=weight.dtype)
    k, v = layer.to_k_ip(tokens), layer.to_v_ip(tokens)
    if dtype is not None:
        k, v = k.to(dtype), v.to(dtype)
    return k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention on merged heads.

    q [B, L, heads*d]; k, v [B or 1, T, heads*d] (a batch of one is shared by every row of q)
    -> [B, L, heads*d] in q's dtype and on q's device.
    """
    b, length, channels = q.shape
    if channels % heads:
        raise ValueError(f"The query width {channels} is not divisible by {heads} heads.")
    d = channels // heads
    k = k.to(device=q.device, dtype=q.dtype)
    v = v.to(device=q.device, dtype=q.dtype)
    if k.shape[0] != b:
        if k.shape[0] != 1:
            raise ValueError(f"Image keys for a batch of {k.shape[0]} cannot serve a query batch of {b}.")
        k, v = k.expand(b, -1, -1), v.expand(b, -1, -1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, heads, d).transpose(1, 2)  # [B, heads, L, d]

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, length, channels).to(q.dtype)


def decoupled_term(q: torch.Tensor, tokens: torch.Tensor, layer: IPLayer, heads: int) -> torch.Tensor:
    """attn(q, to_k_ip(tokens), to_v_ip(tokens)) for one layer: q [B, L, heads*d] -> [B, L, heads*d]."""
    k, v = image_kv(tokens, layer, q.dtype)
    return attend(q, k, v, heads)
