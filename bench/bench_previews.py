"""Preview benchmark: what previews cost in the kit's default run, on full-size random-weight models.

    python bench/bench_previews.py                       # SD1.5, the CLI's defaults (previews "auto")
    python bench/bench_previews.py --family sdxl --resolution 512
    python bench/bench_previews.py --size tiny            # seconds: a smoke check of the script

Runs `ipadapter-train train` twice on the 5 sample photos with the CLI's defaults (10 epochs, the family's
resolution, validation on): once with its default previews (`--preview-every auto`: one image held out, a round
after each third of the run, 5 DPM-Solver++ steps at half the training size) and once with `--preview-every 0`. From the
first run's report.json: one preview round (seconds, median of the rounds), the previews' set-up (encoding the
reference and prompt, the weight-0 images), and the previews' share of the run's wall time; from both, the whole
command's time with and without previews. Random weights cost the same per step as real ones; no image or score
of these runs says anything about quality.

The two runs do not train the same number of steps: with previews one image is held out, so 10 epochs are 40
steps instead of 50. The row gives both step counts. Appends to bench/previews_results.json and a row to
BENCHMARKS.md.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_train import ensure_models  # noqa: E402
from record import append_history, append_row, machine, peak_cell, secs  # noqa: E402


def run(models: dict, out: Path, args: argparse.Namespace, *extra: str) -> dict:
    """One `ipadapter-train train` command; its report.json plus the command's own wall time."""
    from ipadapter_train.cli.demo import samples_dir

    cmd = [sys.executable, "-m", "ipadapter_train", "train", "--images", str(samples_dir()), "--base-model",
           str(models["model"]), "--image-encoder", str(models["clip_vision"]), "--out", str(out), "--overwrite",
           "--device", args.device, *extra]
    if args.resolution:
        cmd += ["--resolution", str(args.resolution)]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    report = json.loads((out.parent / f"{out.stem}-run" / "report.json").read_text())
    return {"command_seconds": wall, **{k: report.get(k) for k in (
        "steps", "wall_seconds", "training_seconds", "seconds_per_step", "encode_seconds", "validation_seconds",
        "preview_seconds", "model_load_seconds", "peak_memory", "precision")}, "previews": report.get("previews")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="sd15", choices=["sd15", "sdxl"])
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--vision", help="CLIP vision preset (default: the family's)")
    p.add_argument("--resolution", type=int, help="default: the family's (the CLI's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only-with-previews", action="store_true",
                   help="skip the run without previews (it does not depend on the preview settings)")
    p.add_argument("--preview-steps", type=int, help="sampling steps of a preview (default: the CLI's)")
    p.add_argument("--tmp", default=str(ROOT / "bench" / ".tmp"))
    args = p.parse_args()
    from ipadapter_train.models.testmodels import DEFAULT_VISION

    args.vision = args.vision or DEFAULT_VISION[args.family]
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    models = ensure_models(args.size, args.vision, args.family)
    extra = ["--preview-steps", str(args.preview_steps)] if args.preview_steps else []
    with_previews = run(models, tmp / "previews_on.safetensors", args, *extra)
    without = (None if args.only_with_previews else
               run(models, tmp / "previews_off.safetensors", args, "--preview-every", "0"))
    previews = with_previews["previews"]
    rounds = previews["round_seconds"]
    entry = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
             "command": "python bench/bench_previews.py " + " ".join(sys.argv[1:]), "args": vars(args),
             "with_previews": with_previews, "without_previews": without,
             "round_seconds_median": statistics.median(rounds) if rounds else None,
             "share_of_run": with_previews["preview_seconds"] / with_previews["wall_seconds"]}
    append_history(ROOT / "bench" / "previews_results.json", entry)
    append_row("previews", "Preview runs (written by bench/bench_previews.py)",
               ["date", "machine", "command", "preview size, sampling steps, cells", "one round s", "set-up s",
                "rounds", "previews s (share of the run)", "run with previews s (steps)",
                "run without previews s (steps)", "peak with previews"],
               [entry["date"], entry["machine"], f"`{entry['command']}`",
                f"{previews['size'] or 'default'} px, {previews['sampling_steps']}, "
                f"{len(previews['references']) * len(previews['prompts'])} x {len(previews['weights'])} weights",
                secs(entry["round_seconds_median"], 1), secs(previews["set_up_seconds"], 1), len(rounds),
                f"{with_previews['preview_seconds']:.1f} ({100 * entry['share_of_run']:.1f}%)",
                f"{with_previews['command_seconds']:.0f} ({with_previews['steps']})",
                f"{without['command_seconds']:.0f} ({without['steps']})" if without else "not run",
                peak_cell(with_previews["peak_memory"])])
    print(json.dumps({k: entry[k] for k in ("round_seconds_median", "share_of_run")} |
                     {"with": with_previews["command_seconds"],
                      "without": without["command_seconds"] if without else None}, indent=2))


if __name__ == "__main__":
    main()
