"""SDXL through the same loop: both text encoders, the pooled embedding and the size/crop conditioning reach the
UNet, base and plus adapters train, buckets keep a wide image's shape, and the family is recorded and checked."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import micro_clip, micro_sd15, micro_sdxl
from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.api import train_in_memory
from ipadapter_train.config import TrainConfig
from ipadapter_train.storage.data import Sample
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.adapter.fileformat import inspect_adapter
from ipadapter_train.layout import adapter_layers

pytestmark = pytest.mark.unit

CONFIG = dict(resolution=64, mixed_precision="no", validation=False, checkpoint_every=0)


def test_text_conditioning_is_both_penultimate_states_side_by_side_and_bigg_pooled():
    sd = micro_sdxl()
    backend = DiffusersBackend(sd)
    got = backend.encode_text(["a cat", ""])
    assert got["context"].shape == (2, 77, 2048) and got["pooled"].shape == (2, 1280)
    with torch.no_grad():
        ids_l = sd.tokenizers[0](["a cat", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        ids_g = sd.tokenizers[1](["a cat", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        out_l = sd.text_encoders[0](ids_l, output_hidden_states=True)
        out_g = sd.text_encoders[1](ids_g, output_hidden_states=True)
    torch.testing.assert_close(got["context"], torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], -1))
    torch.testing.assert_close(got["pooled"], out_g.text_embeds)
    assert not torch.allclose(out_l.hidden_states[-2], out_l.last_hidden_state)  # really the penultimate one
    assert ids_g[1, -1] == 0 and ids_l[1, -1] == 49407  # bigG pads with "!" (id 0), CLIP-L with end-of-text


def test_pooled_text_and_time_ids_change_the_prediction():
    backend = DiffusersBackend(micro_sdxl())
    gen = torch.Generator().manual_seed(0)
    noisy, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500])
    text = torch.randn(1, 77, 2048, generator=gen)
    added = {"pooled": torch.randn(1, 1280, generator=gen), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        base = backend.predict_noise(noisy, t, text, None, added=added)
        cropped = backend.predict_noise(noisy, t, text, None, added={**added, "time_ids": torch.tensor(
            [[128.0, 64, 32, 0, 64, 64]])})
        other_pooled = backend.predict_noise(noisy, t, text, None, added={**added, "pooled": -added["pooled"]})
    assert (base - cropped).abs().max() > 1e-4 and (base - other_pooled).abs().max() > 1e-4
    with pytest.raises(IPAdapterError, match="SDXL UNet needs pooled and time_ids"):
        backend.predict_noise(noisy, t, text, None)


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_sdxl_adapter_trains_and_records_its_family(tmp_path, samples, variant):
    out = tmp_path / "sdxl.safetensors"
    result = train_in_memory(samples[:3], micro_sdxl(), micro_clip(), TrainConfig(variant=variant, max_steps=2,
                                                                                  **CONFIG), tmp_path / "run", out)
    assert result.steps_done == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    info = inspect_adapter(out)
    assert info["family"] == "sdxl" and info["cross_dim"] == 2048 and info["variant"] == variant
    if variant == "plus":
        assert info["resampler_dim"] == 1280  # SDXL plus: the public files' 1280-wide Resampler, 20 heads
    assert info["metadata"]["training_config"]["resolution"] == 64


def test_resolution_defaults_to_the_family(tmp_path, samples):
    # the plan decides it: the default must be SDXL's 1024 before any image is encoded
    from ipadapter_train.api import IPAdapterError, RunPaths, plan_run
    from ipadapter_train.models.clip_features import CLIPFeatureEncoder
    from ipadapter_train.training.trainer import TrainingRun

    backend, backend15 = DiffusersBackend(micro_sdxl()), DiffusersBackend(micro_sd15())
    config = TrainConfig(max_steps=1)
    plan = plan_run(config, samples[:1], backend.family, paths=RunPaths(tmp_path))
    assert plan.config.resolution == 1024 and config.resolution is None  # the caller's config is left as it was
    assert plan_run(config, samples[:1], backend15.family, paths=RunPaths(tmp_path)).config.resolution == 512
    # a plan made without a family (a .ckpt names none before it loads) is completed for the loaded models
    unknown = plan_run(config, samples[:1], paths=RunPaths(tmp_path))
    assert unknown.config.resolution is None
    assert TrainingRun(backend, CLIPFeatureEncoder(micro_clip()), unknown).config.resolution == 1024
    assert TrainingRun(backend15, CLIPFeatureEncoder(micro_clip()), unknown).config.resolution == 512
    with pytest.raises(IPAdapterError, match="planned for an SDXL model"):
        TrainingRun(backend15, CLIPFeatureEncoder(micro_clip()), plan)


def test_a_wide_image_trains_in_its_bucket_with_its_size_recorded(tmp_path):
    from ipadapter_train.training.batches import make_batch
    from ipadapter_train.training.encoding import encode_dataset
    from ipadapter_train.models.clip_features import CLIPFeatureEncoder

    wide = Image.new("RGB", (256, 128), (200, 40, 40))
    square = Image.new("RGB", (100, 100), (40, 200, 40))
    samples = [Sample(tmp_path / "wide.png", wide, "red"), Sample(tmp_path / "sq.png", square, "green")]
    config = TrainConfig(buckets=True, **{**CONFIG, "resolution": 128})  # buckets of 128^2 pixels: 128x64 is one
    backend = DiffusersBackend(micro_sdxl())
    data = encode_dataset(samples, backend, CLIPFeatureEncoder(micro_clip()), config)
    batch = make_batch(data, [0], torch.Generator().manual_seed(0), config, backend.alphas_cumprod)
    h, w = batch["noisy"].shape[-2:]
    assert w == 2 * h  # no square crop: the 2:1 image trains as 2:1
    assert batch["time_ids"][0].tolist() == [128.0, 256.0, 0.0, 0.0, 8.0 * h, 8.0 * w]
    result = train_in_memory(samples, micro_sdxl(), micro_clip(), TrainConfig(**{**config.to_dict(), "max_steps": 2}),
                             tmp_path / "run", None)
    assert result.steps_done == 2 and result.report["buckets"] == {"128x64": 1, "128x128": 1}


def test_an_sd15_adapter_is_refused_for_sdxl_and_the_reverse(tmp_path, samples):
    sd15 = micro_sd15()
    sd15_adapter = IPAdapter.new("base", 32, 768, adapter_layers(sd15.unet.config))
    with pytest.raises(IPAdapterError, match=r"SD1\.5 base adapter .* is SDXL"):
        train_in_memory(samples[:2], micro_sdxl(), micro_clip(), TrainConfig(max_steps=1, **CONFIG),
                        tmp_path / "a", None, init_adapter=sd15_adapter)
    sdxl = micro_sdxl()
    sdxl_adapter = IPAdapter.new("base", 32, 2048, adapter_layers(sdxl.unet.config))
    with pytest.raises(IPAdapterError, match=r"SDXL base adapter .* is SD1\.5"):
        train_in_memory(samples[:2], micro_sd15(), micro_clip(), TrainConfig(max_steps=1, **CONFIG),
                        tmp_path / "b", None, init_adapter=sdxl_adapter)
