"""A small sampler over any `DiffusionBackend`, for previews during training.

Previews must run on the models the run already holds (the ComfyUI node has no diffusers pipeline, and a
second copy of a model is not an option on a CPU), so sampling goes through the same seam as training:
`diffusion.backend.predict_noise` with the adapter's tokens, then `diffusion.backend.decode_latents`. diffusers'
DPM-Solver++ (2M, as `generate --scheduler dpm++`) does the stepping, set up from the backend's own noise schedule: at the few steps a
preview can afford it gives far sharper pictures than DDIM.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from ..diffusion.backend import DiffusionBackend


@dataclass
class Conditioning:
    """What one UNet call of a batch is conditioned on: text context [B, 77, D], image tokens [B, T, D]
    (None: the adapter is off) and the family's added conditioning ("pooled", "time_ids"), each [B, ...]."""

    context: torch.Tensor
    tokens: torch.Tensor | None
    added: dict[str, torch.Tensor]

    @staticmethod
    def pair(uncond: "Conditioning", cond: "Conditioning") -> "Conditioning":
        """One batch of [unconditional; conditional] rows, for classifier-free guidance in one UNet call."""
        tokens = None if cond.tokens is None else torch.cat([uncond.tokens, cond.tokens])
        return Conditioning(torch.cat([uncond.context, cond.context]), tokens,
                            {k: torch.cat([uncond.added[k], cond.added[k]]) for k in cond.added})


def preview_scheduler(alphas_cumprod: torch.Tensor):
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++ 2M) on exactly this noise schedule, with Stable
    Diffusion's step spacing (the settings `generate`'s "dpm++" takes from an SD scheduler config)."""
    from diffusers import DPMSolverMultistepScheduler

    a = alphas_cumprod.double()
    betas = 1 - a / torch.cat([a.new_ones(1), a[:-1]])
    return DPMSolverMultistepScheduler(num_train_timesteps=len(a), trained_betas=betas.float().numpy(),
                                       steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


@torch.no_grad()
def sample_latents(backend: DiffusionBackend, noise: torch.Tensor, cond: Conditioning, uncond: Conditioning,
                   steps: int, guidance: float, scale: float = 1.0,
                   autocast: Callable[[], ContextManager] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Denoise `noise` [B, 4, h, w] in `steps` DPM-Solver++ steps with guidance over text and image; the latents
    (CPU, float32). `progress(done, steps)` after every step may raise to stop at once."""
    scheduler = preview_scheduler(backend.alphas_cumprod)
    scheduler.set_timesteps(steps)
    both = Conditioning.pair(uncond, cond)
    device = backend.device
    latents = noise.to(device, torch.float32) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        with autocast() if autocast else nullcontext():
            eps = backend.predict_noise(latents.repeat(2, 1, 1, 1), torch.full((2 * len(latents),), int(t),
                                                                               device=device),
                                        both.context.to(device), None if both.tokens is None else
                                        both.tokens.to(device), scale=scale,
                                        added={k: v.to(device) for k, v in both.added.items()})
        eps_uncond, eps_cond = eps.float().chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents).prev_sample
        if progress is not None:
            progress(i + 1, steps)
    return latents.float().cpu()
