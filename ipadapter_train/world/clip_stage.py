"""Stage 1: the world's CLIP, vision and text towers trained contrastively on pictures and their captions.

It is the adapter's image encoder (its vision half), the scorer (both halves) and, through its text tower, the
text encoder of the world's diffusion model, as CLIP ViT-L's text tower is SD1.5's. Captions name all three
attributes or a random subset; every caption a picture fits counts as its positive.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..families import WORLD
from .data import captions, compatible, pictures, to_clip
from .domain import ATTRIBUTES, Attributes, caption, choices
from .optim import descend, optimiser
from .recipe import Recipe

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, float], None]  # stage, done, total, loss

# the vision tower: 64 px pictures in 8 px patches (an 8 x 8 grid), 64 wide, 4 layers of 4 heads
VISION = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, patch_size=8,
              image_size=64, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5)
PROJECTION = 64


def world_clip_config():
    """The `CLIPConfig` of the world's CLIP: its text tower is the world family's text encoder config."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = dict(WORLD.config("text_encoder/config.json"))
    for key in ("architectures", "torch_dtype", "model_type"):
        text.pop(key, None)
    text.update(projection_dim=PROJECTION, pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
    return CLIPConfig(text_config=CLIPTextConfig(**text).to_dict(),
                      vision_config=CLIPVisionConfig(**VISION, projection_dim=PROJECTION).to_dict(),
                      projection_dim=PROJECTION)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids padded to 77, as the pipelines and the scorer tokenize."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_clip(recipe: Recipe, tokenizer, progress: Progress | None = None):
    """Train the world's CLIP from `recipe.seed`; returns the `CLIPModel` (eval mode, frozen)."""
    from transformers import CLIPModel

    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng([recipe.seed, 1])
    model = CLIPModel(world_clip_config())
    stage = recipe.clip
    opt, sched = optimiser(model.parameters(), stage)
    model.train()
    for step in range(stage.steps):
        batch, attrs = pictures(rng, stage.batch)
        texts, named = captions(attrs, rng, full=0.7)
        out = model(input_ids=tokenize(tokenizer, texts), pixel_values=to_clip(batch))
        positives = compatible(attrs, named, attrs)
        # soft targets: every fitting caption (and every fitting picture) shares the probability
        loss = (F.cross_entropy(out.logits_per_image, positives / positives.sum(1, keepdim=True)) +
                F.cross_entropy(out.logits_per_text, positives.T / positives.T.sum(1, keepdim=True))) / 2
        value = descend(loss, opt, sched)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: a temperature of at least 1/100
        if progress:
            progress("clip", step + 1, stage.steps, value)
    return model.eval().requires_grad_(False)


def projected(out) -> torch.Tensor:
    """The projected embedding of `get_image_features` / `get_text_features` (transformers 5 returns it as the
    output's pooler_output, 4.x as a tensor)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, recipe: Recipe, n: int) -> dict[str, float]:
    """Per attribute, how often the caption naming only that attribute's true value is CLIP's best among its
    values, on `n` fresh pictures (drawn from a generator of their own)."""
    rng = np.random.default_rng([recipe.seed, 9])
    batch, attrs = pictures(rng, n)
    image = F.normalize(projected(model.get_image_features(pixel_values=to_clip(batch))), dim=-1)
    out = {}
    for name in ATTRIBUTES:
        values = choices(name)
        probe = [caption(Attributes(**{**{"shape": "circle", "colour": "red", "background": "grey"}, name: v}),
                         [name]) for v in values]
        text = F.normalize(projected(model.get_text_features(input_ids=tokenize(tokenizer, probe))), dim=-1)
        best = (image @ text.T).argmax(1)
        out[name] = float(np.mean([values[int(b)] == a.value(name) for b, a in zip(best, attrs)]))
    return out
