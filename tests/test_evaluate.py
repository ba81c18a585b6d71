"""`evaluate`: adapter vs baseline at the same seeds, a scale sweep, and a report whose files exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import SAMPLES, micro_clip, micro_sd15, run_cli
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.scoring.report import write_eval_files
from ipadapter_train.scoring.evaluate import evaluate, load_cases
from ipadapter_train.scoring.generate import GenerationSettings, Generator
from ipadapter_train.scoring.scorer import Scorer
from test_generate import adapter_file, load

pytestmark = pytest.mark.unit


def cases_file(tmp_path: Path, entries) -> Path:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(entries))
    return path


def test_evaluate_writes_a_report_whose_html_references_existing_files(tmp_path):
    from ipadapter_train.models.clip_model import build_clip

    cases = load_cases(cases_file(tmp_path, [
        {"reference": str(SAMPLES / "chelsea.jpg"), "prompt": "a cat in a palace"},
        {"reference": [str(SAMPLES / "coffee.jpg"), str(SAMPLES / "rocket.jpg")], "prompt": "",
         "caption": "a cup of coffee", "name": "two_refs"}]))
    gen = Generator(micro_sd15(), micro_clip(), load(adapter_file(tmp_path)))
    out = tmp_path / "eval"
    report = evaluate(gen, Scorer(build_clip("tiny")), cases, out,
                      GenerationSettings(steps=2, width=64, height=64), num_images=2, scales=(0.5, 1.0))
    files = write_eval_files(report, out)

    page = files["html"].read_text()
    linked = set(re.findall(r"(?:src|href)='([^']+)'", page))
    assert "contact_sheet.png" in linked and len(linked) >= 1 + 2 * 3 * 2
    assert all((out / name).is_file() for name in linked)
    assert "random-weight" in page.lower() or "random weights" in page.lower()

    saved = json.loads(files["json"].read_text())
    assert saved["random_weights"] is True and saved["note"]
    assert [row["scale"] for row in saved["summary"]] == [0.0, 0.5, 1.0]
    for case in saved["cases"]:
        seeds = {run["seed"] for run in case["runs"]}
        assert len(seeds) == 1  # baseline and every scale share the seeds
        for run in case["runs"][1:]:
            assert run["gain_over_baseline"]["percent"] == pytest.approx(run["percent"] - case["runs"][0]["percent"])
    assert saved["cases"][1]["runs"][0]["prompt"] == "a cup of coffee"  # CLIP-T falls back to the caption
    sheet = Image.open(files["contact_sheet"])
    assert sheet.size[0] == 192 * 4  # reference, baseline, two scales


def test_cases_file_errors(tmp_path):
    with pytest.raises(IPAdapterError, match="do not exist"):
        load_cases(cases_file(tmp_path, [{"reference": "nope.jpg", "prompt": "x"}]))
    with pytest.raises(IPAdapterError, match="non-empty JSON list"):
        load_cases(cases_file(tmp_path, {}))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(IPAdapterError, match="not valid JSON"):
        load_cases(tmp_path / "bad.json")


def test_score_and_evaluate_commands(models, trained_adapter_file, tmp_path):
    from ipadapter_train.models.clip_model import build_clip, save_clip

    clip = tmp_path / "clip-full.safetensors"
    save_clip(build_clip("tiny"), clip)
    adapter = trained_adapter_file
    ref = SAMPLES / "chelsea.jpg"
    r = run_cli("score", "--images", str(ref), "--reference", str(ref), "--prompt", "a cat", "--clip", str(clip), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["clip_i_mean"] == pytest.approx(1.0, abs=1e-4) and report["random_weights"] is True
    r = run_cli("score", "--images", str(ref), "--prompt", " ", "--clip", str(clip))
    assert r.returncode == 2 and "non-empty prompt" in r.stderr
    r = run_cli("score", "--images", str(ref), "--reference", str(ref), "--clip", str(models["clip"]))
    assert r.returncode == 2 and "only a vision tower" in r.stderr

    cases = cases_file(tmp_path, [{"reference": str(ref), "prompt": "a cat"}])
    r = run_cli("evaluate", "--base-model", str(models["sd"]), "--image-encoder", str(models["clip"]), "--adapter",
            str(adapter), "--cases", str(cases), "--clip", str(clip), "--out", str(tmp_path / "eval"),
            "--num-images", "1", "--scales", "1.0", "--steps", "2", "--width", "64", "--height", "64")
    assert r.returncode == 0, r.stderr
    assert "gain over baseline" in r.stdout and "NOTE" in r.stdout
    assert (tmp_path / "eval" / "report.html").is_file()

