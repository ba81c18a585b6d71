"""Shared fixtures: micro SD1.5-layout models built from configs with random weights (diffusers'
own testing convention), the shipped tokenizer and sample photos. Nothing is downloaded."""
from __future__ import annotations

import logging
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
                source="micro-sd15 (random weights)")


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
