"""How long the shipped CPU template ("2. Train on a CPU, quick first run") takes as shipped, in a real ComfyUI
server, on full-size random-weight SD1.5 and ViT-H files (they cost what real ones cost per step).

    python bench/bench_cpu_template.py                  # 20 steps at 256 px, one 256 px image in 12 steps
    python bench/bench_cpu_template.py --steps 5        # a shorter run (the per-step figures still hold)

Only the two loaders and the training folder are set, as the template's Note asks; everything else runs as shipped.
The models are written once by `make-test-models --size full --vision vit-h` into bench/.models/full-sd15.
Prints one JSON line (wall time of the prompt, training's seconds per step, encode and load times from the run's
report.json, the server's peak memory, the machine) and adds it to bench/cpu_template_results.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_workflow_api import editor_to_api, load_workflow  # noqa: E402
from harness import ComfyServer  # noqa: E402
from record import machine  # noqa: E402

log = logging.getLogger("bench_cpu_template")
MODELS = ROOT / "bench" / ".models" / "full-sd15"
RESULTS = ROOT / "bench" / "cpu_template_results.json"
SAMPLES = ROOT / "ipadapter_train" / "assets" / "samples"


def model_files() -> dict[str, Path]:
    """Full-size random-weight SD1.5 and ViT-H CLIP vision, written once."""
    if not (MODELS / "files.json").is_file():
        MODELS.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "ipadapter_train", "make-test-models", str(MODELS), "--size", "full",
                            "--vision", "vit-h", "--scorer", "none"], capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            raise SystemExit(f"make-test-models failed:\n{r.stderr[-3000:]}")
        (MODELS / "files.json").write_text(r.stdout)
    made = json.loads((MODELS / "files.json").read_text())
    return {"checkpoint": Path(made["sd15"]), "clip_vision": Path(made["clip_vision"])}


def set_inputs(prompt: dict, class_type: str, **values) -> None:
    for node in prompt.values():
        if node["class_type"] == class_type:
            node["inputs"].update(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the template's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = model_files()
    base = Path(tempfile.mkdtemp(prefix="bench-cpu-template-"))
    server = ComfyServer(base, {"checkpoints": [files["checkpoint"]], "clip_vision": [files["clip_vision"]]})
    server.start()
    try:
        prompt = editor_to_api(load_workflow("train_ip_adapter_cpu"), server.object_info())
        folder = base / "input" / "bench_set"
        folder.mkdir(parents=True)
        for f in SAMPLES.iterdir():
            if f.suffix in (".jpg", ".txt"):
                shutil.copy(f, folder / f.name)
        set_inputs(prompt, "CheckpointLoaderSimple", ckpt_name=files["checkpoint"].name)
        set_inputs(prompt, "CLIPVisionLoader", clip_name=files["clip_vision"].name)
        set_inputs(prompt, "IPAdapterTrain_LoadTrainingImages", folder="bench_set")
        if args.steps:
            set_inputs(prompt, "IPAdapterTrain_Train", steps=args.steps)
        train = next(n["inputs"] for n in prompt.values() if n["class_type"] == "IPAdapterTrain_Train")
        sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
        t0 = time.perf_counter()
        entry = server.wait(server.queue(prompt), timeout=7200)
        wall = time.perf_counter() - t0
        if entry["status"].get("status_str") != "success":
            raise SystemExit(f"the prompt failed: {entry['status']}")
        report = json.loads(next((base / "output" / "ipadapter_train").glob("run-*/report.json")).read_text())
        row = {"what": "CPU template as shipped, full-size random SD1.5 + ViT-H, real ComfyUI server",
               "steps": train["steps"], "resolution": train["resolution"], "sampler_steps": sampler["steps"],
               "prompt_seconds": round(wall, 1),
               "training_seconds": round(report.get("training_seconds") or 0, 1),
               "mean_seconds_per_step": report.get("mean_seconds_per_step"),
               "encode_seconds": report.get("encode_seconds"),
               "peak_rss_gib": round((server.peak_rss_bytes() or 0) / 2**30, 2),
               "machine": machine("cpu"), "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d %H:%M")}
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(row))
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps(rows + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
