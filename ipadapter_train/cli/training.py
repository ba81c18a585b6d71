"""CLI subcommands for training and adapter files: train, demo, inspect, convert, make-test-models."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..families import FAMILIES
from .progress import training_progress as _progress

log = logging.getLogger("ipadapter_train")
# The CLI previews by default (the API's TrainConfig does not): up to a round after each third of the run, as many as
# keep within 15% of the run (previews/rounds.py); what that costs in a default SD1.5 run on a 2-core CPU is in
# BENCHMARKS.md ("Previews").
PREVIEW_DEFAULT = "auto"

TRAIN_EXAMPLES = """examples:
  ipadapter-train train --images my_photos/ --base-model sd15.safetensors \\
      --image-encoder models/clip_vision/CLIP-ViT-H-14.safetensors --out my_adapter.safetensors
  # fine-tune the public adapter (what small data sets need):
  ipadapter-train train --images my_photos/ --base-model sd15/ --image-encoder clip_vision/ \\
      --init-adapter ip-adapter_sd15.safetensors --out my_adapter.safetensors --max-steps 200
  # continue a stopped run:
  ipadapter-train train --images my_photos/ --base-model sd15.safetensors \\
      --image-encoder clip_vision/ --out my_adapter.safetensors --resume my_adapter-run/
  # previews every 10 steps on held-out images, scored with a full CLIP; keep the best-scored step:
  ipadapter-train train --images my_photos/ --base-model sd15.safetensors --image-encoder clip_vision/ \\
      --out my_adapter.safetensors --preview-every 10 --clip clip-vit-large-patch14/ --keep best
  # two processes, data-parallel:
  accelerate launch --multi_gpu --num_processes 2 -m ipadapter_train train ...
"""


def _config_from_args(args: argparse.Namespace, saved=None):  # also the search's base (cli/search.py)
    """The run's settings: the arguments given, over the resumed checkpoint's settings (`saved`) or the defaults."""
    from ..api import TrainConfig

    base = TrainConfig.from_dict(saved.config) if saved is not None else TrainConfig(preview_every=PREVIEW_DEFAULT)
    fields = {"variant": args.variant, "epochs": args.epochs, "max_steps": args.max_steps,
              "batch_size": args.batch_size, "learning_rate": args.lr, "weight_decay": args.weight_decay,
              "resolution": args.resolution, "random_crop": args.random_crop, "flip": args.flip,
              "buckets": args.buckets,
              "seed": args.seed, "checkpoint_every": args.checkpoint_every, "mixed_precision": args.precision,
              "gradient_checkpointing": args.gradient_checkpointing,
              "validation": None if args.validation is None else args.validation,
              "preview_every": args.preview_every, "preview_size": args.preview_size,
              "preview_steps": args.preview_steps, "keep": args.keep, "early_stop": args.early_stop}
    if getattr(args, "drop", None) is not None:  # one value for the recipe's three condition dropouts
        fields.update(drop_text=args.drop, drop_image=args.drop, drop_both=args.drop)
    for name, value in fields.items():
        if value is not None:
            setattr(base, name, value)
    return base


def _preview_lines(r: dict) -> list[str]:
    previews = r.get("previews")
    if not previews:
        return []
    lines = [f"previews: {len(previews['grids'])} grid(s) in {previews['seconds']:.1f} s, held out of training: "
             f"{', '.join(Path(h).name for h in previews['held_out']) or 'none'}"]
    schedule = previews.get("schedule") or {}
    if schedule.get("why"):
        lines.append(f"preview schedule: {schedule['why']}")
    if previews.get("why"):
        lines.append(previews["why"])
    if r.get("kept"):
        lines.append(f"kept the best step ({r['kept']['step']}); the last step's adapter: {r['kept']['last_adapter']}")
    if r.get("stopped_early"):
        lines.append(f"training {r['stopped_early']}")
    return lines


def _print_summary(result) -> None:
    from ..api import RANDOM_MODELS_NOTE

    r = result.report
    gain = r.get("conditioning_gain") or {}
    lines = [f"steps: {result.steps_done}/{result.total_steps}"
             + (f" ({r.get('cancelled_note')}: a partial adapter)" if result.cancelled else ""),
             f"loss: first {result.losses[0]:.4f}, last {result.losses[-1]:.4f}" if result.losses else "loss: none",
             f"seconds per step: {r['seconds_per_step']:.3f}" if r.get("seconds_per_step") else "",
             f"conditioning gain (shuffled - own loss): {gain['gain']:+.5f}" if gain.get("gain") is not None else "",
             *_preview_lines(r),
             f"report: {result.files.get('report')}  loss plot: {result.files.get('loss_plot')}",
             f"previews page: {result.files['previews_page']}" if result.files.get("previews_page") else "",
             f"adapter: {result.files.get('adapter')}"]
    if r.get("random_weights"):
        lines.insert(0, RANDOM_MODELS_NOTE)
    elif r.get("figures_note"):
        lines.insert(0, r["figures_note"])
    print("\n".join(line for line in lines if line))


def _cpu_allocator(device: str | None) -> None:
    """A CLI run is one process: on the CPU, let glibc keep freed activation memory (see training/allocator.py)."""
    import torch

    from ..training.allocator import keep_freed_memory
    from ..training.precision import default_device

    try:
        kind = (torch.device(device) if device else default_device()).type
    except RuntimeError:  # not a device name: training reports that in one sentence
        return
    if kind == "cpu":
        keep_freed_memory()


def cmd_train(args: argparse.Namespace) -> int:
    from ..api import default_run_dir, train_adapter
    from ..training.checkpoint import open_checkpoint

    _cpu_allocator(args.device)
    saved = open_checkpoint(Path(args.resume)) if args.resume else None  # its state.json is read once, here
    config = _config_from_args(args, saved)
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(out)
    previews = _preview_source(args) if config.previews_on else None
    with _progress("training") as progress:
        result = train_adapter(args.images, args.base_model, args.image_encoder, out, config, run_dir=run_dir,
                               init_adapter=args.init_adapter, resume=saved, prompt=args.prompt, progress=progress,
                               device=args.device, overwrite=args.overwrite, previews=previews)
    _print_summary(result)
    if result.cancelled:
        log.warning("Training %s; continue with --resume %s", result.report.get("cancelled_note"), run_dir)
        return 130
    return 0


def _preview_source(args: argparse.Namespace):
    """The previews' images, prompts and scorer from --preview-images, --preview-prompts and --clip."""
    from ..api import IPAdapterError, PreviewSource, load_image_folder

    images = folder = prompts = scorer = None
    if args.preview_images:
        folder = Path(args.preview_images)
        images, report = load_image_folder(folder)
        log.info("Preview images: %s", report.summary())
    if args.preview_prompts:
        try:
            text = Path(args.preview_prompts).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise IPAdapterError(f"Cannot read the preview prompts {args.preview_prompts} ({exc}): give a UTF-8 "
                                 "text file with one prompt per line.") from exc
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise IPAdapterError(f"{args.preview_prompts} holds no prompt: write one prompt per line.")
    if args.clip:
        from ..api import Scorer

        scorer = Scorer.load(Path(args.clip))
    return PreviewSource(images, prompts, scorer, folder)


def _preview_every(value: str):
    """--preview-every: a number of steps (0 = off) or "auto"."""
    if value == "auto":
        return value
    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of steps or 'auto'") from None
    if steps < 0:
        raise argparse.ArgumentTypeError("give 0 (off), a positive number of steps or 'auto'")
    return steps


def cmd_demo(args: argparse.Namespace) -> int:
    from ..api import TrainConfig
    from .demo import RANDOM_DEMO, run_demo

    _cpu_allocator(args.device)
    real = args.base_model is not None or args.image_encoder is not None
    if not real and not args.random_weights:
        return _world_demo(args)
    config = None
    if args.steps or args.resolution:
        config = TrainConfig(**RANDOM_DEMO) if args.base_model is None else TrainConfig()
        config.max_steps = args.steps or config.max_steps
        config.resolution = args.resolution or config.resolution
    with _progress("demo training") as progress:
        result, info = run_demo(Path(args.out_dir), args.base_model, args.image_encoder, config, progress,
                                args.device)
    print(json.dumps(info, indent=2))
    _print_summary(result)
    return 130 if result.cancelled else 0


def _world_demo(args: argparse.Namespace) -> int:
    """The default demo: the learned world (api/world.py), with the attribute match it measures."""
    from ..api import TrainConfig
    from ..api.world import WORLD_DEMO, run_world_demo, summary

    config = TrainConfig(**WORLD_DEMO)
    config.max_steps = args.steps or config.max_steps
    config.resolution = args.resolution or config.resolution
    with _progress("demo training") as progress:
        result, figures = run_world_demo(Path(args.out_dir), Path(args.world) if args.world else None, config,
                                         progress, args.device)
    _print_summary(result)
    print(summary(figures))
    return 130 if result.cancelled else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    # JSON only on stdout (scripts parse it); "summary" and "family" say what the file is for.
    from ..api import inspect_adapter

    print(json.dumps(inspect_adapter(Path(args.file)), indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..api import convert_checkpoint, inspect_adapter

    out = convert_checkpoint(Path(args.src), Path(args.dst))
    print(f"wrote {out}: {inspect_adapter(out)['summary']}")  # e.g. "an SDXL base adapter (4 tokens of 2048-d, ...)"
    return 0


def cmd_make_test_models(args: argparse.Namespace) -> int:
    from ..api import make_test_models

    paths = make_test_models(Path(args.dir), size=args.size, vision=args.vision, seed=args.seed, family=args.family,
                             scorer=args.scorer)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the kit's; with --resume, the checkpoint's)")
    g.add_argument("--variant", choices=["base", "plus"], help="base: 4 tokens from the image embedding; "
                   "plus: 16 tokens from a Resampler over hidden states (default base)")
    g.add_argument("--epochs", type=int, help="passes over the images (default 10)")
    g.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, help="images per step and process, 1 to 64 (default 1)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    g.add_argument("--drop", type=float, metavar="P", help="condition dropout: the share of steps whose caption is "
                   "dropped, the same share whose image is, and the same whose both are (default 0.05 each, the "
                   "reference recipe's; classifier-free guidance needs it)")
    g.add_argument("--resolution", type=int, help="training size in pixels, a multiple of 8 from 64 to 2048 "
                   "(default: the model family's, 512 for SD1.5, 1024 for SDXL)")
    g.add_argument("--random-crop", action="store_true", default=None, help="random instead of centre crop")
    g.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    g.add_argument("--buckets", action="store_true", default=None,
                   help="aspect-ratio buckets: train each image at the size of about resolution^2 pixels nearest "
                        "its shape (sides multiples of 64, 1:2 to 2:1) instead of a square crop; a batch holds one "
                        "size (default off)")
    g.add_argument("--seed", type=int, help="random seed (default 42)")
    g.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints, 0 = off (default 5)")
    g.add_argument("--precision", choices=["auto", "no", "fp16", "bf16"],
                   help="mixed precision; auto = bf16 (or fp16) on CUDA GPUs, bf16 on CPUs with native bf16 "
                        "(AVX512-BF16, AMX), else fp32 (default auto). bf16 is allowed on any CPU: it halves the "
                        "frozen models' memory (SD1.5 about 2.1 GB in bf16, 4.3 GB in fp32; SDXL 6.9 / 13.9 GB, "
                        "weights alone), and without native bf16 it runs slower than fp32")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None, help="less memory, more compute")
    g.add_argument("--no-validation", dest="validation", action="store_false", default=None,
                   help="skip the conditioning-gain measurement after training")
    g = p.add_argument_group("previews while training (see README: a grid of generated images every N steps)")
    g.add_argument("--preview-every", type=_preview_every, metavar="N|auto",
                   help="render the preview grid every N steps and at the end; 0 = off; auto = up to a round after "
                        "each third of the run, as many as keep within about 15%% of the run, none in a run too short "
                        "for one (default auto; the report and the summary say the schedule and why; the cost in a "
                        "default run is in BENCHMARKS.md, Previews)")
    g.add_argument("--preview-images", metavar="FOLDER",
                   help="reference images for the previews (default: 1 or 2 training images are held out of "
                        "training when there are at least 5)")
    g.add_argument("--preview-prompts", metavar="FILE",
                   help="text file, one prompt per line (default: the reference images' captions)")
    g.add_argument("--clip", metavar="PATH", help="a full CLIP model (folder or .safetensors, as `score` takes) to "
                   "score every preview: CLIP-I, CLIP-T, the combined percent and grade; writes scores.json")
    g.add_argument("--keep", choices=["last", "best"],
                   help="the adapter written to --out: the last step's, or the best-scored preview's (then the last "
                        "one is <out>-last.safetensors); best needs --clip (default last)")
    g.add_argument("--early-stop", type=int, metavar="K",
                   help="stop after K scored previews without a better score (needs --clip; default 0 = never)")
    g.add_argument("--preview-size", type=int, help="preview side in pixels (default: half the training size of the "
                                                    "model family: 256 for SD1.5, 512 for SDXL; at most the "
                                                    "training size)")
    g.add_argument("--preview-steps", type=int, help="sampling steps (DPM-Solver++) per preview image (default 5)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the best available)")




def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the parser."""
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train an adapter on a folder of images", epilog=TRAIN_EXAMPLES,
                       formatter_class=raw)
    p.add_argument("--images", required=True, help="folder of images (.txt captions or data.json)")
    p.add_argument("--base-model", required=True,
                   help="SD1.5 or SDXL checkpoint: a single file (.safetensors/.ckpt) or a diffusers folder; "
                        "the family is read from the weights")
    p.add_argument("--image-encoder", required=True, help="CLIP vision .safetensors file or transformers folder")
    p.add_argument("--out", required=True, help="adapter file to write (.safetensors); an existing file is "
                   "refused unless --overwrite, and never one the run reads")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (a --resume may always "
                   "replace the adapter its own run wrote)")
    p.add_argument("--prompt", help="one caption for every image (overrides .txt and data.json)")
    p.add_argument("--init-adapter", help="adapter file to fine-tune instead of starting from scratch")
    p.add_argument("--resume", help="run folder of a stopped run to continue")
    p.add_argument("--run-dir", help="folder for report.json, loss.png and checkpoints (default <out>-run/)")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="train an adapter in the shipped learned world and show what it learned "
                       "(or on the sample photos with your models, or random-weight ones)",
                       description="Without model paths: five pictures of the learned world that share a colour their "
                       "captions never name; the adapter is trained, previewed and scored, then pictures are "
                       "generated at adapter weights 0, 0.5 and 1 and their colour read back (learned-world "
                       "figures). With --base-model and --image-encoder: the five sample photos on your models. "
                       "With --random-weights: the sample photos on small random-weight models (plumbing only).",
                       epilog="examples:\n  ipadapter-train demo\n  ipadapter-train demo --base-model sd15.safetensors"
                              " --image-encoder clip_vision.safetensors --out-dir demo/\n"
                              "  ipadapter-train demo --random-weights", formatter_class=raw)
    p.add_argument("--out-dir", default="ipadapter-demo", help="where to write the adapter and report")
    p.add_argument("--base-model", help="SD1.5 or SDXL checkpoint, file or diffusers folder (optional)")
    p.add_argument("--image-encoder", help="CLIP vision model (optional)")
    p.add_argument("--world", help="a learned world built by make-learned-world (default: the shipped one)")
    p.add_argument("--random-weights", action="store_true",
                   help="the sample photos on small random-weight models instead of the learned world")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--resolution", type=int, help="training resolution")
    p.add_argument("--device", help="cpu, cuda or mps")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("inspect", help="print an adapter's model family, layout and metadata as JSON",
                       epilog="example:\n  ipadapter-train inspect my_adapter.safetensors", formatter_class=raw)
    p.add_argument("file", help="adapter .safetensors or .bin")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="turn a reference-script checkpoint into the official file",
                       epilog="examples:\n  ipadapter-train convert output/checkpoint-1000/ my_adapter.safetensors\n"
                              "  ipadapter-train convert ip-adapter_sd15.bin ip-adapter_sd15.safetensors",
                       formatter_class=raw)
    p.add_argument("src", help="accelerate checkpoint folder, or a .bin/.safetensors file")
    p.add_argument("dst", help="output .safetensors")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("make-test-models", help="write random-weight SD1.5 or SDXL, CLIP vision and full CLIP "
                       "scorer files",
                       epilog="examples:\n  ipadapter-train make-test-models test_models/\n"
                              "  ipadapter-train make-test-models bench_models/ --size full\n"
                              "  ipadapter-train make-test-models sdxl_models/ --family sdxl --size tiny",
                       formatter_class=raw)
    p.add_argument("dir", help="output folder")
    p.add_argument("--family", choices=list(FAMILIES), default="sd15",
                   help="model family; writes <family>-<size>.safetensors (default sd15)")
    p.add_argument("--size", choices=["tiny", "narrow", "full"], default="tiny",  # models.random_models.SIZES
                   help="tiny: the family's block layout at small widths; narrow: every level 320 wide, the "
                        "smallest ComfyUI detects (SDXL: 283M UNet, full text encoders, a 2.4 GB file); full: the "
                        "real shape (SD1.5: 860M UNet; SDXL: 2.6B UNet, a 7 GB file)")
    p.add_argument("--vision", choices=["tiny", "vit-l", "vit-h", "vit-bigg"],
                   help="CLIP vision shape (default: vit-l for sd15, vit-h for sdxl)")
    p.add_argument("--scorer", choices=["tiny", "vit-l", "none"],
                   help="full CLIP scorer (both towers) for `score`, --clip and the Score node, written as "
                        "clip-scorer-<preset>.safetensors (default: vit-l for --size full, else tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_test_models)
