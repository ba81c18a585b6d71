"""Test generation with a trained adapter: the family's diffusers pipeline (`StableDiffusionPipeline`,
`StableDiffusionXLPipeline`) whose cross-attention layers run through the core's own `IPAttnProcessor` (the
same modules training used).

    images = Generator(sd, clip, adapter).generate(reference=[ref], prompt="a cat in a palace", seed=42)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from ..adapter.check import check_adapter_state
from ..adapter.module import IPAdapter
from ..diffusion.diffusers_backend import DiffusersBackend
from ..errors import IPAdapterError
from ..models.clip_features import CLIPFeatureEncoder
from ..models.diffusion_model import DiffusionModel
from ..models.random_init import is_random

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "euler", "euler_a", "dpm++", "pndm")


def make_scheduler(name: str, scheduler_config: dict):
    """A diffusers scheduler by short name, configured with the model's noise schedule."""
    import diffusers

    classes = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
               "dpm++": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler"}
    if name not in classes:
        raise IPAdapterError(f"Unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}.")
    return getattr(diffusers, classes[name]).from_config(scheduler_config)


@dataclass
class GenerationSettings:
    """The knobs of one generation call."""

    prompt: str = ""
    negative_prompt: str = ""
    scale: float = 1.0  # adapter scale; 0 = the base model alone
    steps: int = 30
    guidance: float = 7.5
    seed: int = 42
    num_images: int = 1
    width: int | None = None  # None: the model family's default resolution (512 SD1.5, 1024 SDXL)
    height: int | None = None
    scheduler: str = "ddim"

    def validate(self) -> None:
        """Raise IPAdapterError on settings that cannot generate (a size not given is the model's: `sized`)."""
        given = [side for side in (self.width, self.height) if side is not None]
        if any(side % 8 or side < 64 for side in given):
            raise IPAdapterError(f"Size {self.width}x{self.height} is not usable: give multiples of 8, at least 64.")
        if self.steps < 1 or self.num_images < 1:
            raise IPAdapterError("steps and the number of images must be at least 1.")

    def sized(self, default: int) -> "GenerationSettings":
        """A copy with the width and height that were not given set to `default`."""
        from dataclasses import replace

        return replace(self, width=self.width or default, height=self.height or default)


def make_pipeline(sd: DiffusionModel):
    """The family's diffusers pipeline over the loaded parts (no safety checker, no diffusers image encoder:
    the adapter's image tokens come from the core)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, sd.family.pipeline)
    parts = {"vae": sd.vae, "unet": sd.unet, "scheduler": make_scheduler("ddim", sd.scheduler_config)}
    for spec, encoder, tokenizer in zip(sd.family.text_encoders, sd.text_encoders, sd.tokenizers):
        parts[spec.subfolder] = encoder
        parts[spec.tokenizer_subfolder] = tokenizer
    accepted = inspect.signature(cls.__init__).parameters
    for name in ("safety_checker", "feature_extractor", "image_encoder"):
        if name in accepted:
            parts[name] = None
    if "requires_safety_checker" in accepted:
        parts["requires_safety_checker"] = False
    return cls(**parts)


class Generator:
    """Loaded models + one adapter, ready to generate many times."""

    def __init__(self, sd: DiffusionModel, clip_vision, adapter: IPAdapter | None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, adapter_name: str = "the adapter",
                 encoder_name: str = "clip_vision") -> None:
        self.backend = DiffusersBackend(sd, device, dtype)
        self.encoder = CLIPFeatureEncoder(clip_vision, device, dtype, name=encoder_name)
        self.adapter = None
        self.random_weights = sd.random_weights or is_random(clip_vision)
        if self.random_weights:
            log.warning("The base model or the image encoder has RANDOM weights: the images show the pipeline "
                        "working, not what a trained adapter does.")
        if adapter is not None:
            self.use_adapter(adapter, adapter_name)
        self.pipe = make_pipeline(sd)
        self.pipe.set_progress_bar_config(disable=True)

    def use_adapter(self, adapter: IPAdapter, adapter_name: str = "the adapter") -> None:
        """Generate with `adapter` from now on (in place of the one given before), the models staying loaded."""
        # refused before any sampling, with the checks the CLI and the nodes use: sound weights (no NaN,
        # which would sample black images), then the fit to this encoder and UNet
        check_adapter_state(adapter.state_dict(), adapter_name)
        adapter.spec.check_fits(self.encoder.feature_width(adapter.spec.variant), self.encoder.name,
                                self.backend.cross_dim, self.backend.adapter_layers(),
                                f"the UNet of {self.backend.name}", adapter_name, self.backend.family,
                                metadata=getattr(adapter, "metadata", None))
        adapter.to(self.backend.device, self.backend.dtype).eval().requires_grad_(False)
        self.backend.attach(adapter)
        self.adapter = adapter

    @torch.no_grad()
    def image_tokens(self, reference: Sequence[Image.Image], negative: Sequence[Image.Image] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) image tokens [1, T, D]; several references are averaged in CLIP space."""
        variant = self.adapter.spec.variant
        feats = self.encoder.encode(reference, variant).mean(dim=0, keepdim=True)
        neg = (self.encoder.encode(negative, variant).mean(dim=0, keepdim=True) if negative
               else self.encoder.dropped(variant))
        dev, dt = self.backend.device, self.backend.dtype
        return self.adapter.project(feats.to(dev, dt)), self.adapter.project(neg.to(dev, dt))

    @torch.no_grad()
    def generate(self, reference: Sequence[Image.Image] | None, settings: GenerationSettings,
                 negative_image: Sequence[Image.Image] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> list[Image.Image]:
        """Generate `settings.num_images` images; the same settings and seed give the same images."""
        settings = settings.sized(self.backend.family.default_resolution)
        settings.validate()
        self.pipe.scheduler = make_scheduler(settings.scheduler, self.backend.sd.scheduler_config)
        state = self.backend.state
        use_adapter = self.adapter is not None and settings.scale != 0
        if use_adapter:
            if not reference:
                raise IPAdapterError("Give at least one reference image to generate with the adapter.")
            cond, uncond = self.image_tokens(reference, negative_image)
            n = settings.num_images
            cfg = settings.guidance > 1.0
            # The pipeline batches [unconditional; conditional] prompts when guidance is on.
            state.tokens = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)]) if cfg else cond.expand(n, -1, -1)
            state.scale = settings.scale
        else:
            state.tokens = None
        callback = None
        if progress is not None:
            def callback(pipe, i, t, kwargs):
                progress(i + 1, settings.steps)
                return kwargs
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        try:
            out = self.pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
                            num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                            num_images_per_prompt=settings.num_images, width=settings.width,
                            height=settings.height, generator=generator, output_type="pil",
                            callback_on_step_end=callback)
        finally:
            state.tokens = None
        return list(out.images)
