"""Stage 2: the world's VAE (SD1.5's AutoencoderKL layout at small widths), then its latents scaled to SD's.

Trained on reconstruction with a KL term as small as SD's. Afterwards its latent space is stretched so that
latents times the family's scaling factor (SD1.5's 0.18215, in the shipped config) have unit spread, as SD's do:
the mean and log-variance out of `quant_conv` and the input of `post_quant_conv` are rescaled together, which
leaves every reconstruction as it was.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..families import WORLD
from .data import pictures, to_unit
from .optim import descend, optimiser
from .recipe import Recipe


def world_vae():
    """A fresh AutoencoderKL of the world family's shipped config."""
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in WORLD.config("vae/config.json").items() if not k.startswith("_")}
    return AutoencoderKL(**cfg)


def train_vae(recipe: Recipe, progress=None):
    """Train the world's VAE from `recipe.seed` and scale its latents; returns it (eval mode, frozen)."""
    torch.manual_seed(recipe.seed + 2)
    rng = np.random.default_rng([recipe.seed, 2])
    vae = world_vae()
    stage = recipe.vae
    opt, sched = optimiser(vae.parameters(), stage)
    vae.train()
    for step in range(stage.steps):
        x = to_unit(pictures(rng, stage.batch)[0])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + recipe.kl_weight * posterior.kl().mean()
        value = descend(loss, opt, sched)
        if progress:
            progress("vae", step + 1, stage.steps, value)
    vae.eval().requires_grad_(False)
    scale_latents(vae, rng)
    return vae


@torch.no_grad()
def latent_spread(vae, x: torch.Tensor) -> float:
    """The standard deviation of `x`'s latents (posterior samples) times the VAE's scaling factor."""
    return float((vae.encode(x).latent_dist.sample() * vae.config.scaling_factor).std())


@torch.no_grad()
def scale_latents(vae, rng: np.random.Generator, n: int = 512) -> float:
    """Stretch the latent space so that scaled latents have unit spread; returns the stretch factor."""
    x = to_unit(pictures(rng, n)[0])
    k = 1.0 / latent_spread(vae, x)
    channels = vae.config.latent_channels
    q, post = vae.quant_conv, vae.post_quant_conv
    q.weight[:channels] *= k  # the mean
    q.bias[:channels] *= k
    q.bias[channels:] += 2 * math.log(k)  # the log-variance: the spread grows with the mean
    post.weight /= k
    return k
