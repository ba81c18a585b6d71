"""The `ipadapter-train` command end to end on real files written to disk.

The commands run in-process (`run_cli`: `cli.main.main` with its output captured); a subprocess (`cli`)
only where the process is what is tested: the real entry point's exit status and accelerate's launcher."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import SAMPLES, cli, micro_sd15, random_model_files, run_cli, train_args

pytestmark = pytest.mark.unit


def test_train_then_inspect(trained_adapter_file):
    out = trained_adapter_file  # `train --max-steps 2` at 64 px, once per session (conftest)
    assert out.is_file() and (out.parent / "adapter-run" / "report.json").is_file()
    report = json.loads((out.parent / "adapter-run" / "report.json").read_text())
    assert report["model_load_seconds"] > 0 and len(report["dataset"]["used"]) == 5  # the API's figures too
    assert report["steps"] == 2
    r = run_cli("inspect", str(out))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["variant"] == "base" and info["metadata"]["steps"] == "2"
    assert info["metadata"]["base_model"] == "sd15"


@pytest.mark.cli
def test_the_real_entry_point_exits_with_the_commands_status(tmp_path):
    """`python -m ipadapter_train`: 0 on success, 2 and one sentence (no traceback) on bad input."""
    r = cli("inspect", "--help")
    assert r.returncode == 0 and "example" in r.stdout, r.stderr
    r = cli("inspect", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "nope.safetensors" in errors[0] and "Traceback" not in r.stderr, r.stderr


@pytest.mark.cli
def test_two_process_accelerate_run_trains_and_saves_one_file(models, tmp_path):
    out = tmp_path / "ddp.safetensors"
    # accelerate's own `--cpu` launcher starts a single process unless MPI is set up; its torchrun-based
    # launcher (`--multi_gpu`) starts real CPU processes with the gloo backend when there is no GPU.
    r = cli("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "ipadapter_train", *train_args(models, out, "--max-steps", "4", "--device", "cpu"),
            module=("-m", "accelerate.commands.launch"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp-run", "ddp.safetensors"]
    report = json.loads((tmp_path / "ddp-run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 4
    # 5 images, batch 1 per process, 2 processes: 3 steps per epoch
    assert report["images_per_second"] > 0


def test_bad_inputs_get_one_clear_sentence(models, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "no images": (["train", "--images", str(empty), "--base-model", str(models["sd"]), "--image-encoder",
                       str(models["clip"]), "--out", str(tmp_path / "x.safetensors")], "contains no images"),
        "missing model": (train_args(models, tmp_path / "x.safetensors")[:3] + [
            "--base-model", str(tmp_path / "nope.safetensors"), "--image-encoder", str(models["clip"]),
            "--out", str(tmp_path / "x.safetensors")], "nope.safetensors"),
        "bad out": (train_args(models, tmp_path / "x.txt"), "must end in .safetensors"),
    }
    for name, (args, needle) in cases.items():
        r = run_cli(*args)
        assert r.returncode == 2, (name, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and needle in errors[0], (name, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_init_adapter_for_another_encoder_is_refused_before_training(models, tmp_path):
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.adapter.fileformat import save_adapter
    from ipadapter_train.layout import adapter_layers

    sd = micro_sd15()
    other = IPAdapter.new("base", 1024, 768, adapter_layers(sd.unet.config))  # a ViT-H-width adapter
    save_adapter(other.state_dict(), tmp_path / "vith.safetensors")
    out = tmp_path / "ft.safetensors"
    r = run_cli(*train_args(models, out, "--init-adapter", str(tmp_path / "vith.safetensors")))
    assert r.returncode == 2
    assert "1024-d" in r.stderr and "32-d" in r.stderr
    assert not out.exists() and not (tmp_path / "ft-run").exists()


def test_fine_tune_from_init_adapter(models, trained_adapter_file, tmp_path):
    first = trained_adapter_file
    second = tmp_path / "second.safetensors"
    r = run_cli(*train_args(models, second, "--max-steps", "2", "--init-adapter", str(first)))
    assert r.returncode == 0, r.stderr
    from ipadapter_train.adapter.fileformat import load_adapter

    a, b = load_adapter(first)[0], load_adapter(second)[0]
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_every_command_has_help_with_examples():
    for command in ("train", "demo", "inspect", "convert", "make-test-models"):
        r = run_cli(command, "--help")
        assert r.returncode == 0 and "example" in r.stdout, command


def test_demo_runs_on_random_weights_and_says_so(tmp_path):
    r = run_cli("demo", "--random-weights", "--out-dir", str(tmp_path / "demo"), "--steps", "2", "--resolution", "64")
    assert r.returncode == 0, r.stderr
    assert "RANDOM" in r.stderr and "random-weight" in r.stdout
    assert (tmp_path / "demo" / "demo_adapter.safetensors").is_file()
    assert (tmp_path / "demo" / "run" / "loss.png").is_file()


def test_make_test_models_then_train_from_the_single_file_labels_random_weights(tmp_path):
    from ipadapter_train.models.clip_vision import load_clip_vision
    from ipadapter_train.adapter.fileformat import inspect_adapter
    paths = random_model_files("sd15", "tiny", vision="tiny")  # make_test_models' files, shared with the session
    assert load_clip_vision(paths["clip_vision"]).config.ipadapter_train_random_weights is True
    out = tmp_path / "a.safetensors"
    r = run_cli("train", "--images", str(SAMPLES), "--base-model", str(paths["sd15"]), "--image-encoder",
            str(paths["clip_vision"]), "--out", str(out), "--resolution", "64", "--max-steps", "1", "--no-validation")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a-run" / "report.json").read_text())["random_weights"] is True
    assert inspect_adapter(out)["metadata"]["random_weights"] == "true"
    assert "random-weight" in r.stdout
    assert inspect_adapter(out)["layer_indices"] == list(range(1, 32, 2))  # the narrow SD1.5 keeps all 16 layers


def test_bf16_is_accepted_on_a_cpu_without_native_bf16_with_a_note_on_speed_and_memory(models, tmp_path, monkeypatch):
    """Full-size SDXL in fp32 does not fit 24 GB, so bf16 must be allowed on any CPU; `auto` still picks fp32 there.
    The CPU feature cannot be changed here: the detector's two reads are what is mocked."""
    from ipadapter_train.training.precision import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "no"
    out = tmp_path / "a.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "1", "--precision", "bf16"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no native bf16 arithmetic" in r.stderr and "bf16 runs slower than fp32 here" in r.stderr, r.stderr
    assert "half the memory" in r.stderr and "SDXL (3.47 G) about 6.9 GB in bf16, 13.9 GB in fp32" in r.stderr
    # and the figure for the model at hand, from its parameter count
    assert "The frozen models hold" in r.stderr and "GB in bf16" in r.stderr, r.stderr
    assert json.loads((tmp_path / "a-run" / "report.json").read_text())["precision"] == "bf16"


def test_base_model_help_names_both_families():
    for command in ("train", "generate"):
        r = run_cli(command, "--help")
        assert r.returncode == 0
        text = " ".join(r.stdout.split())  # argparse wraps the help text
        assert "SD1.5 or SDXL checkpoint: a single file (.safetensors/.ckpt) or a diffusers folder" in text, command
