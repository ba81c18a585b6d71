"""Stage 3: the world's UNet (SD1.5's layout at small widths), trained as a latent diffusion model.

The text encoder is the world CLIP's text tower (frozen), as SD1.5's is CLIP ViT-L's. A set of pictures is drawn
and encoded once; each step takes a batch of their latents (a fresh posterior sample), a caption naming all or a
random subset of the attributes (empty for `caption_drop` of them, for classifier-free guidance), a timestep and
noise, and learns to predict the noise, as SD was trained. Sampling uses an exponential average of the weights.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..families import WORLD
from .clip_stage import tokenize
from .data import captions, pictures, to_unit
from .optim import descend, optimiser
from .recipe import Recipe


def world_text_encoder(clip):
    """The world family's text encoder (a transformers CLIPTextModel) holding `clip`'s text tower."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in WORLD.config("text_encoder/config.json").items() if k not in ("architectures",)}
    encoder = CLIPTextModel(CLIPTextConfig(**cfg))
    encoder.load_state_dict(clip.text_model.state_dict())  # transformers 5: the same module names
    return encoder.eval().requires_grad_(False)


def world_unet():
    """A fresh UNet2DConditionModel of the world family's shipped config."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{k: v for k, v in WORLD.config("unet/config.json").items() if not k.startswith("_")})


def world_scheduler():
    """The family's training noise schedule (SD1.5's: 1000 steps, scaled-linear betas, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(WORLD.config("scheduler/scheduler_config.json"))


class TextCache:
    """Text encoder outputs per caption, computed once (the world has a few hundred distinct captions)."""

    def __init__(self, encoder, tokenizer) -> None:
        self.encoder, self.tokenizer, self.states = encoder, tokenizer, {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.states})
        if new:
            hidden = self.encoder(tokenize(self.tokenizer, new))[0]  # last hidden state, after the final norm
            self.states.update(zip(new, hidden))
        return torch.stack([self.states[t] for t in texts])


@torch.no_grad()
def encode_set(vae, rng: np.random.Generator, n: int, batch: int = 256):
    """Draw `n` pictures; return their posterior means and standard deviations and their attributes."""
    means, stds, attrs = [], [], []
    for start in range(0, n, batch):
        x, a = pictures(rng, min(batch, n - start))
        dist = vae.encode(to_unit(x)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        attrs.extend(a)
    return torch.cat(means), torch.cat(stds), attrs


def train_unet(recipe: Recipe, vae, text_encoder, tokenizer, progress=None):
    """Train the world's UNet from `recipe.seed`; returns the averaged weights' UNet (eval mode, frozen)."""
    torch.manual_seed(recipe.seed + 3)
    rng = np.random.default_rng([recipe.seed, 3])
    means, stds, attrs = encode_set(vae, rng, recipe.unet_pictures)
    texts = TextCache(text_encoder, tokenizer)
    scheduler = world_scheduler()
    unet = world_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    stage = recipe.unet
    opt, sched = optimiser(unet.parameters(), stage)
    unet.train()
    sf = vae.config.scaling_factor
    for step in range(stage.steps):
        pick = torch.from_numpy(rng.integers(0, len(attrs), stage.batch))
        latents = (means[pick] + stds[pick] * torch.randn_like(means[pick])) * sf
        chosen = [attrs[i] for i in pick.tolist()]
        said, _ = captions(chosen, rng, full=0.4)
        said = ["" if rng.random() < recipe.caption_drop else t for t in said]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (stage.batch,))
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=texts(said)).sample
        loss = F.mse_loss(pred, noise)
        value = descend(loss, opt, sched, clip=(unet.parameters(), 1.0))
        with torch.no_grad():
            decay = min(recipe.ema, (1 + step) / (10 + step))  # a short average early, the full one later
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        if progress:
            progress("unet", step + 1, stage.steps, value)
    return ema.eval()
