"""Training benchmark: our loop against a reference-recipe baseline, on full-size random SD1.5 weights.

    python bench/bench_train.py                          # CPU defaults: 512 px, a few steps each
    python bench/bench_train.py --resolution 256 --steps 6 --baseline-steps 3
    python bench/bench_train.py --device cuda --job      # also the kit's 50-step job, wall clock

Each side runs in its own process (so peak memory is its own); the ratio ours/baseline comes from one
run. Random weights cost the same per step as real ones; no quality figure comes from them.
Writes bench/results.json and the table in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
MODELS = ROOT / "bench" / ".models"


def ensure_models(size: str, vision: str) -> dict[str, Path]:
    """Write the random-weight models once; later runs reuse them."""
    from ipadapter_train.testmodels import make_test_models

    ckpt, clip = MODELS / f"sd15-{size}.safetensors", MODELS / f"clip-vision-{vision}.safetensors"
    if not (ckpt.is_file() and clip.is_file()):
        make_test_models(MODELS, size=size, vision=vision)
    return {"sd15": ckpt, "clip_vision": clip}


def peak_memory(device: str) -> dict:
    import resource

    import torch

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.startswith("cuda"):
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def worker(args: argparse.Namespace) -> dict:
    """One side of the comparison, in this process."""
    import torch

    from ipadapter_train.clip_vision import load_clip_vision
    from ipadapter_train.data import load_image_folder
    from ipadapter_train.demo import samples_dir
    from ipadapter_train.sd15 import load_sd15

    models = ensure_models(args.size, args.vision)
    samples, _ = load_image_folder(samples_dir())
    if args.worker == "baseline":
        sys.path.insert(0, str(ROOT / "bench"))
        from baseline_loop import run_baseline

        t0 = time.perf_counter()
        sd, clip = load_sd15(models["sd15"]), load_clip_vision(models["clip_vision"])
        load = time.perf_counter() - t0
        times = run_baseline(sd, clip, samples, args.baseline_steps, args.resolution, args.device)
        steady = times[1:] or times
        return {"side": "baseline", "load_seconds": load, "step_seconds": times,
                "seconds_per_step": statistics.median(steady), "images_per_second": 1 / statistics.median(steady),
                "peak_memory": peak_memory(args.device), "precision": "no"}
    from ipadapter_train.api import train_adapter
    from ipadapter_train.config import TrainConfig

    out = Path(args.tmp) / "bench_adapter.safetensors"
    config = TrainConfig(max_steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                         mixed_precision=args.precision, checkpoint_every=0, validation=False,
                         gradient_checkpointing=args.gradient_checkpointing)
    result = train_adapter(samples_dir(), models["sd15"], models["clip_vision"], out, config, device=args.device)
    r = result.report
    return {"side": "ours", "load_seconds": r["model_load_seconds"], "encode_seconds": r["encode_seconds"],
            "seconds_per_step": r["seconds_per_step"], "images_per_second": r["images_per_second"],
            "step_seconds": None, "peak_memory": peak_memory(args.device), "precision": r["precision"],
            "wall_seconds": r["wall_seconds"]}


def run_side(side: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--size", args.size, "--vision", args.vision,
           "--resolution", str(args.resolution), "--steps", str(args.steps), "--baseline-steps",
           str(args.baseline_steps), "--device", args.device, "--precision", args.precision,
           "--batch-size", str(args.batch_size), "--tmp", args.tmp]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def kit_job(args: argparse.Namespace) -> float:
    """The kit's default job (5 images, 50 steps, 512 px), timed from the command's start to the saved file."""
    models = ensure_models(args.size, args.vision)
    from ipadapter_train.demo import samples_dir

    out = Path(args.tmp) / "kit_job.safetensors"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ipadapter_train", "train", "--images", str(samples_dir()),
                    "--base-model", str(models["sd15"]), "--image-encoder", str(models["clip_vision"]),
                    "--out", str(out), "--max-steps", "50", "--resolution", "512", "--no-validation",
                    "--checkpoint-every", "0", "--device", args.device],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})
    assert out.is_file()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--vision", default="vit-l", choices=["tiny", "vit-l", "vit-h"])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=6, help="our steps (the first is warm-up, not counted)")
    p.add_argument("--baseline-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--job", action="store_true", help="also time the kit's 50-step job end to end")
    p.add_argument("--tmp", default=str(ROOT / "bench" / ".tmp"))
    args = p.parse_args()
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    ensure_models(args.size, args.vision)
    ours, baseline = run_side("ours", args), run_side("baseline", args)
    entry = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.processor()}, "
             f"{os.cpu_count()} cores", "command": " ".join(sys.argv), "args": vars(args), "ours": ours,
             "baseline": baseline, "speedup": baseline["seconds_per_step"] / ours["seconds_per_step"]}
    if args.job:
        entry["kit_job_wall_seconds"] = kit_job(args)
    results = ROOT / "bench" / "results.json"
    history = json.loads(results.read_text()) if results.is_file() else []
    history.append(entry)
    results.write_text(json.dumps(history, indent=2))
    print(json.dumps({k: entry[k] for k in ("speedup",)} | {"ours_s_per_step": ours["seconds_per_step"],
                     "baseline_s_per_step": baseline["seconds_per_step"]}, indent=2))


if __name__ == "__main__":
    main()
