"""CLI subcommands that use an adapter or score images: generate, score, evaluate."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .progress import progress_bar

log = logging.getLogger("ipadapter_train")

GENERATE_EXAMPLES = """examples:
  ipadapter-train generate --base-model sd15.safetensors --image-encoder clip_vision.safetensors \\
      --adapter my_adapter.safetensors --image ref.jpg --prompt "a cat in a palace, oil painting" \\
      --output result.png --scale 1.0 --steps 30 --guidance 7.5 --seed 42
  # two references (their CLIP embeddings averaged), four images: result-1.png ... result-4.png
  ipadapter-train generate ... --image a.jpg --image b.jpg --num-images 4 --output result.png
"""

SCORE_EXAMPLES = """examples:
  ipadapter-train score --images result.png --reference ref.jpg --prompt "a cat in a palace" \\
      --clip clip-vit-large-patch14/
  ipadapter-train score --images r-1.png r-2.png --reference ref.jpg --clip clip.safetensors --json
"""

EVALUATE_EXAMPLES = """examples:
  ipadapter-train evaluate --base-model sd15.safetensors --image-encoder clip_vision.safetensors \\
      --adapter my_adapter.safetensors --cases cases.json --clip clip-vit-large-patch14/ --out eval/
  # cases.json: [{"reference": "ref.jpg", "prompt": "a cat in a palace, oil painting"}]
"""


def output_paths(output: Path, count: int) -> list[Path]:
    """`result.png` for one image; `result-1.png` ... `result-N.png` for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(1, count + 1)]


def _generator(args: argparse.Namespace):
    """The models named by the shared model arguments, loaded once, as a ready `Generator`."""
    from ..api import load_generator

    return load_generator(args.base_model, args.image_encoder, args.adapter, args.device, args.precision)


def _settings(args: argparse.Namespace, **extra):
    """GenerationSettings from the shared sampling arguments (plus command-specific fields)."""
    from ..api import GenerationSettings

    settings = GenerationSettings(steps=args.steps, guidance=args.guidance, seed=args.seed, width=args.width,
                                  height=args.height, scheduler=args.scheduler,
                                  negative_prompt=args.negative_prompt, **extra)
    settings.validate()
    return settings


def cmd_generate(args: argparse.Namespace) -> int:
    from ..api import IPAdapterError, load_image
    from ..storage.weights_io import atomic_write

    output = Path(args.output)
    if output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise IPAdapterError(f"The output {output} must end in .png, .jpg or .webp.")
    settings = _settings(args, prompt=args.prompt, scale=args.scale, num_images=args.num_images)
    references = [load_image(Path(p)) for p in args.image]
    negative = [load_image(Path(p)) for p in args.negative_image] if args.negative_image else None
    generator = _generator(args)
    with progress_bar("sampling") as update:
        images = generator.generate(references, settings, negative, progress=update)
    for image, path in zip(images, output_paths(output, len(images))):
        atomic_write(path, lambda p, im=image, fmt=path.suffix: im.save(p, format=_pil_format(fmt)))
        print(path)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..api import IPAdapterError, Scorer, format_report, load_image

    if not args.reference and args.prompt is None:
        raise IPAdapterError("Give --reference image(s) for CLIP-I, a --prompt for CLIP-T, or both.")
    scorer = Scorer.load(Path(args.clip))
    images = [load_image(Path(p)) for p in args.images]
    refs = [load_image(Path(p)) for p in args.reference] if args.reference else None
    report = scorer.score(images, refs, args.prompt)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..api import Scorer, evaluate, load_cases, write_eval_files

    cases = load_cases(Path(args.cases))
    settings = _settings(args)
    scorer = Scorer.load(Path(args.clip))
    generator = _generator(args)
    with progress_bar("evaluating", unit="run") as update:
        report = evaluate(generator, scorer, cases, Path(args.out), settings, args.num_images, args.scales,
                          progress=lambda done, total: update(done, total))
    files = write_eval_files(report, Path(args.out))
    for row in report["summary"]:
        label = "baseline" if row["baseline"] else f"scale {row['scale']:g}"
        gain = row.get("gain_over_baseline", {}).get("percent")
        extra = f", gain over baseline {gain:+.2f} points" if gain is not None else ""
        print(f"{label}: {row['percent']:.2f}%{extra}")
    if report["note"]:
        print(f"NOTE: {report['note']}")
    print(f"report: {files['html']}")
    return 0


def _pil_format(suffix: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[suffix.lower()]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", required=True,
                   help="SD1.5 or SDXL checkpoint: a single file (.safetensors/.ckpt) or a diffusers folder; "
                        "the family is read from the weights")
    p.add_argument("--image-encoder", required=True, help="the CLIP vision model the adapter was trained with")
    p.add_argument("--adapter", required=True, help="adapter .safetensors (or .bin)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative-prompt", default="", help="negative text prompt")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--width", type=int, help="image width (default: the model's, 512 SD1.5, 1024 SDXL)")
    p.add_argument("--height", type=int, help="image height (default: the model's)")
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "euler", "euler_a", "dpm++", "pndm"])
    p.add_argument("--precision", default="auto", choices=["auto", "no", "fp16", "bf16"],
                   help="weights precision; auto = fp16/bf16 on CUDA, fp32 elsewhere; bf16 halves the weights' memory "
                        "(slower on a CPU without native bf16)")
    p.add_argument("--device", help="cpu, cuda or mps (default: the best available)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the parser."""
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("generate", help="generate images with an adapter and reference image(s)",
                       epilog=GENERATE_EXAMPLES, formatter_class=raw)
    _add_model_args(p)
    p.add_argument("--image", action="append", required=True, help="reference image; repeat to average several")
    p.add_argument("--prompt", default="", help="text prompt (may be empty for image-only prompting)")
    p.add_argument("--negative-image", action="append", help="negative reference image (optional)")
    p.add_argument("--output", required=True, help="output image; several images get -1, -2, ... suffixes")
    p.add_argument("--scale", type=float, default=1.0, help="adapter scale, 0 = no adapter (default 1.0)")
    p.add_argument("--num-images", type=int, default=1, help="images to generate (default 1)")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("score", help="CLIP-I / CLIP-T / CLIPScore and a grade for generated images",
                       epilog=SCORE_EXAMPLES, formatter_class=raw)
    p.add_argument("--images", nargs="+", required=True, help="generated image(s)")
    p.add_argument("--reference", nargs="+", help="reference image(s) for CLIP-I")
    p.add_argument("--prompt", help="prompt for CLIP-T")
    p.add_argument("--clip", required=True, help="a full CLIP model (both towers): folder or .safetensors")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="adapter vs baseline at the same seeds, scale sweep, HTML report",
                       epilog=EVALUATE_EXAMPLES, formatter_class=raw)
    _add_model_args(p)
    p.add_argument("--cases", required=True, help='JSON list of {"reference", "prompt", "caption"?, "name"?}')
    p.add_argument("--clip", required=True, help="full CLIP model used for scoring")
    p.add_argument("--out", required=True, help="output folder (report.html, report.json, contact_sheet.png)")
    p.add_argument("--num-images", type=int, default=2, help="images per case and scale (default 2)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0], help="adapter scales")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_evaluate)
