"""Registry packaging: `comfy node validate` accepts pyproject.toml, and ComfyUI-Manager's
requirements.txt never asks for torch (ComfyUI brings its own)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cli
def test_comfy_node_validate_passes(tmp_path):
    comfy = shutil.which("comfy") or str(Path(sys.executable).with_name("comfy"))
    assert Path(comfy).exists(), "comfy-cli is part of the test extra: pip install -e '.[test]'"
    # comfy-cli writes its config under $HOME; give it its own
    r = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0 and "passed" in r.stdout + r.stderr, r.stdout + r.stderr


def test_requirements_leave_torch_to_comfyui():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {line.split(">")[0].split("=")[0].split("<")[0].strip().lower() for line in lines if line}
    assert names and not names & {"torch", "torchvision", "torchaudio"}
