"""Decoupled cross-attention for a diffusers UNet: out = attn(q, K_text, V_text) + scale * attn(q, K_ip, V_ip).

The image term is `adapter.ip_attention.decoupled_term`, the same function the ComfyUI attn2 patch calls.

The processor is a plain object (not an nn.Module) so the adapter's weights are never registered
inside the frozen UNet: they stay owned by the `IPAdapter` module that the optimizer (and DDP) see.
"""
from __future__ import annotations

import torch

from ..adapter.ip_attention import IPState, attend, decoupled_term
from ..adapter.module import IPLayer


class IPAttnProcessor:
    """A diffusers attention processor for one `attn2` layer with image-prompt keys and values."""

    def __init__(self, layer: IPLayer, state: IPState) -> None:
        self.layer = layer
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.to_q(hidden_states)  # [B, HW, heads*d]
        out = attend(query, attn.to_k(context), attn.to_v(context), attn.heads)
        tokens, scale = self.state.tokens, self.state.scale
        if tokens is not None and scale != 0:
            out = out + scale * decoupled_term(query, tokens, self.layer, attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
