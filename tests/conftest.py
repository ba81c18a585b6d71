"""Shared fixtures: micro SD1.5-layout models built from configs with random weights (diffusers'
own testing convention), the shipped tokenizer and sample photos. Nothing is downloaded."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "ipadapter_train" / "assets" / "samples"


def micro_sd15(seed: int = 0):
    """A 2-level SD1.5-style UNet 32/64 wide, a 1-layer 768-d CLIP text encoder and a tiny VAE (8x down).

    The cross-attention width stays 768, as in SD1.5, so the loaders accept it as an SD1.5 model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipadapter_train.sd15 import SD15, load_tokenizer, shipped_config_dir
    import json

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=768,
        attention_head_dim=2, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=12, vocab_size=49408, max_position_embeddings=77))
    sched = json.loads((shipped_config_dir() / "scheduler" / "scheduler_config.json").read_text())
    for m in (unet, vae, text):
        m.eval().requires_grad_(False)
    return SD15(unet=unet, vae=vae, text_encoder=text, tokenizer=load_tokenizer(), scheduler_config=sched,
                source="micro-sd15 (random weights)", random_weights=True)


def micro_clip(seed: int = 0):
    """The `tiny` CLIP vision preset: 64 wide, 2 layers, 32-d embedding."""
    from ipadapter_train.clip_vision import build_clip_vision

    return build_clip_vision("tiny", seed=seed)


@pytest.fixture
def samples():
    from ipadapter_train.data import load_image_folder

    return load_image_folder(SAMPLES)[0]


@pytest.fixture(autouse=True)
def _quiet_libraries():
    for name in ("accelerate", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield


ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 600, module: tuple[str, ...] = ("-m", "ipadapter_train")) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """A micro SD1.5 in diffusers folder layout and a tiny CLIP vision file, random weights."""
    from diffusers import PNDMScheduler

    from ipadapter_train.clip_vision import save_clip_vision
    from ipadapter_train.sd15 import shipped_config_dir

    root = tmp_path_factory.mktemp("models")
    sd = micro_sd15()
    folder = root / "sd15"
    sd.unet.save_pretrained(folder / "unet")
    sd.vae.save_pretrained(folder / "vae")
    sd.text_encoder.save_pretrained(folder / "text_encoder")
    sd.tokenizer.save_pretrained(folder / "tokenizer")
    PNDMScheduler.from_config(sd.scheduler_config).save_pretrained(folder / "scheduler")
    shutil.copy(shipped_config_dir() / "model_index.json", folder / "model_index.json")
    clip = root / "clip.safetensors"
    save_clip_vision(micro_clip(), clip)
    return {"sd": folder, "clip": clip, "root": root}


def train_args(models, out: Path, *extra: str) -> list[str]:
    return ["train", "--images", str(SAMPLES), "--base-model", str(models["sd"]), "--image-encoder",
            str(models["clip"]), "--out", str(out), "--resolution", "64", "--precision", "no",
            "--no-validation", *extra]
