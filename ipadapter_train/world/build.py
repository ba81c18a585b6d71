"""`make-learned-world`: build the whole world from nothing, deterministically from a seed.

    files = make_learned_world("learned_world/", Recipe(seed=0))

Stages: the CLIP, the VAE, the UNet (on the CLIP's text tower and the VAE's latents), the shape reader, then
the figures (CLIP zero-shot, the reader on real pictures, text-only samples read back). Written, each
atomically: `world.safetensors` (a single-file checkpoint of the world family), `clip-world.safetensors` (the
CLIP: the adapter's image encoder and the scorer), `reader.safetensors`, `samples.png` and `world.json` (the
recipe, the figures, the machine and the time each stage took). Every model file is marked as a learned-world
model. The same seed, torch build and thread count give the same files.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from ..families import WORLD
from ..models.clip_model import save_clip
from ..models.diffusion_model import DiffusionModel
from ..models.parts import family_tokenizers
from ..models.single_file import save_single_file
from ..scoring.generate import make_pipeline
from ..storage.weights_io import atomic_write_text
from ..training.report import cpu_name
from .clip_stage import train_clip, zero_shot_accuracy
from .figures import sample_accuracy
from .grid import save_samples
from .reader import reader_accuracy, save_reader, train_reader
from .recipe import Recipe
from .unet_stage import train_unet, world_text_encoder
from .vae_stage import train_vae

log = logging.getLogger(__name__)

# the metadata every learned-world file carries: not random weights, and not SD either
WORLD_MARK = "ipadapter_train_learned_world"
FILES = {"model": "world.safetensors", "clip": "clip-world.safetensors", "reader": "reader.safetensors",
         "samples": "samples.png", "report": "world.json"}

Progress = Callable[[str, int, int, float], None]  # stage, done, total, loss


def make_learned_world(out_dir: str | os.PathLike, recipe: Recipe = Recipe(),
                       progress: Progress | None = None) -> dict[str, Path]:
    """Train every model of the world and write its files into `out_dir`; returns {name: path} (see `FILES`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (tokenizer,) = family_tokenizers(WORLD)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def timed(name: str, work: Callable):
        t0 = time.perf_counter()
        result = work()
        seconds[name] = round(time.perf_counter() - t0, 1)
        log.info("world: %s done in %.0f s", name, seconds[name])
        return result

    clip = timed("clip", lambda: train_clip(recipe, tokenizer, progress))
    vae = timed("vae", lambda: train_vae(recipe, progress))
    text_encoder = world_text_encoder(clip)
    unet = timed("unet", lambda: train_unet(recipe, vae, text_encoder, tokenizer, progress))
    reader = timed("reader", lambda: train_reader(recipe, progress))

    figures = {"clip_zero_shot": timed("clip figures", lambda: zero_shot_accuracy(clip, tokenizer, recipe,
                                                                                  recipe.eval_pictures)),
               "reader": timed("reader figures", lambda: reader_accuracy(reader, recipe))}
    model = DiffusionModel(WORLD, unet, vae, [text_encoder], [tokenizer], WORLD.config(
        "scheduler/scheduler_config.json"), "learned world", random_weights=False)
    pipe = make_pipeline(model)  # the family's pipeline with DDIM, as `generate` samples
    text_only, samples, truth = timed("samples", lambda: sample_accuracy(
        pipe, reader, recipe.eval_samples, recipe.seed, recipe.sample_steps, recipe.guidance))
    figures["text_only_samples"] = {**text_only, "samples": recipe.eval_samples, "steps": recipe.sample_steps,
                                    "guidance": recipe.guidance}

    mark = {WORLD_MARK: "true"}
    files = {"model": save_single_file(model, out / FILES["model"], metadata=mark),
             "clip": save_clip(clip, out / FILES["clip"], metadata=mark),
             "reader": save_reader(reader, out / FILES["reader"]),
             "samples": save_samples(samples, truth, out / FILES["samples"])}
    report = {
        "learned_world": True,
        "note": WORLD.figures_note,
        "recipe": recipe.to_dict(), "figures": figures, "seconds": {**seconds, "total": round(time.perf_counter()
                                                                                             - start, 1)},
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "files": {name: {"name": p.name, "bytes": p.stat().st_size} for name, p in files.items()},
    }
    files["report"] = atomic_write_text(out / FILES["report"], json.dumps(report, indent=2) + "\n")
    return files
