"""The training loop on micro random-weight models: it learns, saves, resumes, cancels and stops on NaN."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import micro_clip, micro_sd15
from ipadapter_train.api import train_in_memory
from ipadapter_train.clip_features import CLIPFeatureEncoder
from ipadapter_train.config import TrainConfig
from ipadapter_train.diffusers_backend import DiffusersBackend
from ipadapter_train.errors import IPAdapterError, TrainingCancelled, TrainingDiverged
from ipadapter_train.fileformat import inspect_adapter, load_adapter
from ipadapter_train.precision import cpu_has_bf16


def cfg(**kw) -> TrainConfig:
    base = dict(resolution=64, max_steps=6, checkpoint_every=2, mixed_precision="no", validation=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, samples, config, name="a", **kw):
    return train_in_memory(samples, micro_sd15(), micro_clip(), config, tmp_path / f"{name}-run",
                           tmp_path / f"{name}.safetensors", **kw)


def fixed_batch_loss(adapter, samples) -> float:
    """Loss on one fixed batch (same noise and timesteps every call) with the given adapter."""
    sd = micro_sd15()
    backend = DiffusersBackend(sd)
    enc = CLIPFeatureEncoder(micro_clip())
    from ipadapter_train.encoding import encode_dataset

    data = encode_dataset(samples, backend, enc, cfg())
    gen = torch.Generator().manual_seed(0)
    x0 = torch.stack([m[:, :8, :8] for m in data.latent_mean])
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(100, 900, (len(samples),), generator=gen)
    a = backend.alphas_cumprod[t].view(-1, 1, 1, 1)
    text = data.text[data.text_index]
    backend.attach(adapter)
    with torch.no_grad():
        pred = backend.predict_noise(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, text, adapter.project(data.features))
    backend.detach()
    return float(F.mse_loss(pred, noise))


def test_loss_goes_down_on_the_sample_images(tmp_path, samples):
    config = cfg(max_steps=60, learning_rate=2e-3, checkpoint_every=0)
    from ipadapter_train.adapter_init import build_adapter

    initial = build_adapter(DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip()), config)
    result = run(tmp_path, samples, config)
    before, after = fixed_batch_loss(initial, samples), fixed_batch_loss(result.adapter, samples)
    assert after < 0.9 * before, (before, after)  # a real drop, far beyond float noise
    assert len(result.losses) == 60 and result.steps_done == 60 and not result.cancelled


def test_saved_adapter_round_trips_with_metadata(tmp_path, samples):
    result = run(tmp_path, samples, cfg(max_steps=2), metadata={"random_weights": True})
    state, meta = load_adapter(tmp_path / "a.safetensors")
    for key, value in result.adapter.state_dict().items():
        torch.testing.assert_close(state[key].float(), value.half().float())
    info = inspect_adapter(tmp_path / "a.safetensors")
    assert info["variant"] == "base" and info["tokens"] == 4 and info["clip_dim"] == 32
    assert int(meta["steps"]) == 2
    assert json.loads(meta["training_config"])["resolution"] == 64
    report = json.loads((tmp_path / "a-run" / "report.json").read_text())
    assert report["random_weights"] is True and report["steps"] == 2 and len(report["losses"]) == 2
    assert report["seconds_per_step"] > 0 and report["peak_memory"]["peak_rss_bytes"] > 0
    assert (tmp_path / "a-run" / "loss.png").stat().st_size > 1000


def test_plus_variant_trains(tmp_path, samples):
    result = run(tmp_path, samples, cfg(variant="plus", max_steps=2))
    info = inspect_adapter(tmp_path / "a.safetensors")
    assert info["variant"] == "plus" and info["tokens"] == 16 and info["clip_dim"] == 64
    assert result.steps_done == 2


def test_resume_equals_uninterrupted(tmp_path, samples):
    full = run(tmp_path, samples, cfg(flip=True, random_crop=True), name="full")

    def stop_at_3(step, total, loss):
        if step == 3:
            raise TrainingCancelled()

    part = run(tmp_path, samples, cfg(flip=True, random_crop=True), name="part", callbacks=[stop_at_3])
    assert part.cancelled and part.steps_done == 3
    resumed = run(tmp_path, samples, cfg(flip=True, random_crop=True), name="part", resume=tmp_path / "part-run")
    assert resumed.steps_done == 6
    assert resumed.losses == full.losses
    for key, value in full.adapter.state_dict().items():
        assert torch.equal(value, resumed.adapter.state_dict()[key]), key


def test_cancel_keeps_a_loadable_adapter(tmp_path, samples):
    def stop(step, total, loss):
        if step == 1:
            raise TrainingCancelled()

    result = run(tmp_path, samples, cfg(), callbacks=[stop])
    assert result.cancelled and result.steps_done == 1
    state, meta = load_adapter(tmp_path / "a.safetensors")
    assert meta["cancelled_at_step"] == "1" and "image_proj.proj.weight" in state
    assert json.loads((tmp_path / "a-run" / "checkpoint" / "state.json").read_text())["step"] == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, samples):
    with pytest.raises(TrainingDiverged, match="step"):
        run(tmp_path, samples, cfg(max_steps=20, learning_rate=1e30, checkpoint_every=1))
    state = json.loads((tmp_path / "a-run" / "checkpoint" / "state.json").read_text())
    assert all(v == v and abs(v) != float("inf") for v in state["losses"])  # only finite losses were kept
    assert not (tmp_path / "a.safetensors").exists()


def test_resume_with_other_settings_is_refused(tmp_path, samples, monkeypatch):
    run(tmp_path, samples, cfg(max_steps=2))

    def no_encoding(*args, **kwargs):
        raise AssertionError("a refused resume must not encode the images first")

    monkeypatch.setattr(DiffusersBackend, "encode_latents", no_encoding)
    with pytest.raises(IPAdapterError, match="other settings"):
        run(tmp_path, samples, cfg(max_steps=4, learning_rate=5e-4), resume=tmp_path / "a-run")


def test_conditioning_gain_is_reported(tmp_path, samples):
    result = run(tmp_path, samples, cfg(max_steps=2, validation=True, validation_timesteps=(300, 700)))
    gain = result.report["conditioning_gain"]
    assert gain["own_loss"] > 0 and gain["shuffled_loss"] > 0
    assert gain["gain"] == pytest.approx(gain["shuffled_loss"] - gain["own_loss"])


def test_frozen_encoders_run_once_per_image_never_in_the_step(tmp_path, samples, monkeypatch):
    calls = {"vae": 0, "text": 0, "clip": 0}
    vae, text, clip = DiffusersBackend.encode_latents, DiffusersBackend.encode_text, CLIPFeatureEncoder.encode

    def count(name, fn):
        def wrapper(self, x, *a, **kw):
            calls[name] += len(x)
            return fn(self, x, *a, **kw)
        return wrapper

    monkeypatch.setattr(DiffusersBackend, "encode_latents", count("vae", vae))
    monkeypatch.setattr(DiffusersBackend, "encode_text", count("text", text))
    monkeypatch.setattr(CLIPFeatureEncoder, "encode", count("clip", clip))
    run(tmp_path, samples, cfg(max_steps=12, flip=True))
    # 5 images (and their flips), 5 distinct captions plus the empty one: independent of the 12 steps
    assert calls == {"vae": 10, "text": 6, "clip": 10}


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, samples):
    plain = run(tmp_path, samples, cfg(max_steps=3), name="plain")
    ckpt = run(tmp_path, samples, cfg(max_steps=3, gradient_checkpointing=True), name="ckpt")
    assert plain.losses == pytest.approx(ckpt.losses, rel=1e-5)
    for key, value in plain.adapter.state_dict().items():
        torch.testing.assert_close(ckpt.adapter.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    # every layer trained, checkpointed blocks included: each to_k_ip moved off its start (the UNet's to_k)
    start = DiffusersBackend(micro_sd15()).base_kv()
    still = [n for n, (k, _) in start.items() if torch.equal(ckpt.adapter.layer(n).to_k_ip.weight, k)]
    assert len(start) == len(ckpt.adapter.ip_adapter) and still == []


def test_precision_choices_are_checked():
    from ipadapter_train.precision import inference_dtype, resolve_precision

    # auto on the CPU: bf16 where the CPU has native bf16 arithmetic, fp32 where it would be slower
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if cpu_has_bf16() else "no")
    assert resolve_precision("no", torch.device("cpu")) == "no"
    # weights the caller cannot recast (ComfyUI's fp32 MODEL on the CPU): autocast over them would not pay
    assert resolve_precision("auto", torch.device("cpu"), torch.float32) == "no"
    # generation keeps fp32 on the CPU unless asked
    assert inference_dtype("auto", "cpu") == torch.float32 and inference_dtype("no", "cpu") == torch.float32
    with pytest.raises(IPAdapterError, match="needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_train_adapter_frees_the_vae_and_encoders_before_the_steps(tmp_path, models, monkeypatch):
    """From files, the run owns its models: the steps need only the UNet, so the rest is freed first."""
    import gc
    import weakref

    from conftest import SAMPLES
    from ipadapter_train import api, clip_vision, sd15

    loaded = {}
    load_sd, load_clip = sd15.load_sd15, clip_vision.load_clip_vision

    def keep_sd(*args, **kw):
        loaded["sd"] = load_sd(*args, **kw)
        return loaded["sd"]

    def watch_clip(*args, **kw):
        model = load_clip(*args, **kw)
        loaded["clip"] = weakref.ref(model)  # a weak reference: the test must not keep it alive
        return model

    monkeypatch.setattr(sd15, "load_sd15", keep_sd)
    monkeypatch.setattr(clip_vision, "load_clip_vision", watch_clip)
    seen = []

    def during_steps(step, total, loss):
        gc.collect()
        seen.append((loaded["sd"].vae, loaded["sd"].text_encoder, loaded["clip"]()))

    result = api.train_adapter(SAMPLES, models["sd"], models["clip"], tmp_path / "a.safetensors",
                               TrainConfig(resolution=64, max_steps=2, checkpoint_every=0, mixed_precision="no",
                                           validation=True, validation_timesteps=(500,)),
                               callbacks=[during_steps], device="cpu")
    assert seen == [(None, None, None), (None, None, None)]
    assert result.out_path.is_file() and result.report["conditioning_gain"] is not None
    assert loaded["sd"].unet is not None  # the UNet stays: validation ran on it after the steps


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_holds_the_frozen_unet_in_bf16_and_trains_fp32_adapter_weights(tmp_path, models, monkeypatch):
    """The bf16 lever: no fp32 copy of the frozen UNet, fp32 master weights for what trains."""
    from conftest import SAMPLES
    from ipadapter_train import api, sd15

    loaded = {}
    load_sd = sd15.load_sd15

    def keep_sd(*args, **kw):
        loaded["sd"] = load_sd(*args, **kw)
        return loaded["sd"]

    monkeypatch.setattr(sd15, "load_sd15", keep_sd)
    dtypes = []

    def during_steps(step, total, loss):
        dtypes.append({p.dtype for p in loaded["sd"].unet.parameters()})

    result = api.train_adapter(SAMPLES, models["sd"], models["clip"], tmp_path / "a.safetensors",
                               TrainConfig(resolution=64, max_steps=3, checkpoint_every=0, validation=False),
                               callbacks=[during_steps], device="cpu")  # precision auto
    assert result.report["precision"] == "bf16" and result.report["frozen_dtype"] == "bfloat16"
    assert dtypes == [{torch.bfloat16}] * 3
    assert {p.dtype for p in result.adapter.parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_backward_stops_at_the_first_adapter_layer(tmp_path, samples):
    """Nothing before the first adapter layer is differentiated: its outputs need no gradient."""
    sd = micro_sd15()
    needs_grad = {}

    def watch(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            needs_grad.setdefault(name, set()).add(bool(out.requires_grad))
        return hook

    first_block = sd.unet.down_blocks[0]
    watched = {"conv_in": sd.unet.conv_in, "first resnet": first_block.resnets[0],
               "first attn1": first_block.attentions[0].transformer_blocks[0].attn1,
               "first adapter layer": first_block.attentions[0].transformer_blocks[0].attn2,
               "conv_out": sd.unet.conv_out}
    handles = [m.register_forward_hook(watch(n)) for n, m in watched.items()]
    try:
        train_in_memory(samples, sd, micro_clip(), cfg(max_steps=2, checkpoint_every=0), tmp_path / "run", None)
    finally:
        for h in handles:
            h.remove()
    assert needs_grad == {"conv_in": {False}, "first resnet": {False}, "first attn1": {False},
                          "first adapter layer": {True}, "conv_out": {True}}
