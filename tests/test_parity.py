"""The saved file, loaded by diffusers' own `load_ip_adapter`, predicts the same noise as the core's modules."""
from __future__ import annotations

import pytest
import torch

from conftest import micro_sd15, micro_sdxl
from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.adapter.fileformat import load_adapter, save_adapter
from ipadapter_train.layout import adapter_layers

pytestmark = pytest.mark.unit


def _random_adapter(variant: str, clip_dim: int, unet_config) -> IPAdapter:
    torch.manual_seed(1)
    adapter = IPAdapter.new(variant, clip_dim, unet_config.cross_attention_dim, adapter_layers(unet_config))
    with torch.no_grad():
        for p in adapter.parameters():  # non-trivial weights everywhere, norms included
            p.add_(torch.randn_like(p) * 0.2)
    return adapter


MICRO = {"sd15": micro_sd15, "sdxl": micro_sdxl}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("variant,clip_shape", [("base", (2, 24)), ("plus", (2, 5, 40))])
def test_diffusers_load_ip_adapter_matches_core(tmp_path, family, variant, clip_shape):
    """The family's own diffusers pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) loads the file."""
    from ipadapter_train.scoring.generate import make_pipeline

    reference = MICRO[family]()
    cross = reference.family.cross_dim
    adapter = _random_adapter(variant, clip_shape[-1], reference.unet.config)
    save_adapter(adapter.state_dict(), tmp_path / "a.safetensors", dtype=torch.float32)

    pipe = make_pipeline(reference)
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="a.safetensors", image_encoder_folder=None)

    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 700])
    text = torch.randn(2, 77, cross, generator=gen)
    feats = torch.randn(*clip_shape, generator=gen)
    # SDXL's extra conditioning: the pooled text embedding and (original size, crop, target size)
    added = {"pooled": torch.randn(2, 1280, generator=gen),
             "time_ids": torch.tensor([[64.0, 96.0, 0.0, 16.0, 64.0, 64.0], [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    theirs_added = {"image_embeds": [feats.unsqueeze(1)]}
    if reference.family.addition_embed_type:
        theirs_added.update(text_embeds=added["pooled"], time_ids=added["time_ids"])
    with torch.no_grad():
        theirs = pipe.unet(noisy, t, encoder_hidden_states=text, added_cond_kwargs=theirs_added).sample

        ours_sd = MICRO[family]()
        loaded = IPAdapter.new(variant, clip_shape[-1], cross, adapter_layers(ours_sd.unet.config))
        loaded.load_state_dict(load_adapter(tmp_path / "a.safetensors")[0])
        backend = DiffusersBackend(ours_sd)
        backend.attach(loaded)
        ours = backend.predict_noise(noisy, t, text, loaded.project(feats), added=added)
        backend.detach()
        plain = backend.predict_noise(noisy, t, text, None, added=added)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3  # the adapter really changes the prediction
