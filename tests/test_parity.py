"""The saved file, loaded by diffusers' own `load_ip_adapter`, predicts the same noise as the core's modules."""
from __future__ import annotations

import pytest
import torch

from conftest import micro_sd15
from ipadapter_train.adapter import IPAdapter
from ipadapter_train.diffusers_backend import DiffusersBackend
from ipadapter_train.fileformat import load_adapter, save_adapter
from ipadapter_train.layout import adapter_layers


def _random_adapter(variant: str, clip_dim: int, unet_config) -> IPAdapter:
    torch.manual_seed(1)
    adapter = IPAdapter.new(variant, clip_dim, unet_config.cross_attention_dim, adapter_layers(unet_config))
    with torch.no_grad():
        for p in adapter.parameters():  # non-trivial weights everywhere, norms included
            p.add_(torch.randn_like(p) * 0.2)
    return adapter


@pytest.mark.parametrize("variant,clip_shape", [("base", (2, 24)), ("plus", (2, 5, 40))])
def test_diffusers_load_ip_adapter_matches_core(tmp_path, variant, clip_shape):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    reference = micro_sd15()
    adapter = _random_adapter(variant, clip_shape[-1], reference.unet.config)
    save_adapter(adapter.state_dict(), tmp_path / "a.safetensors", dtype=torch.float32)

    pipe = StableDiffusionPipeline(vae=reference.vae, text_encoder=reference.text_encoder,
                                   tokenizer=reference.tokenizer, unet=reference.unet,
                                   scheduler=DDIMScheduler.from_config(reference.scheduler_config),
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="a.safetensors", image_encoder_folder=None)

    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([100, 700])
    text = torch.randn(2, 77, 768, generator=gen)
    feats = torch.randn(*clip_shape, generator=gen)
    with torch.no_grad():
        theirs = pipe.unet(noisy, t, encoder_hidden_states=text,
                           added_cond_kwargs={"image_embeds": [feats.unsqueeze(1)]}).sample

        ours_sd = micro_sd15()
        loaded = IPAdapter.new(variant, clip_shape[-1], 768, adapter_layers(ours_sd.unet.config))
        loaded.load_state_dict(load_adapter(tmp_path / "a.safetensors")[0])
        backend = DiffusersBackend(ours_sd)
        backend.attach(loaded)
        ours = backend.predict_noise(noisy, t, text, loaded.project(feats))
        backend.detach()
        plain = backend.predict_noise(noisy, t, text, None)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3  # the adapter really changes the prediction
