"""The training loop on micro random-weight models: it learns, saves, resumes, cancels and stops on NaN,
runs in one process without accelerate's global state, and checks settings and a resume before the models load."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import SAMPLES, micro_clip, micro_sd15, run_cli, train_args
from ipadapter_train.api import train_in_memory
from ipadapter_train.models.clip_features import CLIPFeatureEncoder
from ipadapter_train.config import TrainConfig
from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
from ipadapter_train.errors import IPAdapterError, TrainingCancelled, TrainingDiverged
from ipadapter_train.adapter.fileformat import inspect_adapter, load_adapter
from ipadapter_train.training.precision import cpu_has_bf16

pytestmark = pytest.mark.unit


def each_step(callback):
    """A progress hook that calls `callback(step, total, loss)` after every step (the run's TRAINING events)."""
    def progress(event):
        if event.phase == "training":
            callback(event.done, event.total, event.loss)
    return progress


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
    from ipadapter_train.training.encoding import encode_dataset

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
    from ipadapter_train.training.adapter_init import build_adapter

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

    part = run(tmp_path, samples, cfg(flip=True, random_crop=True), name="part", progress=each_step(stop_at_3))
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

    result = run(tmp_path, samples, cfg(), progress=each_step(stop))
    assert result.cancelled and result.steps_done == 1
    state, meta = load_adapter(tmp_path / "a.safetensors")
    assert meta["cancelled_at_step"] == "1" and "image_proj.proj.weight" in state
    assert json.loads((tmp_path / "a-run" / "checkpoint" / "state.json").read_text())["step"] == 1


def test_ctrl_c_is_a_cancel(tmp_path, samples, capsys):
    """Ctrl-C keeps the partial adapter, and its metadata, report.json and the CLI's summary say "cancelled after
    N of M steps" in the words the ComfyUI node uses."""
    from ipadapter_train.cli.training import _print_summary

    def interrupt(step, total, loss):
        if step == 2:
            raise KeyboardInterrupt

    result = run(tmp_path, samples, cfg(checkpoint_every=0), progress=each_step(interrupt))
    assert result.cancelled and result.steps_done == 2 and len(result.losses) == 2
    note = f"cancelled after 2 of {result.total_steps} steps"
    meta = load_adapter(tmp_path / "a.safetensors")[1]
    assert meta["cancelled_at_step"] == "2" and meta["cancelled"] == note
    report = json.loads((tmp_path / "a-run" / "report.json").read_text())
    assert report["cancelled"] is True and report["cancelled_note"] == note
    _print_summary(result)
    assert f"({note}: a partial adapter)" in capsys.readouterr().out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, samples):
    with pytest.raises(TrainingDiverged, match="step") as raised:
        run(tmp_path, samples, cfg(max_steps=20, learning_rate=1e30, checkpoint_every=1))
    state = json.loads((tmp_path / "a-run" / "checkpoint" / "state.json").read_text())
    assert all(v == v and abs(v) != float("inf") for v in state["losses"])  # only finite losses were kept
    # the message names the checkpoint that is kept: the last step before the bad one
    bad, kept = map(int, re.search(r"at step (\d+).*\(step (\d+)\)", str(raised.value)).groups())
    assert kept == state["step"] == bad - 1 == len(state["losses"])
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "a-run" / "report.json").exists()


@pytest.mark.parametrize("every", [0, 50])
def test_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path, samples, every):
    with pytest.raises(TrainingDiverged) as raised:
        run(tmp_path, samples, cfg(max_steps=20, learning_rate=1e30, checkpoint_every=every))
    message = str(raised.value)
    assert "no checkpoint was written" in message and "step 0" not in message, message
    assert not (tmp_path / "a-run" / "checkpoint").exists()


def test_a_cancel_with_checkpoints_off_leaves_a_checkpoint_and_the_resume_equals_an_uninterrupted_run(
        tmp_path, samples):
    full = run(tmp_path, samples, cfg(checkpoint_every=0), name="full")
    assert not (tmp_path / "full-run" / "checkpoint").exists()  # checkpoints stay off for a run that ends

    def stop_at_3(step, total, loss):
        if step == 3:
            raise TrainingCancelled()

    part = run(tmp_path, samples, cfg(checkpoint_every=0), name="part", progress=each_step(stop_at_3))
    assert part.cancelled and part.steps_done == 3
    assert json.loads((tmp_path / "part-run" / "checkpoint" / "state.json").read_text())["step"] == 3
    resumed = run(tmp_path, samples, cfg(checkpoint_every=0), name="part", resume=tmp_path / "part-run")
    assert resumed.steps_done == 6 and resumed.losses == full.losses
    for key, value in full.adapter.state_dict().items():
        assert torch.equal(value, resumed.adapter.state_dict()[key]), key
    # the run folder's checkpoint followed the resumed run to its end, so a second resume has nothing left to do
    assert json.loads((tmp_path / "part-run" / "checkpoint" / "state.json").read_text())["step"] == 6


def test_resume_with_other_settings_is_refused(tmp_path, samples, monkeypatch):
    run(tmp_path, samples, cfg(max_steps=2))

    def no_encoding(*args, **kwargs):
        raise AssertionError("a refused resume must not encode the images first")

    monkeypatch.setattr(DiffusersBackend, "encode_latents", no_encoding)
    with pytest.raises(IPAdapterError, match="other settings"):
        run(tmp_path, samples, cfg(max_steps=4, learning_rate=5e-4), resume=tmp_path / "a-run")


def test_from_files_a_resume_of_other_images_is_refused_before_the_models_load(tmp_path, samples, models, monkeypatch):
    from ipadapter_train import api
    from ipadapter_train.models import loading as model_loading

    run(tmp_path, samples, cfg(max_steps=2))

    def no_loading(*args, **kwargs):
        raise AssertionError("a refused resume must not load the models first")

    monkeypatch.setattr(model_loading, "load_model", no_loading)
    with pytest.raises(IPAdapterError, match="other images or captions"):
        api.train_adapter(SAMPLES, models["sd"], models["clip"], tmp_path / "b.safetensors", cfg(max_steps=4),
                          resume=tmp_path / "a-run", prompt="another caption for every image", device="cpu")
    assert not (tmp_path / "b.safetensors").exists()


def test_a_cli_resume_reads_state_json_once_and_checks_the_settings_once(tmp_path, models, monkeypatch):
    out = tmp_path / "r.safetensors"
    assert run_cli(*train_args(models, out, "--max-steps", "2", "--checkpoint-every", "1")).returncode == 0
    reads, validations = [], []
    read_text, validate = Path.read_text, TrainConfig.validate

    def counting_read(self, *args, **kwargs):
        if self.name == "state.json":
            reads.append(self)
        return read_text(self, *args, **kwargs)

    def counting_validate(self):
        validations.append(self)
        return validate(self)

    monkeypatch.setattr(Path, "read_text", counting_read)
    monkeypatch.setattr(TrainConfig, "validate", counting_validate)
    r = run_cli(*train_args(models, out, "--max-steps", "3", "--resume", str(tmp_path / "r-run")))
    assert r.returncode == 0, r.stderr
    assert len(reads) == 1 and len(validations) == 1
    assert json.loads((tmp_path / "r-run" / "report.json").read_text())["steps"] == 3


def test_conditioning_gain_is_reported(tmp_path, samples):
    # The gain's own logic (a broken shuffle must fail) is tested in test_validation.py; here: the run
    # validates with the config's images and timesteps and puts the block in report.json.
    result = run(tmp_path, samples, cfg(max_steps=2, validation=True, validation_timesteps=(300, 700),
                                        validation_max_images=3))
    gain = result.report["conditioning_gain"]
    assert gain["images"] == 3 and gain["timesteps"] == [300, 700]
    assert gain["own_loss"] > 0 and gain["shuffled_loss"] > 0
    saved = json.loads((result.run_dir / "report.json").read_text())
    assert saved["conditioning_gain"] == gain


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
    from ipadapter_train.training.precision import inference_dtype, resolve_precision

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
    from ipadapter_train import api
    from ipadapter_train.models import clip_vision
    from ipadapter_train.models import loading as model_loading

    loaded = {}
    load_sd, load_clip = model_loading.load_model, clip_vision.load_clip_vision

    def keep_sd(*args, **kw):
        loaded["sd"] = load_sd(*args, **kw)
        return loaded["sd"]

    def watch_clip(*args, **kw):
        model = load_clip(*args, **kw)
        loaded["clip"] = weakref.ref(model)  # a weak reference: the test must not keep it alive
        return model

    monkeypatch.setattr(model_loading, "load_model", keep_sd)
    monkeypatch.setattr(clip_vision, "load_clip_vision", watch_clip)
    seen = []

    def during_steps(step, total, loss):
        gc.collect()
        seen.append((loaded["sd"].vae, loaded["sd"].text_encoder, loaded["clip"]()))

    result = api.train_adapter(SAMPLES, models["sd"], models["clip"], tmp_path / "a.safetensors",
                               TrainConfig(resolution=64, max_steps=2, checkpoint_every=0, mixed_precision="no",
                                           validation=True, validation_timesteps=(500,)),
                               progress=each_step(during_steps), device="cpu")
    assert seen == [(None, None, None), (None, None, None)]
    assert result.out_path.is_file() and result.report["conditioning_gain"] is not None
    assert loaded["sd"].unet is not None  # the UNet stays: validation ran on it after the steps


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_holds_the_frozen_unet_in_bf16_and_trains_fp32_adapter_weights(tmp_path, models, monkeypatch):
    """The bf16 lever: no fp32 copy of the frozen UNet, fp32 master weights for what trains."""
    from conftest import SAMPLES
    from ipadapter_train import api
    from ipadapter_train.models import loading as model_loading

    loaded = {}
    load_sd = model_loading.load_model

    def keep_sd(*args, **kw):
        loaded["sd"] = load_sd(*args, **kw)
        return loaded["sd"]

    monkeypatch.setattr(model_loading, "load_model", keep_sd)
    dtypes = []

    def during_steps(step, total, loss):
        dtypes.append({p.dtype for p in loaded["sd"].unet.parameters()})

    result = api.train_adapter(SAMPLES, models["sd"], models["clip"], tmp_path / "a.safetensors",
                               TrainConfig(resolution=64, max_steps=3, checkpoint_every=0, validation=False),
                               progress=each_step(during_steps), device="cpu")  # precision auto
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


def test_the_same_seed_gives_the_same_adapter_whatever_the_process_drew_before():
    from ipadapter_train.training.adapter_init import build_adapter

    backend, encoder = DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip())
    torch.manual_seed(1)
    first = build_adapter(backend, encoder, cfg(seed=7)).state_dict()
    torch.manual_seed(2)
    torch.rand(10)
    second = build_adapter(backend, encoder, cfg(seed=7)).state_dict()
    assert all(torch.equal(v, second[k]) for k, v in first.items())
    other = build_adapter(backend, encoder, cfg(seed=8)).state_dict()
    assert not torch.equal(first["image_proj.proj.weight"], other["image_proj.proj.weight"])
    # and the caller's own random stream is left as it was
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    build_adapter(backend, encoder, cfg(seed=7))
    assert torch.equal(torch.rand(4), expected)


def test_a_single_process_run_leaves_accelerates_global_state_alone(tmp_path, samples):
    """A ComfyUI server trains in its own process: a run there must not set accelerate's process-wide state."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    result = run(tmp_path, samples, cfg(max_steps=2, validation=True, validation_timesteps=(500,)))
    assert result.steps_done == 2 and result.report["conditioning_gain"] is not None
    assert AcceleratorState._shared_state == {} and PartialState._shared_state == {}


@pytest.mark.parametrize("precision", ["no", pytest.param("bf16", marks=pytest.mark.skipif(
    not cpu_has_bf16(), reason="this CPU has no native bf16"))])
def test_one_process_trains_exactly_what_accelerate_trains(tmp_path, samples, precision):
    """The one-process stand-in keeps accelerate's semantics: autocast, fp32 outputs, the same weights."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ipadapter_train.api import RunPaths, plan_run, train

    config = cfg(max_steps=3, mixed_precision=precision, flip=True, validation=True, validation_timesteps=(500,))
    ours = run(tmp_path, samples, config, name="ours")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    try:
        backend = DiffusersBackend(micro_sd15(), "cpu", dtype)
        plan = plan_run(config, samples, backend.family, paths=RunPaths(tmp_path / "theirs-run"), world=1)
        theirs = train(plan, backend, CLIPFeatureEncoder(micro_clip(), "cpu", dtype),
                       accelerator=Accelerator(mixed_precision=precision, cpu=True))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert ours.report["precision"] == theirs.report["precision"] == precision
    assert ours.losses == theirs.losses
    assert ours.report["conditioning_gain"] == theirs.report["conditioning_gain"]
    for key, value in ours.adapter.state_dict().items():
        assert torch.equal(value, theirs.adapter.state_dict()[key]), key


def test_fp16_scales_the_loss_and_skips_a_step_whose_gradients_overflow():
    """fp16 (GPUs only in training) goes through a GradScaler as with accelerate; checked here on the CPU."""
    from ipadapter_train.training.local_accelerator import LocalAccelerator

    accelerator = LocalAccelerator("fp16", "cpu")
    model, reference = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    prepared, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with accelerator.autocast():
        y = prepared(x)
    assert y.dtype == torch.float32  # outputs come back in fp32, as accelerate's prepared models give them
    accelerator.backward(y.pow(2).mean())
    optimizer.step()
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        reference(x).float().pow(2).mean().backward()
    plain.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)  # the scale is undone before the step
    before, scale = model.weight.detach().clone(), accelerator.scaler.get_scale()
    with accelerator.autocast():
        y = prepared(x * 1e30)  # inf in fp16
    accelerator.backward(y.pow(2).mean())
    optimizer.step()
    assert torch.equal(model.weight, before) and accelerator.scaler.get_scale() < scale


def test_the_hooks_follow_every_phase_and_a_validation_cancel_keeps_the_adapter(tmp_path, samples):
    from ipadapter_train.api import RunHooks, RunPaths, plan_run, train

    seen = {"encoding": [], "training": [], "after_encode": 0, "validating": []}

    def progress(event):
        seen[event.phase].append((event.done, event.total))
        if event.phase == "training":
            assert event.step == event.done and event.loss is not None and event.schedule is None  # previews off
        if event.phase == "validating" and event.done == 1:
            raise TrainingCancelled()

    def after_encode():
        assert seen["encoding"] and not seen["training"]  # between encoding and the first step
        seen["after_encode"] += 1

    hooks = RunHooks(progress=progress, after_encode=after_encode,
                     metadata={"note": "from the caller"}, report_extra={"caller_figure": 1.5})
    config = cfg(max_steps=2, validation=True, validation_timesteps=(300, 700))
    backend = DiffusersBackend(micro_sd15())
    plan = plan_run(config, samples, backend.family, paths=RunPaths(tmp_path / "h-run", tmp_path / "h.safetensors"))
    assert (plan.total, plan.validation_calls) == (2, 2 * len(samples))  # planned before any model work
    result = train(plan, backend, CLIPFeatureEncoder(micro_clip()), hooks)
    assert seen["training"] == [(1, 2), (2, 2)] and seen["after_encode"] == 1
    assert seen["encoding"][-1][0] == seen["encoding"][-1][1]
    assert seen["validating"][0] == (1, 2 * len(samples))  # stopped at the first call of 2 timesteps x 5 images
    assert len(seen["validating"]) == 1
    assert not result.cancelled and result.report["conditioning_gain"] is None
    assert result.report["caller_figure"] == 1.5
    _, meta = load_adapter(tmp_path / "h.safetensors")
    assert meta["note"] == "from the caller" and meta["steps"] == "2"


def test_one_fit_check_one_sentence_for_fine_tuning_and_generation(tmp_path):
    """--init-adapter and generate refuse an adapter for another encoder or model family with the same sentence."""
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.training.adapter_init import check_init_adapter
    from ipadapter_train.scoring.generate import Generator
    from ipadapter_train.layout import adapter_layers

    layers = adapter_layers(micro_sd15().unet.config)
    cases = {"trained with OpenCLIP ViT-H/14 image features (1024-d image embedding) but clip gives 32-d image embedding": IPAdapter.new("base", 1024, 768, layers),
             "is for a 2048-d cross-attention model, but the UNet of": IPAdapter.new("base", 32, 2048, layers)}
    for needle, adapter in cases.items():
        with pytest.raises(IPAdapterError) as fine_tuning:
            check_init_adapter(adapter, DiffusersBackend(micro_sd15()), CLIPFeatureEncoder(micro_clip(), name="clip"),
                               cfg())
        with pytest.raises(IPAdapterError) as generating:
            Generator(micro_sd15(), micro_clip(), adapter, adapter_name="The init adapter", encoder_name="clip")
        assert str(fine_tuning.value) == str(generating.value)
        assert needle in str(generating.value)
