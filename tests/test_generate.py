"""Generation with an adapter: deterministic, equal to diffusers' own IP-Adapter path, and refusing misfits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import micro_clip, micro_sd15, micro_sdxl
from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.training.adapter_init import load_adapter_module
from ipadapter_train.adapter.fileformat import save_adapter
from ipadapter_train.scoring.generate import GenerationSettings, Generator
from ipadapter_train.layout import adapter_layers

pytestmark = pytest.mark.unit

SETTINGS = dict(prompt="a cat", steps=4, width=64, height=64, seed=7, guidance=7.5)


def adapter_file(tmp_path, variant="base", clip_dim=None, micro=micro_sd15):
    sd = micro()
    clip = micro_clip()
    dim = clip_dim or (clip.config.projection_dim if variant == "base" else clip.config.hidden_size)
    torch.manual_seed(2)
    adapter = IPAdapter.new(variant, dim, sd.family.cross_dim, adapter_layers(sd.unet.config))
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path / f"{variant}.safetensors"
    save_adapter(adapter.state_dict(), path, dtype=torch.float32)
    return path


def load(path) -> IPAdapter:
    return load_adapter_module(path)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_same_seed_same_images_and_scale_changes_them(tmp_path, samples):
    gen = Generator(micro_sd15(), micro_clip(), load(adapter_file(tmp_path)))
    ref = [samples[0].image]
    a = gen.generate(ref, GenerationSettings(**SETTINGS, num_images=2))
    b = gen.generate(ref, GenerationSettings(**SETTINGS, num_images=2))
    assert len(a) == 2 and a[0].size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))
    off = gen.generate(ref, GenerationSettings(**SETTINGS, num_images=2, scale=0.0))
    assert np.abs(pixels(a) - pixels(off)).max() > 0
    other_ref = gen.generate([samples[1].image], GenerationSettings(**SETTINGS, num_images=2))
    assert np.abs(pixels(a) - pixels(other_ref)).max() > 0


def test_scale_zero_equals_the_plain_pipeline(tmp_path, samples):
    with_adapter = Generator(micro_sd15(), micro_clip(), load(adapter_file(tmp_path)))
    plain = Generator(micro_sd15(), micro_clip(), None)
    s = GenerationSettings(**SETTINGS, scale=0.0)
    assert np.array_equal(pixels(with_adapter.generate([samples[0].image], s)), pixels(plain.generate(None, s)))


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_matches_diffusers_own_ip_adapter_path(tmp_path, samples, variant):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ipadapter_train.models.clip_vision import image_processor

    # Both sides get the same CLIP preprocessing (transformers picks a torchvision or a Pillow resize
    # depending on what is installed); the comparison is about the adapter path, not the resize.
    path = adapter_file(tmp_path, variant)
    ref = samples[2].image
    ours = Generator(micro_sd15(), micro_clip(), load(path)).generate([ref], GenerationSettings(**SETTINGS))

    sd = micro_sd15()
    pipe = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                   scheduler=DDIMScheduler.from_config(sd.scheduler_config), safety_checker=None,
                                   feature_extractor=image_processor(224), image_encoder=micro_clip(),
                                   requires_safety_checker=False)
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(1.0)
    theirs = pipe(prompt="a cat", ip_adapter_image=ref, num_inference_steps=4, guidance_scale=7.5, width=64,
                  height=64, generator=torch.Generator("cpu").manual_seed(7)).images
    diff = np.abs(pixels(ours) - pixels(theirs))
    assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_sdxl_generation_matches_diffusers_own_sdxl_ip_adapter_path(tmp_path, samples):
    """The SDXL pipeline (two text encoders, pooled embedding, size conditioning) with our patched layers gives
    what StableDiffusionXLPipeline.load_ip_adapter gives with the same file, seed and reference."""
    from ipadapter_train.models.clip_vision import image_processor
    from ipadapter_train.scoring.generate import make_pipeline

    path = adapter_file(tmp_path, "base", micro=micro_sdxl)
    ref = samples[2].image
    gen = Generator(micro_sdxl(), micro_clip(), load(path))
    ours = gen.generate([ref], GenerationSettings(**SETTINGS))
    assert type(gen.pipe).__name__ == "StableDiffusionXLPipeline" and ours[0].size == (64, 64)
    default = GenerationSettings(prompt="a cat").sized(gen.backend.family.default_resolution)
    assert (default.width, default.height) == (1024, 1024)  # SDXL's own size when none is given

    sd = micro_sdxl()
    pipe = make_pipeline(sd)
    pipe.register_modules(image_encoder=micro_clip(), feature_extractor=image_processor(224))
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(1.0)
    pipe.scheduler = gen.pipe.scheduler.__class__.from_config(sd.scheduler_config)
    theirs = pipe(prompt="a cat", ip_adapter_image=ref, num_inference_steps=4, guidance_scale=7.5, width=64,
                  height=64, generator=torch.Generator("cpu").manual_seed(7)).images
    diff = np.abs(pixels(ours) - pixels(theirs))
    assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())
    plain = Generator(micro_sdxl(), micro_clip(), None).generate(None, GenerationSettings(**SETTINGS))
    assert np.abs(pixels(ours) - pixels(plain)).max() > 0  # the adapter acts


def test_adapter_for_another_encoder_or_model_is_refused(tmp_path):
    wrong_encoder = load(adapter_file(tmp_path, "base", clip_dim=1024))
    with pytest.raises(IPAdapterError, match="1024-d"):
        Generator(micro_sd15(), micro_clip(), wrong_encoder, adapter_name="vith.safetensors")
    sd = micro_sd15()
    sdxl_like = IPAdapter.new("base", 32, 2048, adapter_layers(sd.unet.config))
    with pytest.raises(IPAdapterError, match="2048-d cross-attention"):
        Generator(sd, micro_clip(), sdxl_like)


def test_an_adapter_module_with_nan_weights_is_refused_before_sampling(tmp_path):
    # a module handed over directly (the API, a notebook) gets the same check as a file read from disk
    adapter = load(adapter_file(tmp_path))
    with torch.no_grad():
        adapter.layer(1).to_k_ip.weight[0, 0] = float("nan")
    with pytest.raises(IPAdapterError, match=r"the adapter has non-finite weights \(NaN or infinity\) in "
                                             r"ip_adapter\.1\.to_k_ip\.weight"):
        Generator(micro_sd15(), micro_clip(), adapter)
