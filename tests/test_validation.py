"""The conditioning gain measures whether the adapter uses the image: zero when every image gets the
same features, non-zero when each image is compared with another image's features."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import micro_clip, micro_sd15
from ipadapter_train.training.adapter_init import build_adapter
from ipadapter_train.models.clip_features import CLIPFeatureEncoder
from ipadapter_train.config import TrainConfig
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.training.encoding import encode_dataset
from ipadapter_train.training.validation import conditioning_gain

pytestmark = pytest.mark.unit

CONFIG = TrainConfig(resolution=64, mixed_precision="no", validation=True, validation_timesteps=(300, 700), seed=3)


@pytest.fixture(scope="module")
def setup():
    """The micro models with an attached adapter whose image tokens depend strongly on the features."""
    from ipadapter_train.storage.data import load_image_folder

    from conftest import SAMPLES

    samples = load_image_folder(SAMPLES)[0]
    backend = DiffusersBackend(micro_sd15())
    encoder = CLIPFeatureEncoder(micro_clip())
    data = encode_dataset(samples, backend, encoder, CONFIG)
    adapter = build_adapter(backend, encoder, CONFIG)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter's image path matters; a fresh one's barely does
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    backend.attach(adapter)
    yield adapter, backend, data
    backend.detach()


def test_the_gain_compares_each_image_with_another_images_features(setup):
    adapter, backend, data = setup
    n = len(data)
    feats = data.features
    assert n >= 2 and all(not torch.equal(feats[i], feats[j]) for i in range(n) for j in range(i))
    gain = conditioning_gain(adapter, backend, data, CONFIG)
    assert gain["images"] == n and gain["timesteps"] == [300, 700]
    assert math.isfinite(gain["own_loss"]) and math.isfinite(gain["shuffled_loss"])
    assert gain["gain"] == pytest.approx(gain["shuffled_loss"] - gain["own_loss"])
    # Comparing an image with its own features again (a broken shuffle) gives exactly 0: the two rows
    # of the batch are the same computation. Another image's features give another loss.
    assert abs(gain["gain"]) > 1e-6 * gain["own_loss"], gain


def test_the_gain_is_zero_when_every_image_has_the_same_features(setup):
    adapter, backend, data = setup
    same = dataclasses.replace(data, features=data.features[:1].expand_as(data.features).clone())
    gain = conditioning_gain(adapter, backend, same, CONFIG)
    assert gain["gain"] == 0.0 and gain["own_loss"] > 0, gain


def test_fewer_than_two_images_is_skipped_with_a_note(setup):
    adapter, backend, data = setup
    gain = conditioning_gain(adapter, backend, data, dataclasses.replace(CONFIG, validation_max_images=1))
    assert gain["gain"] is None and "at least 2 images" in gain["note"]


def test_the_held_out_loss_is_the_same_each_round_for_the_same_adapter_and_moves_with_the_adapter(setup):
    """training/heldout_loss.py: the references' own-feature denoising loss, with the same noise every round, so two
    rounds differ only by training; it equals the conditioning gain's own loss computed the same way."""
    from ipadapter_train.training.heldout_loss import HeldOutLoss
    from ipadapter_train.storage.data import load_image_folder
    from ipadapter_train.training.batches import centre_view
    from ipadapter_train.training.validation import noise_losses

    from conftest import SAMPLES

    adapter, backend, data = setup
    references = load_image_folder(SAMPLES)[0][:2]
    heldout = HeldOutLoss(references, CONFIG)
    assert heldout.calls == 2 * len(CONFIG.validation_timesteps) and heldout.measure(adapter, backend) is None
    heldout.set_up(backend, CLIPFeatureEncoder(micro_clip()))  # CLIP features computed
    first, again = heldout.measure(adapter, backend), heldout.measure(adapter, backend)
    assert math.isfinite(first) and first == again
    encoder, calls = CLIPFeatureEncoder(micro_clip()), []
    encode = encoder.encode
    encoder.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    given = HeldOutLoss(references, CONFIG)  # the previews' features given: the image encoder is not run again
    given.set_up(backend, encoder, heldout.data.features.clone())
    assert given.measure(adapter, backend) == first and not calls
    gen = torch.Generator().manual_seed(CONFIG.seed + 104729)
    by_hand = [float(noise_losses(adapter, backend, heldout.data, i, heldout.data.features[i:i + 1], t,
                                  torch.randn((1, *centre_view(heldout.data, i)[0].shape), generator=gen))[0])
               for i in range(2) for t in CONFIG.validation_timesteps]
    assert first == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-6)
    with torch.no_grad():  # a step of training changes it
        adapter.image_proj.proj.weight.add_(0.5)
    try:
        assert heldout.measure(adapter, backend) != first
    finally:
        with torch.no_grad():
            adapter.image_proj.proj.weight.sub_(0.5)
