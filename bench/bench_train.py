"""Training benchmark: our loop against a reference-recipe baseline, on full-size random weights of a family.

    python bench/bench_train.py                          # SD1.5, CPU defaults: 512 px, a few steps each
    python bench/bench_train.py --resolution 256 --steps 6 --baseline-steps 3
    python bench/bench_train.py --device cuda --job      # also the kit's 50-step job, wall clock
    python bench/bench_train.py --family sdxl --resolution 512 --steps 3 --baseline-steps 2

The baseline is tencent's recipe for the family (baseline_loop.py): fp32 for SD1.5 (tutorial_train.py's
default); for SDXL tutorial_train_sdxl.py with bf16 mixed precision where the device has native bf16
(fp32 VAE, bf16 encoders, fp32 UNet weights under bf16 autocast), else fp32. `--baseline-precision` overrides.

Each side runs in its own process (so peak memory is its own); the ratio ours/baseline comes from one
run. Random weights cost the same per step as real ones; no quality figure comes from them.
Writes bench/results.json and the table in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
sys.path.insert(0, str(ROOT / "bench"))  # record, baseline_loop
from record import append_history, append_row, machine, peak_cell, secs  # noqa: E402
MODELS = ROOT / "bench" / ".models"


def ensure_models(size: str, vision: str, family: str = "sd15") -> dict[str, Path]:
    """Write the random-weight models once (bench/.models, git-ignored); later runs reuse them."""
    from ipadapter_train.api import make_test_models

    ckpt, clip = MODELS / f"{family}-{size}.safetensors", MODELS / f"clip-vision-{vision}.safetensors"
    if not (ckpt.is_file() and clip.is_file()):
        make_test_models(MODELS, size=size, vision=vision, family=family)
    return {"model": ckpt, "clip_vision": clip}


def baseline_precision(args: argparse.Namespace) -> str:
    """The reference recipe's precision for this run (see the module docstring)."""
    if args.baseline_precision:
        return args.baseline_precision
    if args.family == "sd15":
        return "no"
    if args.device.startswith("cuda"):
        return "bf16"
    from ipadapter_train.training.precision import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "no"


def worker(args: argparse.Namespace) -> dict:
    """One side of the comparison, in this process."""
    import torch

    from ipadapter_train.models.clip_vision import load_clip_vision
    from ipadapter_train.api import load_image_folder
    from ipadapter_train.training.report import peak_memory
    from ipadapter_train.cli.demo import samples_dir
    from ipadapter_train.models.loading import load_model

    models = ensure_models(args.size, args.vision, args.family)
    samples, _ = load_image_folder(samples_dir())
    if args.worker == "baseline":
        from baseline_loop import run_baseline

        from baseline_loop import MIXED

        precision = baseline_precision(args)
        dtype = MIXED[precision] or torch.float32  # the encoders' dtype; the loop casts the UNet and VAE to fp32
        t0 = time.perf_counter()
        sd = load_model(models["model"], dtype=dtype)
        clip = load_clip_vision(models["clip_vision"], dtype=dtype)
        load = time.perf_counter() - t0
        steps = run_baseline(sd, clip, samples, args.baseline_steps, args.resolution, args.device,
                             batch_size=args.batch_size, precision=precision,
                             gradient_checkpointing=args.gradient_checkpointing,
                             low_precision_unet=args.baseline_low_precision_unet)
        steady = steps[1:] or steps
        sec = statistics.median(s["total"] for s in steady)
        parts = {k: statistics.median(s[k] for s in steady) for k in steady[0] if k != "total"}
        return {"side": "baseline", "load_seconds": load, "step_seconds": [s["total"] for s in steps],
                "seconds_per_step": sec, "images_per_second": args.batch_size / sec, "parts_median_seconds": parts,
                "peak_memory": peak_memory(torch.device(args.device)),
                "precision": precision + (" (UNet weights too)" if args.baseline_low_precision_unet else "")}
    from ipadapter_train.training.allocator import keep_freed_memory
    from ipadapter_train.api import TrainConfig, train_adapter

    if args.device == "cpu":
        keep_freed_memory()  # as the CLI does before it trains on the CPU

    out = Path(args.tmp) / "bench_adapter.safetensors"
    config = TrainConfig(max_steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                         mixed_precision=args.precision, checkpoint_every=0, validation=False,
                         gradient_checkpointing=args.gradient_checkpointing)
    result = train_adapter(samples_dir(), models["model"], models["clip_vision"], out, config, device=args.device)
    r = result.report
    return {"side": "ours", "load_seconds": r["model_load_seconds"], "encode_seconds": r["encode_seconds"],
            "seconds_per_step": r["seconds_per_step"], "images_per_second": r["images_per_second"],
            "step_seconds": None, "peak_memory": r["peak_memory"], "precision": r["precision"],
            "wall_seconds": r["wall_seconds"]}


def run_side(side: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--family", args.family, "--size", args.size,
           "--vision", args.vision,
           "--resolution", str(args.resolution), "--steps", str(args.steps), "--baseline-steps",
           str(args.baseline_steps), "--device", args.device, "--precision", args.precision,
           "--batch-size", str(args.batch_size), "--tmp", args.tmp]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.baseline_precision:
        cmd += ["--baseline-precision", args.baseline_precision]
    if args.baseline_low_precision_unet:
        cmd.append("--baseline-low-precision-unet")
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0 and side == "baseline":  # e.g. out of memory: our side's figures still count
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"baseline failed (exit {r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
        return {"failed": f"failed, exit {r.returncode}" + ("" if r.returncode < 0 else f": {last[:120]}")}
    if r.returncode != 0:
        raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def kit_job(args: argparse.Namespace) -> dict:
    """The kit's default job: `ipadapter-train train` with its defaults (5 images, 10 epochs = 50 steps,
    512 px, checkpoints every 5 steps, validation), timed from the command's start to the saved adapter
    file (its modification time), and to the command's end."""
    models = ensure_models(args.size, args.vision, args.family)
    from ipadapter_train.cli.demo import samples_dir

    out = Path(args.tmp) / "kit_job.safetensors"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ipadapter_train", "train", "--images", str(samples_dir()),
           "--base-model", str(models["model"]), "--image-encoder", str(models["clip_vision"]), "--out", str(out),
           "--device", args.device, "--precision", args.precision]
    start = time.time()
    subprocess.run(cmd, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})
    end = time.time()
    report = json.loads((out.parent / f"{out.stem}-run" / "report.json").read_text())
    return {"to_saved_file_seconds": out.stat().st_mtime - start, "command_seconds": end - start,
            "steps": report["steps"], "precision": report["precision"],
            "model_load_seconds": report.get("model_load_seconds"), "encode_seconds": report["encode_seconds"],
            "training_seconds": report["training_seconds"], "seconds_per_step": report["seconds_per_step"],
            "validation_seconds": report["validation_seconds"], "peak_memory": report["peak_memory"]}


def record_row(entry: dict) -> None:
    """One row per run in BENCHMARKS.md's training table of the run's family."""
    ours, base, job, args = entry["ours"], entry["baseline"], entry.get("kit_job"), entry["args"]
    peak = peak_cell(ours["peak_memory"])
    if args.get("family", "sd15") != "sd15":
        record_family_row(entry)
        return
    append_row("train", "Training runs (written by bench/bench_train.py)",
               ["date", "machine", "command", "ours s/step", "baseline s/step", "ratio", "ours images/s",
                "ours peak", "encode once s", "kit job s (to saved file)"],
               [entry["date"], entry["machine"], f"`{entry['command']}`",
                f"{secs(ours['seconds_per_step'])} ({ours['precision']}, batch {args['batch_size']})",
                secs(base["seconds_per_step"]) if base else "",
                f"{entry['speedup']:.2f}x" if entry["speedup"] else "", secs(ours["images_per_second"], 3), peak,
                secs(ours["encode_seconds"], 1),
                f"{job['to_saved_file_seconds']:.0f} ({job['precision']})" if job else ""])


def record_family_row(entry: dict) -> None:
    """A row in the family's own table (SDXL): resolution, both sides' precision and peaks, checkpointing."""
    ours, base, args = entry["ours"], entry["baseline"], entry["args"]
    peaks = peak_cell(ours["peak_memory"]) + (f" / {peak_cell(base['peak_memory'])}" if base else "")
    append_row(f"train-{args['family']}", f"{args['family'].upper()} training runs (written by bench/bench_train.py)",
               ["date", "machine", "command", "resolution", "batch", "ours s/step", "baseline s/step", "ratio",
                "precision ours / baseline", "gradient checkpointing", "peak ours / baseline", "encode once s",
                "baseline parts s"],
               [entry["date"], entry["machine"], f"`{entry['command']}`", f"{args['resolution']} px",
                args["batch_size"], secs(ours["seconds_per_step"]),
                secs(base["seconds_per_step"]) if base else entry.get("baseline_failed") or "",
                f"{entry['speedup']:.2f}x" if entry["speedup"] else "",
                f"{ours['precision']} / {base['precision']}" if base else ours["precision"],
                "yes" if args["gradient_checkpointing"] else "no", peaks, secs(ours["encode_seconds"], 1),
                ", ".join(f"{k} {v:.2f}" for k, v in base["parts_median_seconds"].items()) if base else ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--family", default="sd15", choices=["sd15", "sdxl"])
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--vision", choices=["tiny", "vit-l", "vit-h", "vit-bigg"],
                   help="CLIP vision preset (default: the family's, SD1.5 vit-l, SDXL vit-h)")
    p.add_argument("--resolution", type=int, help="default: the family's (SD1.5 512, SDXL 1024)")
    p.add_argument("--steps", type=int, default=6, help="our steps (the first is warm-up, not counted)")
    p.add_argument("--baseline-steps", type=int, default=3, help="0 skips the baseline")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--baseline-precision", choices=["no", "bf16", "fp16"],
                   help="the baseline's mixed precision (default: the family's reference recipe, see above)")
    p.add_argument("--baseline-low-precision-unet", action="store_true",
                   help="the baseline's UNet weights in its mixed-precision dtype instead of the recipe's fp32 (not "
                        "the recipe: for machines where the recipe's fp32 SDXL UNet does not fit; encoders still "
                        "run every step)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--job", action="store_true", help="also time the kit's 50-step job end to end")
    p.add_argument("--min-speedup", type=float, default=0.0,
                   help="exit non-zero if ours/baseline in this run falls below this (a guard against slowing down)")
    p.add_argument("--tmp", default=str(ROOT / "bench" / ".tmp"))
    args = p.parse_args()
    from ipadapter_train.families import get_family
    from ipadapter_train.models.testmodels import DEFAULT_VISION

    args.vision = args.vision or DEFAULT_VISION[args.family]
    args.resolution = args.resolution or get_family(args.family).default_resolution
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    ensure_models(args.size, args.vision, args.family)
    ours = run_side("ours", args)
    baseline = run_side("baseline", args) if args.baseline_steps > 0 else None
    failed = baseline.pop("failed", None) if baseline else None
    baseline = None if failed else baseline
    entry = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
             "command": "python bench/bench_train.py " + " ".join(sys.argv[1:]), "args": vars(args), "ours": ours,
             "baseline": baseline, "baseline_failed": failed,
             "speedup": baseline["seconds_per_step"] / ours["seconds_per_step"] if baseline else None}
    if args.job:
        entry["kit_job"] = kit_job(args)
    append_history(ROOT / "bench" / "results.json", entry)
    record_row(entry)
    if args.min_speedup and (entry["speedup"] or 0) < args.min_speedup:
        raise SystemExit(f"Ours is {entry['speedup'] or 0:.2f}x the baseline in this run, below --min-speedup "
                         f"{args.min_speedup}: a change made training slower (or the baseline did not run).")
    print(json.dumps({"speedup": entry["speedup"], "ours_s_per_step": ours["seconds_per_step"],
                      "ours_images_per_second": ours["images_per_second"],
                      "baseline_s_per_step": baseline["seconds_per_step"] if baseline else None,
                      "kit_job": entry.get("kit_job"),
                      "peak_memory": ours["peak_memory"]}, indent=2))


if __name__ == "__main__":
    main()
