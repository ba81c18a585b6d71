"""The README's SDXL commands end to end on files on disk: make-test-models --family sdxl (its files, shared with
the session: tests/test_scoring.py runs the command itself), train, inspect, generate; the family comes from the
checkpoint, and adapters of the other family are refused in one sentence."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, random_model_files, run_cli

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def sdxl_files() -> dict:
    """`make-test-models DIR --family sdxl --size tiny --vision tiny`'s files."""
    files = random_model_files("sdxl", "tiny", vision="tiny")
    return {"sdxl": files["sdxl"], "clip": files["clip_vision"]}


@pytest.fixture(scope="module")
def sdxl_adapter(sdxl_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl-run") / "my_sdxl_adapter.safetensors"
    r = run_cli("train", "--images", str(SAMPLES), "--base-model", str(sdxl_files["sdxl"]), "--image-encoder",
                str(sdxl_files["clip"]), "--out", str(out), "--resolution", "64", "--max-steps", "2",
                "--precision", "no", "--no-validation", "--buckets")
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_an_sdxl_adapter_that_inspect_describes(sdxl_adapter):
    r = run_cli("inspect", str(sdxl_adapter))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["family"] == "sdxl" and info["num_layers"] == 70 and info["cross_dim"] == 2048
    assert info["tokens"] == 4 and info["clip_dim"] == 32  # the tiny encoder's 32-d embedding
    assert info["layer_indices"] == list(range(1, 140, 2))
    report = json.loads((sdxl_adapter.with_name(sdxl_adapter.stem + "-run") / "report.json").read_text())
    assert report["random_weights"] and report["buckets"]


def test_generate_runs_the_sdxl_pipeline_reproducibly(sdxl_files, sdxl_adapter, tmp_path):
    args = ["generate", "--base-model", str(sdxl_files["sdxl"]), "--image-encoder", str(sdxl_files["clip"]),
            "--adapter", str(sdxl_adapter), "--image", str(SAMPLES / "chelsea.jpg"), "--prompt", "a cat",
            "--width", "64", "--height", "64", "--steps", "2", "--seed", "3"]
    assert run_cli(*args, "--output", str(tmp_path / "a.png")).returncode == 0
    r = run_cli(*args, "--output", str(tmp_path / "b.png"))
    assert r.returncode == 0, r.stderr
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)


def test_an_sd15_adapter_on_an_sdxl_model_is_refused_before_loading(sdxl_files, trained_adapter_file, tmp_path):
    r = run_cli("generate", "--base-model", str(sdxl_files["sdxl"]), "--image-encoder", str(sdxl_files["clip"]),
                "--adapter", str(trained_adapter_file), "--image", str(SAMPLES / "chelsea.jpg"),
                "--output", str(tmp_path / "x.png"), "--steps", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "SD1.5 base adapter" in r.stderr and "is SDXL (70 cross-attention layers, 2048-d)" in r.stderr
    assert not (tmp_path / "x.png").exists()
