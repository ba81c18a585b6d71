"""A training loop written to mirror the reference recipe (tencent-ailab IP-Adapter tutorial_train.py),
for the benchmark's ours/baseline ratio: fp32 everywhere, and every step loads the image, runs the
VAE, the CLIP image encoder and the text encoder again (no caching), then trains the adapter.

It reuses the core's adapter modules and attention processor, so the only differences measured are
the ones the benchmark is about (encoder work per step, precision), not two attention implementations.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

from ipadapter_train.adapter import IPAdapter
from ipadapter_train.clip_vision import encode_images
from ipadapter_train.data import Sample
from ipadapter_train.image_ops import center_crop, resize_short_side, to_tensor
from ipadapter_train.diffusers_backend import DiffusersBackend
from ipadapter_train.layout import adapter_layers


def run_baseline(sd, clip, samples: Sequence[Sample], steps: int, resolution: int, device: str = "cpu",
                 seed: int = 0, batch_size: int = 1) -> list[dict[str, float]]:
    """Train `steps` steps the reference way; return each step's seconds, in all and per part.

    The parts (image, vae, clip, text, unet) show where the reference recipe spends a step, so a gap to
    another measurement of the reference can be placed.
    """
    torch.manual_seed(seed)
    backend = DiffusersBackend(sd, device, torch.float32)
    clip = clip.to(device, torch.float32)
    adapter = IPAdapter.new("base", clip.config.projection_dim, backend.cross_dim, adapter_layers(sd.unet.config))
    adapter.init_from_unet(backend.base_kv())
    adapter.to(device)
    backend.attach(adapter)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4, weight_decay=0.01)
    times = []

    def lap(part: str) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        parts[part] = now - clock[0]
        clock[0] = now

    for step in range(steps):
        tick = time.perf_counter()
        clock, parts = [tick], {}
        batch = [samples[(step * batch_size + i) % len(samples)] for i in range(batch_size)]
        pixels = torch.stack([to_tensor(center_crop(resize_short_side(s.image, resolution), resolution))
                              for s in batch]).to(device)
        lap("image")
        with torch.no_grad():
            latents = sd.vae.encode(pixels).latent_dist.sample() * sd.vae.config.scaling_factor
            lap("vae")
            embeds, _ = encode_images(clip, [s.image for s in batch], device, torch.float32)
            lap("clip")
            text = backend.encode_text([s.caption for s in batch])["context"].to(device)
            lap("text")
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,), device=device)
        a = backend.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        pred = backend.predict_noise(noisy, t, text, adapter.project(embeds))
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lap("unet")
        times.append({"total": time.perf_counter() - tick, **parts})
    backend.detach()
    return times
