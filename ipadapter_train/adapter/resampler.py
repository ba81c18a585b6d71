"""The "plus" image projection: a Perceiver Resampler over CLIP's penultimate hidden states.

Parameter names follow the official file (`latents`, `proj_in`, `layers.<i>.0.to_kv`, ...), so a
state dict of this module is the `image_proj.*` part of an ip-adapter-plus file as it is.
Shapes in comments: B batch, N image patches (+1 class token), Q learned queries, D width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64  # every public plus file: heads = width / 64 (what diffusers' and IPAdapter_plus' loaders assume)
# The width when no model family fixes one (tiny test models): 12 heads, the width plus adapters began with (SD1.5).
DEFAULT_DIM = 768


class PerceiverAttention(nn.Module):
    """Queries attend to [patches; queries], as in Flamingo's Perceiver Resampler."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 12) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)  # [B, N, D], [B, Q, D]
        b, q_len, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [B, N+Q, inner] each

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, self.dim_head).transpose(1, 2)  # [B, H, L, dh]

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # [B, H, Q, dh]
        return self.to_out(out.transpose(1, 2).reshape(b, q_len, -1))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear; indices 0, 1, 3 carry the official weight names."""
    inner = dim * mult
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class Resampler(nn.Module):
    """Maps CLIP hidden states [B, N, embedding_dim] to `num_queries` tokens [B, Q, output_dim].

    SD1.5's plus files: dim 768, 12 heads, output 768; SDXL's: dim 1280, 20 heads, output 2048.
    """

    def __init__(self, embedding_dim: int, output_dim: int = 768, dim: int = DEFAULT_DIM, depth: int = 4,
                 dim_head: int = HEAD_DIM, heads: int = 12, num_queries: int = 16, ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)  # [B, Q, D]
        x = self.proj_in(hidden_states)  # [B, N, D]
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
