"""`ipadapter-train generate` end to end on files written to disk (in-process: the command's result is
what is tested, not the process)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, run_cli

pytestmark = pytest.mark.unit


def gen_args(models, adapter, out, *extra):
    return ["generate", "--base-model", str(models["sd"]), "--image-encoder", str(models["clip"]),
            "--adapter", str(adapter), "--image", str(SAMPLES / "chelsea.jpg"), "--prompt", "a cat",
            "--output", str(out), "--width", "64", "--height", "64", "--steps", "2", *extra]


def test_generate_writes_reproducible_images(models, trained_adapter_file, tmp_path):
    adapter = trained_adapter_file
    r = run_cli(*gen_args(models, adapter, tmp_path / "r.png", "--num-images", "2", "--seed", "5"))
    assert r.returncode == 0, r.stderr
    first = [np.asarray(Image.open(tmp_path / f"r-{i}.png")) for i in (1, 2)]
    assert first[0].shape == (64, 64, 3)
    r = run_cli(*gen_args(models, adapter, tmp_path / "again.png", "--num-images", "2", "--seed", "5"))
    assert r.returncode == 0, r.stderr
    again = [np.asarray(Image.open(tmp_path / f"again-{i}.png")) for i in (1, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])


def test_generate_bad_inputs(models, trained_adapter_file, tmp_path):
    adapter = trained_adapter_file
    args = gen_args(models, adapter, tmp_path / "r.png")
    args[args.index("--image") + 1] = str(tmp_path / "missing.jpg")
    r = run_cli(*args)
    assert r.returncode == 2 and "missing.jpg" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*gen_args(models, tmp_path / "nope.safetensors", tmp_path / "r.png"))
    assert r.returncode == 2 and "nope.safetensors" in r.stderr
    assert not (tmp_path / "r.png").exists()
