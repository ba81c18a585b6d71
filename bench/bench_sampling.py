"""Sampling benchmark: the cost of an applied adapter per sampling step, on random-weight SD1.5 models.

    python bench/bench_sampling.py                                  # CPU, full-size UNet, 512 px, fp32
    python bench/bench_sampling.py --dtype bf16 --repeats 8
    python bench/bench_sampling.py --device cuda
    python bench/bench_sampling.py --size tiny --resolution 128 --repeats 2   # seconds: a smoke check
    python bench/bench_sampling.py --threads 1     # beside another busy process on a 2-core machine

(With torch's default thread count, a step can take 20x longer while another process keeps a core busy:
its threads wait on each other. --threads 1 measured 0.34 s a step where 2 threads took 8 s, tiny UNet at 128 px on 2 cores.)

One step is one UNet forward with classifier-free guidance: a batch of 2 latents (uncond, cond) and 77-token
text. It is timed WITHOUT an adapter and WITH one applied at weight 1, on two paths:

- diffusers: the UNet with its own attention processors against the same UNet after
  `DiffusersBackend.attach` with [uncond; cond] image tokens set, as `scoring/generate.py` samples;
- ComfyUI: `apply_model` of the plain MODEL against the MODEL returned by the pack's
  `nodes.attn_patch.apply_image_prompt`, with cond_or_uncond = [1, 0] (skipped, with the reason logged,
  when `.comfyui/ComfyUI` is not installed).

The adapter is a random base adapter and its image tokens are its projection of random CLIP features:
a step costs the same as with a real image, so no CLIP vision model is loaded. Random weights cost the
same per step as real ones. Each path loads once, warms each variant up, then alternates the variants
call by call (without, with, without, ...) so machine noise hits both alike, and reports medians and
the ratio with/without. Appends to bench/sampling_results.json; prints a JSON summary.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train and comfy_sampling, run from anywhere
from bench_train import ROOT, ensure_models  # bench_train also puts ROOT on sys.path
from record import append_history, append_row, machine, secs

log = logging.getLogger("bench_sampling")
RESULTS = ROOT / "bench" / "sampling_results.json"
CLIP_DIM = 768  # a ViT-L/14 image embedding; it only sizes the projection, which runs once, outside the step
TIMESTEP = 500  # mid-schedule; the UNet costs the same at any timestep
# The image encoder is never loaded; ensure_models writes one beside the checkpoint anyway. At full size
# ViT-L is the one bench_train.py already wrote; at tiny size the tiny preset keeps the write cheap.
VISION = {"full": "vit-l", "tiny": "tiny"}

Variant = tuple[Callable[[], None], Callable[[], object]]  # (prepare, untimed; run, timed)


def sync(device: str) -> None:
    """Wait for queued GPU work, so the clock reads finished work (no-op on the CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run: Callable[[], object], device: str) -> float:
    """Seconds one call takes, synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - t0


def ab_times(variants: dict[str, Variant], warmup: int, repeats: int, device: str) -> dict[str, list[float]]:
    """Warm each variant up, then alternate them call by call, `repeats` timed calls each."""
    for name, (prepare, run) in variants.items():
        prepare()
        for _ in range(warmup):
            run()
        log.info("  warmed up %s", name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(repeats):
        for name, (prepare, run) in variants.items():
            prepare()  # switching variants (processors, model load) is not part of a step
            times[name].append(timed(run, device))
        log.info("  round %d/%d: %s", i + 1, repeats, ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians per variant, their ratio, and the median of the per-round ratios (robust to slow drift)."""
    without, with_ = times["without"], times["with"]
    return {"without_s": statistics.median(without), "with_s": statistics.median(with_),
            "ratio": statistics.median(with_) / statistics.median(without),
            "paired_ratio": statistics.median(w / o for w, o in zip(with_, without)),
            "without_times": without, "with_times": with_}


def step_inputs(resolution: int, cross_dim: int, device: str, dtype):
    """A CFG batch of 2: latents [2, 4, r/8, r/8], timesteps [2] and 77-token text [2, 77, cross_dim]."""
    import torch

    gen = torch.Generator().manual_seed(0)
    side = resolution // 8
    latents = torch.randn(2, 4, side, side, generator=gen).to(device, dtype)
    text = torch.randn(2, 77, cross_dim, generator=gen).to(device, dtype)
    return latents, torch.full((2,), TIMESTEP, device=device), text


def diffusers_path(args: argparse.Namespace, checkpoint: Path) -> dict:
    """Time the diffusers UNet with its own processors against the same UNet with the adapter attached."""
    import torch

    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
    from ipadapter_train.models.sd15 import load_sd15

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    backend = DiffusersBackend(load_sd15(checkpoint, dtype=dtype), args.device, dtype)
    unet = backend.sd.unet
    load_seconds = time.perf_counter() - t0
    log.info("diffusers: loaded in %.1f s", load_seconds)
    layers = backend.adapter_layers()
    torch.manual_seed(0)
    # cross_dim from the UNet's config, not 768: a test UNet may have another cross-attention width
    adapter = IPAdapter.new("base", CLIP_DIM, backend.cross_dim, layers)
    adapter.to(backend.device, dtype).eval().requires_grad_(False)  # as generate.Generator casts it
    with torch.no_grad():
        cond, uncond = (adapter.project(torch.randn(1, CLIP_DIM).to(backend.device, dtype)) for _ in range(2))
    tokens = torch.cat([uncond, cond])  # the pipeline batches [uncond; cond] under guidance
    latents, timesteps, text = step_inputs(args.resolution, backend.cross_dim, args.device, dtype)
    attn2 = unet.attn_processors[layers[0].name + ".processor"]

    def without() -> None:
        """The UNet's own processors back (a no-op before the first attach)."""
        backend.detach()

    def with_adapter() -> None:
        """The adapter's processors on every attn2, with [uncond; cond] tokens at scale 1."""
        backend.attach(adapter)
        backend.state.tokens, backend.state.scale = tokens, 1.0

    def run():
        """One CFG step: the UNet on the batch of 2."""
        with torch.no_grad():
            return unet(latents, timesteps, encoder_hidden_states=text).sample

    try:
        times = ab_times({"without": (without, run), "with": (with_adapter, run)}, args.warmup, args.repeats,
                         args.device)
    finally:
        backend.detach()
    return summarise(times) | {"load_seconds": load_seconds, "unet_dtype": str(unet.dtype),
                               "attn2_processor_without": type(attn2).__name__, "adapter_layers": len(layers)}


def comfy_path(args: argparse.Namespace, checkpoint: Path) -> dict:
    """Time ComfyUI's apply_model on the plain MODEL against the MODEL the pack's Apply patch returns."""
    import comfy_sampling

    reason = comfy_sampling.comfy_missing()
    if reason:
        log.warning("ComfyUI part skipped: %s", reason)
        return {"skipped": reason}
    comfy_sampling.import_comfy(cpu=args.device == "cpu")
    t0 = time.perf_counter()
    model = comfy_sampling.load_model(checkpoint, args.dtype)
    load_seconds = time.perf_counter() - t0
    log.info("ComfyUI: loaded in %.1f s (%s)", load_seconds, comfy_sampling.describe(model))
    with_adapter = comfy_sampling.patched(model, CLIP_DIM)
    cross_dim = comfy_sampling.pack("nodes.comfy_layers").context_width(model)
    # fp32 inputs: apply_model casts them to the model's compute dtype itself
    latents, timesteps, text = step_inputs(args.resolution, cross_dim, args.device, None)
    cond_or_uncond = [1, 0]  # ComfyUI's order for a CFG batch: uncond rows, then cond rows
    variants = {"without": comfy_sampling.step(model, latents, timesteps, text, cond_or_uncond),
                "with": comfy_sampling.step(with_adapter, latents, timesteps, text, cond_or_uncond)}
    times = ab_times(variants, args.warmup, args.repeats, args.device)
    return summarise(times) | {"load_seconds": load_seconds, **comfy_sampling.describe(model)}


def record_rows(entry: dict) -> None:
    """One row per path in BENCHMARKS.md's sampling table."""
    args = entry["args"]
    for path in ("diffusers", "comfyui"):
        r = entry.get(path)
        if not r or "skipped" in r:
            continue
        append_row("sampling", "Sampling overhead runs (written by bench/bench_sampling.py)",
                   ["date", "machine", "command", "path", "step without adapter s", "step with adapter s",
                    "with / without"],
                   [entry["date"], entry["machine"], f"`{entry['command']}`",
                    f"{path}, {args['size']}, {args['resolution']} px, {args['dtype']}, CFG batch 2",
                    secs(r["without_s"], 3), secs(r["with_s"], 3), f"{r['ratio']:.3f}"])


def main() -> None:
    """Parse the options, run the paths, append the entry and print the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--resolution", type=int, default=512, help="pixels; the latents are 1/8 of it")
    p.add_argument("--repeats", type=int, default=6, help="timed calls per variant, alternated")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="UNet weights (bf16 weights on the CPU too)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default); 1 avoids thrashing beside another busy process")
    p.add_argument("--paths", nargs="+", default=["diffusers", "comfyui"], choices=["diffusers", "comfyui"])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    checkpoint = ensure_models(args.size, VISION[args.size])["sd15"]
    entry = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
             "command": "python bench/bench_sampling.py " + " ".join(sys.argv[1:]), "args": vars(args)}
    if "diffusers" in args.paths:
        log.info("diffusers path: %s, %d px, %s, %s", args.size, args.resolution, args.dtype, args.device)
        entry["diffusers"] = diffusers_path(args, checkpoint)
        gc.collect()  # the diffusers UNet goes before ComfyUI loads its own copy
    if "comfyui" in args.paths:
        log.info("ComfyUI path: %s, %d px, %s, %s", args.size, args.resolution, args.dtype, args.device)
        entry["comfyui"] = comfy_path(args, checkpoint)
    append_history(RESULTS, entry)
    record_rows(entry)
    keys = ("without_s", "with_s", "ratio", "paired_ratio", "skipped")
    print(json.dumps({path: {k: entry[path][k] for k in keys if k in entry[path]}
                      for path in ("diffusers", "comfyui") if path in entry}, indent=2))


if __name__ == "__main__":
    main()
