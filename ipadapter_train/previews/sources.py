"""The fixed preview set of a run: which references and prompts, encoded once, rendered at any step.

A preview grid shows each reference image with each prompt at the preview weights (0 = no adapter, 0.5,
1.0), on fixed seeds: every cell keeps its noise for the whole run, so two grids differ only by training.
Everything a round needs from the encoders (the references' CLIP features, the prompts' text) is encoded
once at set-up, like the training set, so a round costs only UNet calls and the VAE decoder. The weight-0
images do not depend on the adapter: they are rendered once, in the first round with the adapter detached
(previews/runner.py), and are the no-adapter images exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
from PIL import Image

from ..adapter.module import IPAdapter
from ..config import TrainConfig
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..errors import IPAdapterError
from ..families import ModelFamily
from ..seeds import seed_of
from ..storage.data import Sample
from .holdout import split_holdout
from .sampler import Conditioning, sample_latents

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class PreviewSource:
    """What a caller gives for previews; anything left out is chosen by the run (see `plan_previews`)."""

    images: Sequence[Sample] | None = None  # references; None: hold training images out (previews/holdout.py)
    prompts: Sequence[str] | None = None  # None: the references' captions
    scorer: object | None = None  # a `scoring.scorer.Scorer` (full CLIP) to score every preview; None: no scores
    folder: Path | None = None  # where `images` came from: an input, never written into
    # without a scorer, measure the references' denoising loss each round (training/heldout_loss.py): what a search
    # judges by when it has no scorer; off by default, as it costs UNet calls at the training size
    heldout_loss: bool = False


@dataclass(frozen=True)
class PreviewCell:
    """One row of a grid: a reference with a prompt, and the seed of its noise."""

    reference: int
    prompt: int
    seed: int


@dataclass
class Previews:
    """References x prompts of a run (`plan_previews`), ready to `encode` once and render at any step."""

    references: list[Sample]
    prompts: list[str]
    config: TrainConfig
    held_out: list[str] = field(default_factory=list)  # names of training images kept out of training
    heldout_loss: bool = False  # PreviewSource.heldout_loss
    cells: list[PreviewCell] = field(init=False)
    baseline: list[Image.Image] | None = field(default=None, init=False)  # weight-0 images, per cell

    def __post_init__(self) -> None:
        n = len(self.prompts)
        self.cells = [PreviewCell(i // n, i % n, seed_of(self.config.preview_seed, i)) for i in
                      range(len(self.references) * n)]

    @property
    def adapter_weights(self) -> list[float]:
        """The preview weights that need the adapter (all but 0)."""
        return [w for w in self.config.preview_weights if w != 0]

    def size(self, family: ModelFamily) -> int:
        """The previews' side in pixels: the setting, or half the model family's resolution (not above the training
        resolution)."""
        half = family.default_resolution // 2
        return self.config.preview_size or min(half, self.config.resolution or half)

    def encode(self, backend: DiffusionBackend, encoder: ImageFeatureEncoder) -> None:
        """Encode the references and the prompts once (before the run releases its encoders)."""
        variant = self.config.variant
        self.features = encoder.encode([r.image for r in self.references], variant)
        self.dropped = encoder.dropped(variant)
        text = backend.encode_text(list(self.prompts) + [""])
        self.context, self.empty = text["context"][:-1], text["context"][-1:]
        pooled = text.get("pooled")
        self.pooled, self.empty_pooled = (pooled[:-1], pooled[-1:]) if pooled is not None else (None, None)
        side = self.side = self.size(backend.family)
        # SDXL's size/crop conditioning of a whole, uncropped picture at the preview size
        self.time_ids = (torch.tensor([side, side, 0, 0, side, side], dtype=torch.float32)
                         if backend.family.size_conditioning else None)
        self.noise = torch.stack([torch.randn((4, side // 8, side // 8),
                                              generator=torch.Generator().manual_seed(c.seed)) for c in self.cells])

    def _conditioning(self, tokens: torch.Tensor | None, uncond_tokens: torch.Tensor | None
                      ) -> tuple[Conditioning, Conditioning]:
        n = len(self.cells)
        refs = [c.reference for c in self.cells]
        prompts = [c.prompt for c in self.cells]
        added_c, added_u = {}, {}
        if self.pooled is not None:
            added_c["pooled"], added_u["pooled"] = self.pooled[prompts], self.empty_pooled.expand(n, -1)
        if self.time_ids is not None:
            added_c["time_ids"] = added_u["time_ids"] = self.time_ids.expand(n, -1)
        cond = Conditioning(self.context[prompts], None if tokens is None else tokens[refs], added_c)
        uncond = Conditioning(self.empty.expand(n, -1, -1), None if uncond_tokens is None else
                              uncond_tokens.expand(n, -1, -1), added_u)
        return cond, uncond

    def _render(self, backend: DiffusionBackend, adapter: IPAdapter | None, weight: float,
                autocast: Callable[[], ContextManager] | None, progress: Progress | None) -> list[Image.Image]:
        tokens = uncond_tokens = None
        if adapter is not None and weight != 0:
            with torch.no_grad():
                device = next(adapter.parameters()).device
                tokens = adapter.project(self.features.to(device)).float().cpu()
                uncond_tokens = adapter.project(self.dropped.to(device)).float().cpu()
        cond, uncond = self._conditioning(tokens, uncond_tokens)
        latents = sample_latents(backend, self.noise, cond, uncond, self.config.preview_steps,
                                 self.config.preview_guidance, weight, autocast, progress)
        pixels = backend.decode_latents(latents)
        return [to_pil(p) for p in pixels]

    def render_baseline(self, backend: DiffusionBackend, autocast=None, progress: Progress | None = None) -> None:
        """The weight-0 images (no adapter): once, with the adapter not attached to the model (the first round
        detaches it for them)."""
        if 0 in self.config.preview_weights and self.baseline is None:
            self.baseline = self._render(backend, None, 0.0, autocast, progress)

    def render(self, backend: DiffusionBackend, adapter: IPAdapter, autocast=None,
               progress: Progress | None = None) -> dict[float, list[Image.Image]]:
        """Every preview weight's images, per cell: {weight: [image of cell 0, ...]} (the adapter attached)."""
        if 0 in self.config.preview_weights and self.baseline is None:
            raise IPAdapterError("The weight-0 previews are rendered with the adapter detached (render_baseline) "
                                 "before the other weights; this is a bug in the caller.")
        out: dict[float, list[Image.Image]] = {}
        for weight in self.config.preview_weights:
            out[weight] = self.baseline if weight == 0 else self._render(backend, adapter, weight, autocast,
                                                                         progress)
        return out

    def describe(self) -> dict:
        """For report.json: references (and which were held out of training), prompts, settings."""
        c = self.config
        return {"references": [str(r.path) for r in self.references], "held_out": list(self.held_out),
                "prompts": list(self.prompts), "weights": list(c.preview_weights),
                "size": getattr(self, "side", c.preview_size),
                "sampling_steps": c.preview_steps, "guidance": c.preview_guidance, "seed": c.preview_seed}


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> an RGB image."""
    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def default_prompts(references: Sequence[Sample]) -> list[str]:
    """The references' distinct captions, in order; [""] (image only) when none has one."""
    prompts = list(dict.fromkeys(r.caption.strip() for r in references if r.caption.strip()))
    return prompts or [""]


def plan_previews(samples: Sequence[Sample], source: PreviewSource | None, config: TrainConfig
                  ) -> tuple[list[Sample], Previews | None]:
    """(the samples to train on, the run's previews or None when they are off).

    Without preview images, training images are held out (previews/holdout.py) and previewed; with fewer than 5 images
    none are held out and the previews use all of them, which the report says.
    """
    if not config.previews_on:
        return list(samples), None
    source = source or PreviewSource()
    if (config.keep == "best" or config.early_stop) and source.scorer is None:
        raise IPAdapterError("Keeping the best step and stopping early need scored previews: give a CLIP model "
                             "to score them (--clip; the Train node's scorer).")
    held: list[Sample] = []
    if source.images:
        train, references = list(samples), list(source.images)
    else:
        train, held = split_holdout(samples, config.seed)
        references = held or list(samples[:1])
        if held:
            log.info("Held out of training for the previews: %s.", ", ".join(str(s.path) for s in held))
        else:
            log.info("Previews use the training image %s (fewer than 5 images: none is held out).",
                     samples[0].path)
    if not train:
        raise IPAdapterError("No training images are left after holding the preview images out.")
    prompts = [p.strip() for p in source.prompts] if source.prompts else default_prompts(references)
    return train, Previews(references, prompts, config, [str(s.path) for s in held],
                           heldout_loss=bool(source.heldout_loss))
