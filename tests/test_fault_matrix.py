"""The fault matrix at the CLI tier: one row per case, (input files, command, exit status, sentence fragment,
files the run must leave). A new case is one line of CASES; the files given as input must come out
byte for byte as they went in, and nothing but the listed files may appear.

The rows run in-process through `run_cli` (the command's result is what is tested, not the process).
Placeholders in a row's arguments: {tmp} (the case's folder, holding its input files), {sd} and {clip}
(the micro models of conftest's `models` fixture), {ref} (a sample photo) and {samples} (their folder).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import SAMPLES, run_cli
from test_fileformat import DAMAGES, damaged_adapter

pytestmark = pytest.mark.unit

Maker = Callable[[Path, dict], None]  # writes one input file at the path, given the models fixture


# ---------------------------------------------------------------- input makers

def _sd15_layers():
    from ipadapter_train.adapter.convert import default_unet_config
    from ipadapter_train.layout import adapter_layers

    return adapter_layers(default_unet_config())


def sd15_damaged(name: str) -> Maker:
    """An SD1.5 adapter file written by this package, then damaged as test_fileformat.DAMAGES[name] says."""
    variant, damage = next((d[1], d[2]) for d in DAMAGES if d[0] == name)

    def make(path: Path, models: dict) -> None:
        scratch = path.parent / ".scratch"
        scratch.mkdir()
        damaged_adapter(scratch, _sd15_layers(), variant, damage).replace(path)
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return make


def micro_adapter(poison: float | None = None, clip_dim: int = 32) -> Maker:
    """A base adapter that fits the micro models (so only `poison`, put into one weight, can be wrong); with
    `clip_dim` 1024 it reads an OpenCLIP ViT-H/14 embedding instead of the tiny CLIP's 32-d one."""
    def make(path: Path, models: dict) -> None:
        import json

        from ipadapter_train.adapter.module import IPAdapter
        from ipadapter_train.adapter.fileformat import save_adapter
        from ipadapter_train.layout import adapter_layers

        config = json.loads((models["sd"] / "unet" / "config.json").read_text())
        torch.manual_seed(3)
        adapter = IPAdapter.new("base", clip_dim, 768, adapter_layers(config))  # the tiny CLIP's: 32-d
        state = adapter.state_dict()
        if poison is not None:
            state["ip_adapter.3.to_v_ip.weight"][1, 1] = poison
        save_adapter(state, path, dtype=torch.float32)
    return make


def copy_of(key: str) -> Maker:
    """A byte copy of one of the `models` fixture's files (e.g. the tiny CLIP vision file)."""
    return lambda path, models: path.write_bytes(Path(models[key]).read_bytes())


def base_model_that_cannot_load() -> Maker:
    """A copy of the micro SD1.5 folder whose UNet weights are garbage: its family is read from the configs, but
    loading it fails, so a row refused for another reason proves the refusal came before the base model loaded."""
    def make(path: Path, models: dict) -> None:
        import shutil

        shutil.copytree(models["sd"], path)
        for weights in (path / "unet").glob("*.safetensors"):
            weights.write_bytes(GARBAGE)
    return make


def raw_bytes(data: bytes) -> Maker:
    """A file holding exactly `data`."""
    return lambda path, models: path.write_bytes(data)


def _trained_checkpoint(models: dict) -> dict[str, bytes]:
    """The checkpoint files (state.json, adapter, optimizer) of a 2-step TRAIN run on the micro models, made once."""
    key = str(models["sd"])
    if key not in _CHECKPOINTS:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "c.safetensors"
            r = run_cli("train", "--images", str(SAMPLES), "--base-model", str(models["sd"]), "--image-encoder",
                        str(models["clip"]), "--out", str(out), "--resolution", "64", "--precision", "no",
                        "--no-validation", "--max-steps", "2", "--checkpoint-every", "1")
            assert r.returncode == 0, r.stderr[-3000:]
            folder = Path(scratch) / "c-run" / "checkpoint"
            _CHECKPOINTS[key] = {p.name: p.read_bytes() for p in folder.iterdir()}
    return _CHECKPOINTS[key]


_CHECKPOINTS: dict[str, dict[str, bytes]] = {}


def checkpoint_file(name: str) -> Maker:
    """One file of `_trained_checkpoint`: with all three in a case's folder, `--resume {tmp}` resumes that run."""
    return lambda path, models: path.write_bytes(_trained_checkpoint(models)[name])


def resumable() -> dict[str, Maker]:
    return {name: checkpoint_file(name) for name in ("state.json", "adapter.safetensors", "optimizer.safetensors")}


def tiny_sdxl(path: Path, models: dict) -> None:
    """A tiny random-weight SDXL single file (make-test-models --family sdxl), a copy of the session's."""
    import shutil

    from conftest import random_model_files

    shutil.copyfile(random_model_files("sdxl", "tiny", vision="tiny")["sdxl"], path)


def other_clip(path: Path, models: dict) -> None:
    """A tiny CLIP vision file of the same shape as the fixture's, other weights."""
    from ipadapter_train.models.clip_vision import build_clip_vision, save_clip_vision

    save_clip_vision(build_clip_vision("tiny", seed=5), path)


def sample_copy(name: str, instead: str | None = None) -> Maker:
    """A copy of a sample file (or, named `name`, of the sample `instead`)."""
    return lambda path, models: path.write_bytes((SAMPLES / (instead or name)).read_bytes())


def samples_with_one_changed() -> dict[str, Maker]:
    """The sample images and captions under their own names, chelsea.jpg holding coffee.jpg's picture."""
    files = {p.name: sample_copy(p.name) for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".txt")}
    files["chelsea.jpg"] = sample_copy("chelsea.jpg", "coffee.jpg")
    return files


def state_json(**changes) -> Maker:
    """A hand-written state.json of the right shape, with `changes` (JSON values) put in its config."""
    def make(path: Path, models: dict) -> None:
        import json

        from ipadapter_train.config import TrainConfig

        info = {"step": 1, "config": {**TrainConfig().to_dict(), **changes}, "dataset": [], "losses": [0.1],
                "param_groups": [], "extra_weights": []}
        path.write_text(json.dumps(info))
    return make


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    name: str
    inputs: dict[str, Maker]  # file name in the case's folder -> how to write it
    args: tuple[str, ...]
    code: int  # exit status
    fragment: str  # must appear in stdout or stderr
    left: frozenset[str] = field(default_factory=frozenset)  # files the run must add to the folder


def case(name, inputs, args, code, fragment, left=()) -> Case:
    return Case(name, inputs, tuple(args), code, fragment, frozenset(left))


INSPECT = ("inspect", "{tmp}/a.safetensors")
GENERATE = ("generate", "--base-model", "{sd}", "--image-encoder", "{clip}", "--adapter", "{tmp}/a.safetensors",
            "--image", "{ref}", "--prompt", "a cat", "--output", "{tmp}/out.png", "--width", "64", "--height", "64",
            "--steps", "2")
TRAIN_FROM = ("train", "--images", "{samples}", "--base-model", "{sd}", "--image-encoder", "{clip}", "--out",
              "{tmp}/out.safetensors", "--resolution", "64", "--precision", "no", "--no-validation", "--max-steps", "1",
              "--init-adapter", "{tmp}/a.safetensors")
TRAIN = TRAIN_FROM[:-2]


def train_with(*changes: str) -> tuple[str, ...]:
    """TRAIN with `--flag value` pairs replaced (or added), and bare flags such as --overwrite appended."""
    args, i = list(TRAIN), 0
    while i < len(changes):
        flag = changes[i]
        has_value = i + 1 < len(changes) and not changes[i + 1].startswith("--")
        if flag in args and has_value:
            args[args.index(flag) + 1] = changes[i + 1]
        else:
            args += [flag, changes[i + 1]] if has_value else [flag]
        i += 2 if has_value else 1
    return tuple(args)


GARBAGE = b"\x89PNG not weights at all" * 40
CUT_HEADER = (10**6).to_bytes(8, "little") + b'{"image_proj.proj.weight":'

CASES = [
    case("inspect: sound adapter", {"a.safetensors": micro_adapter()}, INSPECT, 0, '"variant": "base"'),
    *[case(f"inspect: {d[0]}", {"a.safetensors": sd15_damaged(d[0])}, INSPECT, 2, d[3]) for d in DAMAGES],
    case("inspect: garbage bytes", {"a.safetensors": raw_bytes(GARBAGE)}, INSPECT, 2,
         "is not a readable .safetensors file"),
    case("inspect: cut header", {"a.safetensors": raw_bytes(CUT_HEADER)}, INSPECT, 2, "truncated or damaged"),
    case("generate: sound adapter", {"a.safetensors": micro_adapter()}, GENERATE, 0, "out.png", {"out.png"}),
    case("generate: NaN weights", {"a.safetensors": micro_adapter(float("nan"))}, GENERATE, 2,
         "non-finite weights (NaN or infinity) in ip_adapter.3.to_v_ip.weight"),
    case("generate: infinite weights", {"a.safetensors": micro_adapter(float("-inf"))}, GENERATE, 2,
         "non-finite weights (NaN or infinity) in ip_adapter.3.to_v_ip.weight"),
    case("generate: to_v_ip missing", {"a.safetensors": sd15_damaged("to_v_ip missing")}, GENERATE, 2,
         "ip_adapter.3.to_v_ip.weight is missing; the file has 31 of the 32 layer weights"),
    case("generate: image_proj for another encoder", {"a.safetensors": sd15_damaged(
         "image_proj.proj for another encoder")}, GENERATE, 2, "image_proj.proj.weight is [3072, 768]"),
    case("generate: to_k_ip rows", {"a.safetensors": sd15_damaged("to_k_ip rows")}, GENERATE, 2,
         "ip_adapter.3.to_k_ip.weight is [330, 768] but ip_adapter.3.to_v_ip.weight is [320, 768]"),
    case("train --init-adapter: NaN weights", {"a.safetensors": micro_adapter(float("nan"))}, TRAIN_FROM, 2,
         "non-finite weights (NaN or infinity) in ip_adapter.3.to_v_ip.weight"),
    case("train --init-adapter: to_v_ip missing", {"a.safetensors": sd15_damaged("to_v_ip missing")}, TRAIN_FROM,
         2, "ip_adapter.3.to_v_ip.weight is missing"),
    case("train: --out exists, no --overwrite", {"out.safetensors": micro_adapter()}, TRAIN, 2,
         "already exists: pass --overwrite"),
    case("train: --out is the image encoder, even with --overwrite", {"enc.safetensors": copy_of("clip")},
         train_with("--image-encoder", "{tmp}/enc.safetensors", "--out", "{tmp}/enc.safetensors", "--overwrite"), 2,
         "which this run reads"),
    case("train: --out is the init adapter, even with --overwrite", {"a.safetensors": micro_adapter()},
         train_with("--init-adapter", "{tmp}/a.safetensors", "--out", "{tmp}/a.safetensors", "--overwrite"), 2,
         "which this run reads"),
    case("generate: garbage bytes", {"a.safetensors": raw_bytes(GARBAGE)}, GENERATE, 2,
         "is not a readable .safetensors file"),
    # an adapter for another image encoder: both encoders named and the file that fits, before the base model loads
    case("generate: adapter for another image encoder, before the base model loads",
         {"a.safetensors": micro_adapter(clip_dim=1024), "sd": base_model_that_cannot_load()},
         (*GENERATE, "--base-model", "{tmp}/sd"), 2,
         "a.safetensors was trained with OpenCLIP ViT-H/14 image features (1024-d image embedding) but "
         "clip.safetensors gives 32-d image embeddings: pass --image-encoder CLIP-ViT-H-14-laion2B-s32B-b79K"),
    case("train --init-adapter: adapter for another image encoder, before the base model loads",
         {"a.safetensors": micro_adapter(clip_dim=1024), "sd": base_model_that_cannot_load()},
         (*TRAIN_FROM, "--base-model", "{tmp}/sd"), 2,
         "a.safetensors was trained with OpenCLIP ViT-H/14 image features (1024-d image embedding) but "
         "clip.safetensors gives 32-d image embeddings: pass --image-encoder CLIP-ViT-H-14-laion2B-s32B-b79K"),
    # issue 17, item 13: a resume with other models or images is refused before any model loads
    case("train --resume: another base model family", {**resumable(), "sdxl.safetensors": tiny_sdxl},
         train_with("--base-model", "{tmp}/sdxl.safetensors", "--resume", "{tmp}"), 2,
         "was trained on an SD1.5 base model (sd15), but --base-model sdxl.safetensors is an SDXL model"),
    case("train --resume: another image encoder", {**resumable(), "enc.safetensors": other_clip},
         train_with("--image-encoder", "{tmp}/enc.safetensors", "--resume", "{tmp}"), 2,
         "another image encoder (clip.safetensors, "),
    case("train --resume: another image set", {**resumable(), **samples_with_one_changed()},
         train_with("--images", "{tmp}", "--resume", "{tmp}"), 2, "was trained on other images (changed chelsea.jpg)"),
    # issue 17, item 14: a state.json of the wrong JSON type, and sizes beyond the bounds
    *[case(f"train --resume: state.json holds {label}", {"state.json": raw_bytes(data)},
           train_with("--resume", "{tmp}"), 2, f"is damaged ({why})") for label, data, why in (
        ("a list", b"[1, 2, 3]", "state.json holds a list, not an object"),
        ("an empty object", b"{}", "state.json has no step"),
        ("null", b"null", "state.json holds null, not an object"))],
    case("train --resume: state.json with a string resolution", {"state.json": state_json(resolution="512")},
         train_with("--resume", "{tmp}"), 2, 'is damaged (its config has resolution = "512")'),
    case("train: --resolution 100000", {}, train_with("--resolution", "100000"), 2,
         "Resolution 100000 is not usable: give a multiple of 8 from 64 to 2048."),
    case("train: --batch-size 1000000", {}, train_with("--batch-size", "1000000"), 2,
         "The batch size 1000000 is not usable: give 1 to 64 images per step."),
]


# ---------------------------------------------------------------- the runner

def _digest(path: Path) -> str:
    """A file's sha256; for a folder (an input model folder), one over its files' names and bytes."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(p.relative_to(path).as_posix().encode() + p.read_bytes())
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in folder.iterdir()}


@pytest.mark.parametrize("row", CASES, ids=[c.name for c in CASES])
def test_fault_matrix_cli(row: Case, models, tmp_path):
    for name, make in row.inputs.items():
        make(tmp_path / name, models)
    before = _files(tmp_path)
    places = {"tmp": str(tmp_path), "sd": str(models["sd"]), "clip": str(models["clip"]),
              "ref": str(SAMPLES / "chelsea.jpg"), "samples": str(SAMPLES)}
    r = run_cli(*(arg.format(**places) for arg in row.args))
    said = r.stdout + r.stderr
    assert r.returncode == row.code, said
    assert row.fragment in said, said
    assert "Traceback" not in said
    if row.code:  # a refusal is one sentence on one log line
        errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and row.fragment in errors[0], r.stderr
    after = _files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # the inputs are as they were
    assert set(after) - set(before) == row.left
