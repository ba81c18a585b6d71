"""Learned-world figures: the demo, and the shuffled-embedding control over several seeds.

    python bench/bench_world.py                      # the demo + 4 seeds x (normal, control): about 12 minutes
    python bench/bench_world.py --seeds 0 --steps 100 --samples 16     # a smoke check
    python bench/bench_world.py --build              # only: time `make-learned-world` from nothing (about an hour)
    python bench/bench_world.py --broken-scaling --seeds 0 --steps 100 --samples 16    # the other broken step

`--broken-scaling` runs only the contrast, trained on latents left unscaled (the VAE's scaling factor not applied:
5.5 times too large), the other deliberately broken step of issue 19, shown once to fail the learning test.

The demo is `ipadapter-train demo`'s run (api/world.py `run_world_demo`): five red pictures captioned by shape
alone, the colour read back at weights 0, 0.5 and 1 and with the untrained adapter the run started from. The
contrast (`run_world_contrast`) trains on five red and five blue pictures, normally and with the shuffled-embedding
control (world/control.py), per seed: the untrained adapter's following differs from seed to seed (its image
projection is random), so the figure that says whether training teaches following is the effect learned, trained
minus untrained. Appends to bench/world_results.json and rows to BENCHMARKS.md. Learned-world figures: they show
that the machinery learns, nothing about quality on real SD models.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from record import append_history, append_row, machine  # noqa: E402

RESULTS = ROOT / "bench" / "world_results.json"


def pct(value: float) -> str:
    return f"{value:.0%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 42])
    p.add_argument("--steps", type=int, default=300, help="training steps of each contrast run (the demo's: 300)")
    p.add_argument("--samples", type=int, default=24, help="pictures per weight in each contrast measure")
    p.add_argument("--build", action="store_true",
                   help="only time make-learned-world from nothing, and compare its files with the shipped ones")
    p.add_argument("--broken-scaling", action="store_true",
                   help="only the contrast, trained on unscaled latents (a deliberately broken step)")
    p.add_argument("--no-record", action="store_true", help="print only; write no history or table row")
    args = p.parse_args()
    if args.broken_scaling:
        return broken_scaling(args)
    if args.build:
        return build(args)
    logging.basicConfig(level=logging.WARNING)

    from ipadapter_train.api.world import (MatchSettings, contrast_config, following_summary, run_world_contrast,
                                           run_world_demo, summary)
    from ipadapter_train.world.control import SHUFFLED_EMBEDDINGS

    entry = {"date": datetime.date.today().isoformat(), "machine": machine("cpu"), "contrast": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        result, demo = run_world_demo(tmp / "demo")
        entry["demo"] = {**demo, "seconds": time.perf_counter() - start, "kept": result.report.get("kept"),
                         "conditioning_gain": (result.report.get("conditioning_gain") or {}).get("gain")}
        print(summary(demo), f"({entry['demo']['seconds']:.0f} s)", flush=True)
        settings = MatchSettings(samples=args.samples)
        for seed in args.seeds:
            config = contrast_config(max_steps=args.steps, seed=seed)
            row = {"seed": seed}
            for name, control in (("normal", None), ("control", SHUFFLED_EMBEDDINGS)):
                t0 = time.perf_counter()
                result, figures = run_world_contrast(tmp / f"{name}-{seed}", config=config,
                                                     control=control, settings=settings)
                row[name] = {**figures, "seconds": time.perf_counter() - t0,
                             "conditioning_gain": (result.report.get("conditioning_gain") or {}).get("gain")}
                print(f"seed {seed}:", following_summary(figures), flush=True)
            entry["contrast"].append(row)
    if args.no_record:
        return
    append_history(RESULTS, entry)
    d = entry["demo"]
    m = d["attribute_match"]
    append_row("world-demo", "The learned-world demo (bench/bench_world.py)",
               ["date", "machine", "red at weight 0 / 0.5 / 1", "untrained adapter at 1", "chance", "kept step",
                "conditioning gain", "seconds"],
               [entry["date"], entry["machine"], f"{pct(m['0'])} / {pct(m['0.5'])} / {pct(m['1'])}",
                pct(d["untrained"]["1"]), pct(d["chance"]), (d["kept"] or {}).get("step"),
                f"{d['conditioning_gain']:+.4f}", f"{d['seconds']:.0f}"])
    for row in entry["contrast"]:
        cells = []
        for name in ("normal", "control"):
            at1 = row[name]["by_weight"]["1"]
            cells += [f"{pct(at1['follows'])} / {pct(at1['crossed'])}", f"{row[name]['learned']:+.2f}",
                      f"{row[name]['conditioning_gain']:+.4f}"]
        start = row["normal"]["untrained"]["1"]
        append_row("world-contrast", "The shuffled-embedding control (bench/bench_world.py)",
                   ["date", "machine", "seed", "steps", "samples", "untrained: follow / cross",
                    "trained: follow / cross", "trained: effect learned", "trained: gain",
                    "control: follow / cross", "control: effect learned", "control: gain"],
                   [entry["date"], entry["machine"], row["seed"], args.steps, args.samples,
                    f"{pct(start['follows'])} / {pct(start['crossed'])}", *cells])


def build(args: argparse.Namespace) -> None:
    """Time `make-learned-world` (seed 0, the shipped recipe) and say whether its files equal the shipped ones,
    tensor by tensor."""
    from safetensors.torch import load_file

    from ipadapter_train.world.build import make_learned_world
    from ipadapter_train.world.shipped import shipped_world

    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_learned_world(Path(tmp) / "world")
        seconds = time.perf_counter() - t0
        stages = json.loads((Path(tmp) / "world" / "world.json").read_text())["seconds"]
        same = []
        for name in sorted(p.name for p in shipped_world().glob("*.safetensors")):
            built, shipped = load_file(Path(tmp) / "world" / name), load_file(shipped_world() / name)
            same.append(built.keys() == shipped.keys() and all(torch_equal(built[k], shipped[k]) for k in built))
    print(f"make-learned-world: {seconds:.0f} s; files equal to the shipped ones: {all(same)}", flush=True)
    if not args.no_record:
        append_row("world-build", "Building the learned world (bench/bench_world.py --build)",
                   ["date", "machine", "seconds", "stages", "files equal to the shipped ones"],
                   [datetime.date.today().isoformat(), machine("cpu"), f"{seconds:.0f}",
                    ", ".join(f"{k} {v:.0f} s" for k, v in stages.items() if k != "total"), all(same)])


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


def broken_scaling(args: argparse.Namespace) -> None:
    """The contrast trained on unscaled latents: encode_latents patched here, in this process only."""
    from ipadapter_train.api.world import MatchSettings, contrast_config, following_summary, run_world_contrast
    from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend

    scaled = DiffusersBackend.encode_latents

    def unscaled(self, pixels):
        mean, std = scaled(self, pixels)
        factor = self.sd.vae.config.scaling_factor
        return mean / factor, std / factor

    DiffusersBackend.encode_latents = unscaled
    logging.basicConfig(level=logging.WARNING)
    date, where = datetime.date.today().isoformat(), machine("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            config = contrast_config(max_steps=args.steps, seed=seed)
            result, figures = run_world_contrast(Path(tmp) / f"broken-{seed}", config=config,
                                                 settings=MatchSettings(samples=args.samples), weights=(1.0,))
            print(f"seed {seed}, latents unscaled:", following_summary(figures), flush=True)
            if not args.no_record:
                at1, start = figures["by_weight"]["1"], figures["untrained"]["1"]
                gain = (result.report.get("conditioning_gain") or {}).get("gain")
                append_row("world-broken", "A broken step: latents unscaled (bench/bench_world.py --broken-scaling)",
                           ["date", "machine", "seed", "steps", "samples", "untrained: follow / cross",
                            "trained: follow / cross", "effect learned", "gain (in the broken latent space)"],
                           [date, where, seed, args.steps, args.samples,
                            f"{pct(start['follows'])} / {pct(start['crossed'])}",
                            f"{pct(at1['follows'])} / {pct(at1['crossed'])}", f"{figures['learned']:+.2f}",
                            f"{gain:+.4f}"])


if __name__ == "__main__":
    main()
