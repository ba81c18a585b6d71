"""Lever benchmark: what each speed lever does to one training step on the full-size SD1.5 UNet.

    python bench/bench_levers.py                                   # CPU, 512 px, the default levers
    python bench/bench_levers.py --levers bf16,malloc --steps 6
    python bench/bench_levers.py --levers compile --steps 4         # slow: pays the compile first
    python bench/bench_levers.py --device cuda --levers bf16,fused_adamw,grad_ckpt --batch-size 8

A step is what the training loop does per step once the frozen encoders' outputs are cached: the
adapter's projection, a UNet forward with the image tokens routed through every cross-attention layer,
the loss, backward into the adapter and an AdamW step. The inputs are random tensors of the real shapes
(a step costs the same with real latents), the UNet has random full-size weights, and the adapter is a
fresh base adapter. Each lever runs in its own process, so allocator settings, compile caches and peak
memory are its own. The first step of each lever is reported apart (warm-up, compile) and left out of
the median. Appends to bench/levers_results.json and prints a JSON summary.

Levers (each is "bf16", our CPU training set-up, plus one change, unless said otherwise):
  fp32            fp32 frozen weights, no autocast (what --precision no runs)
  bf16            bf16 frozen weights + bf16 autocast, SDPA, eager (the reference point)
  no_autocast     bf16 weights and inputs without autocast (the adapter's own small projections run
                  in fp32 and are cast; every UNet op is bf16 by its inputs)
  channels_last   bf16 + the UNet and its input in channels_last memory format
  fused_adamw     bf16 + AdamW(fused=True) instead of the default foreach AdamW
  malloc          bf16 + glibc malloc told to keep freed activation memory (ipadapter_train.training.allocator,
                  what the CLI does when it trains on the CPU)
  compile         bf16 + torch.compile(unet) (inductor, default mode)
  grad_ckpt       bf16 + gradient checkpointing (a memory lever: it re-runs the forward)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, ensure_models  # bench_train also puts ROOT on sys.path
from record import append_history, append_row, machine, peak_cell, secs

RESULTS = ROOT / "bench" / "levers_results.json"
LEVERS = ("fp32", "bf16", "no_autocast", "channels_last", "fused_adamw", "malloc", "compile", "grad_ckpt")
DEFAULT_LEVERS = "fp32,bf16,channels_last,fused_adamw,malloc"


def run_lever(lever: str, args: argparse.Namespace) -> dict:
    """Time `args.steps` training steps with one lever, in this process."""
    import torch
    import torch.nn.functional as F

    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.diffusion.diffusers_backend import DiffusersBackend
    from ipadapter_train.layout import adapter_layers
    from ipadapter_train.training.report import peak_memory
    from ipadapter_train.models.sd15 import load_sd15

    device = args.device
    if lever == "malloc":
        from ipadapter_train.training.allocator import keep_freed_memory

        keep_freed_memory()
    bf16 = lever != "fp32"
    dtype = torch.bfloat16 if bf16 else torch.float32
    t0 = time.perf_counter()
    # loaded straight into the frozen dtype, as the trainer does, so peak memory is the step's, not the load's
    sd = load_sd15(ensure_models(args.size, "vit-l")["sd15"], dtype=dtype)
    backend = DiffusersBackend(sd, device, dtype)
    load_seconds = time.perf_counter() - t0
    torch.manual_seed(0)
    adapter = IPAdapter.new("base", 768, backend.cross_dim, adapter_layers(sd.unet.config)).to(device)
    backend.attach(adapter)
    unet = sd.unet
    memory_format = torch.channels_last if lever == "channels_last" else torch.contiguous_format
    if lever == "channels_last":
        unet.to(memory_format=torch.channels_last)
    if lever == "grad_ckpt":
        backend.enable_gradient_checkpointing()
    forward = torch.compile(unet) if lever == "compile" else unet
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4, weight_decay=0.01,
                                  **({"fused": True} if lever == "fused_adamw" else {}))
    b, size = args.batch_size, args.resolution // 8
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(b, 4, size, size, generator=gen).to(device, dtype).contiguous(memory_format=memory_format)
    noise = torch.randn(b, 4, size, size, generator=gen).to(device)
    text = torch.randn(b, 77, backend.cross_dim, generator=gen).to(device, dtype)
    feats = torch.randn(b, 768, generator=gen).to(device)
    t = torch.randint(0, 1000, (b,), generator=gen).to(device)
    kind = torch.device(device).type

    def sync() -> None:
        if kind == "cuda":
            torch.cuda.synchronize()

    steps = []
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.steps):
        sync()
        tick = time.perf_counter()
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16 and lever != "no_autocast"):
            backend.state.tokens, backend.state.scale = adapter.project(feats), 1.0
            pred = forward(noisy, t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred.float(), noise)
        sync()
        fwd = time.perf_counter()
        loss.backward()
        sync()
        bwd = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        end = time.perf_counter()
        steps.append({"forward": fwd - tick, "backward": bwd - fwd, "optimizer": end - bwd, "total": end - tick})
    steady = steps[1:] or steps
    med = statistics.median(s["total"] for s in steady)
    return {"lever": lever, "load_seconds": load_seconds, "first_step_seconds": steps[0]["total"],
            "seconds_per_step": med, "images_per_second": b / med,
            "forward": statistics.median(s["forward"] for s in steady),
            "backward": statistics.median(s["backward"] for s in steady),
            "optimizer": statistics.median(s["optimizer"] for s in steady),
            "steps": steps, "peak_memory": peak_memory(torch.device(device))}


def spawn(lever: str, args: argparse.Namespace) -> dict:
    """Run one lever in a fresh process (its own allocator, caches and peak memory)."""
    cmd = [sys.executable, __file__, "--worker", lever, "--size", args.size, "--resolution", str(args.resolution),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"lever": lever, "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def record_rows(entry: dict) -> None:
    """One row per lever in BENCHMARKS.md's lever table."""
    args = entry["args"]
    for r in entry["levers"]:
        if "error" in r:
            continue
        peak = peak_cell(r["peak_memory"])
        append_row("levers", "Lever runs (written by bench/bench_levers.py)",
                   ["date", "machine", "setting", "lever", "s/step", "forward", "backward", "optimizer",
                    "first step", "vs bf16", "peak"],
                   [entry["date"], entry["machine"], f"{args['resolution']} px, batch {args['batch_size']}",
                    r["lever"], secs(r["seconds_per_step"]), secs(r["forward"]), secs(r["backward"]),
                    secs(r["optimizer"], 3), secs(r["first_step_seconds"], 1),
                    f"{r['vs_bf16']:.3f}x" if r.get("vs_bf16") else "", peak])


def main() -> None:
    """Run the chosen levers one after another and record them side by side."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=LEVERS, help=argparse.SUPPRESS)
    p.add_argument("--levers", default=DEFAULT_LEVERS, help=f"comma-separated, from: {', '.join(LEVERS)}")
    p.add_argument("--size", default="full", choices=["tiny", "full"])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="steps per lever (the first is reported apart)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_lever(args.worker, args)))
        return
    levers = [x.strip() for x in args.levers.split(",") if x.strip()]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        raise SystemExit(f"Unknown lever(s) {', '.join(unknown)}: choose from {', '.join(LEVERS)}.")
    ensure_models(args.size, "vit-l")
    results = [spawn(lever, args) for lever in levers]
    ref = next((r for r in results if r["lever"] == "bf16" and "error" not in r), None)
    for r in results:
        if ref and "error" not in r:
            r["vs_bf16"] = ref["seconds_per_step"] / r["seconds_per_step"]  # > 1: the lever is faster
    entry = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
             "command": "python bench/bench_levers.py " + " ".join(sys.argv[1:]), "args": vars(args), "levers": results}
    append_history(RESULTS, entry)
    record_rows(entry)
    print(json.dumps([{k: r.get(k) for k in ("lever", "seconds_per_step", "first_step_seconds", "vs_bf16",
                                               "forward", "backward", "optimizer", "error")} for r in results], indent=2))


if __name__ == "__main__":
    main()
