"""A training loop written to mirror the reference recipes (tencent-ailab IP-Adapter `tutorial_train.py`
for SD1.5, `tutorial_train_sdxl.py` for SDXL), for the benchmark's ours/baseline ratio: every step loads
the image, runs the VAE, the CLIP image encoder and the text encoder(s) again (no caching), then trains
the adapter.

Precision, as the reference scripts set it:
- "no" (their default): everything in fp32.
- "bf16" (their `--mixed_precision bf16`, as `tutorial_train_sdxl.py` does it): the VAE stays fp32 ("vae of
  sdxl should use fp32"), the text and image encoders run in bf16 weights, the UNet keeps fp32 weights
  and runs under bf16 autocast (accelerate wraps the trained model's forward), the adapter stays fp32.

It reuses the core's adapter modules and attention processor, so the only differences measured are
the ones the benchmark is about (encoder work per step, precision), not two attention implementations.
A family's extra conditioning (SDXL: the pooled text embedding and the size/crop `time_ids`) is built
from the family's fields, as the core does, never from its name.
"""
from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.models.clip_vision import encode_images
from ipadapter_train.storage.data import Sample
from ipadapter_train.storage.image_ops import center_crop, resize_short_side, to_tensor
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.layout import adapter_layers

MIXED = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _prepare(image, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image resized and centre-cropped as a [-1, 1] tensor, and its size/crop conditioning
    (original h, w, crop top, left, target h, w) as the reference computes it."""
    resized = resize_short_side(image, resolution)
    width, height = resized.size
    time_ids = torch.tensor([image.height, image.width, (height - resolution) // 2, (width - resolution) // 2,
                             resolution, resolution], dtype=torch.float32)
    return to_tensor(center_crop(resized, resolution)), time_ids


def run_baseline(sd, clip, samples: Sequence[Sample], steps: int, resolution: int, device: str = "cpu",
                 seed: int = 0, batch_size: int = 1, precision: str = "no",
                 gradient_checkpointing: bool = False, low_precision_unet: bool = False) -> list[dict[str, float]]:
    """Train `steps` steps the reference way; return each step's seconds, in all and per part.

    `sd` and `clip` come loaded in the recipe's weight dtype (fp32, or bf16 for "bf16"). The parts (image, vae, clip, text, unet) show where the reference
    recipe spends a step, so a gap to another measurement of the reference can be placed.

    `low_precision_unet` keeps the UNet's weights in the weight dtype instead of the recipe's fp32 (not the
    recipe: for a machine where the recipe's fp32 SDXL UNet beside its autocast copies does not fit; the loop is
    otherwise the recipe's, encoders every step).
    """
    torch.manual_seed(seed)
    weight_dtype = MIXED[precision] or torch.float32
    # UNet and VAE in fp32 in both recipes; the backend casts every part it holds, so it is built without the
    # text encoders, which stay in the weight dtype they were loaded in (never held in fp32: 3.3 GB for SDXL).
    encoders, sd.text_encoders = sd.text_encoders, [None] * len(sd.text_encoders)
    backend = DiffusersBackend(sd, device, weight_dtype if low_precision_unet else torch.float32)
    sd.vae.to(device, torch.float32)  # fp32 in both recipes (a no-op unless the UNet kept the weight dtype)
    sd.text_encoders = [e.to(device, weight_dtype).requires_grad_(False).eval() for e in encoders]
    clip = clip.to(device, weight_dtype)
    if gradient_checkpointing:  # not in the reference scripts: only so a run that needs it compares like with like
        backend.enable_gradient_checkpointing()
    adapter = IPAdapter.new("base", clip.config.projection_dim, backend.cross_dim, adapter_layers(sd.unet.config))
    adapter.init_from_unet(backend.base_kv())
    adapter.to(device)
    backend.attach(adapter)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4, weight_decay=0.01)
    device_type = torch.device(device).type
    times = []

    def autocast():
        if MIXED[precision] is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=MIXED[precision])

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
        prepared = [_prepare(s.image, resolution) for s in batch]
        pixels = torch.stack([p[0] for p in prepared]).to(device)
        added = {"time_ids": torch.stack([p[1] for p in prepared])}  # only a family that takes them reads them
        lap("image")
        with torch.no_grad():
            latents = sd.vae.encode(pixels).latent_dist.sample() * sd.vae.config.scaling_factor
            latents = latents.to(weight_dtype)
            lap("vae")
            embeds, _ = encode_images(clip, [s.image for s in batch], device, weight_dtype)
            lap("clip")
            text = backend.encode_text([s.caption for s in batch])
            if "pooled" in text:
                added["pooled"] = text["pooled"]
            lap("text")
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,), device=device)
        a = backend.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(weight_dtype)
        with autocast():
            pred = backend.predict_noise(noisy, t, text["context"].to(device), adapter.project(embeds),
                                         added=added)
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lap("unet")
        times.append({"total": time.perf_counter() - tick, **parts})
    backend.detach()
    return times
