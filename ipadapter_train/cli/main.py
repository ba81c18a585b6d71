"""The `ipadapter-train` command (also `python -m ipadapter_train`).

    ipadapter-train demo
    ipadapter-train train --images my_photos/ --base-model sd15.safetensors \\
        --image-encoder clip_vision/ --out my_adapter.safetensors
    ipadapter-train search --images my_photos/ --base-model sd15.safetensors --image-encoder clip_vision/ \\
        --clip clip-vit-large-patch14/ --out my_adapter.safetensors --trials 12
    ipadapter-train inspect my_adapter.safetensors
    ipadapter-train convert tencent_checkpoint/ my_adapter.safetensors
    ipadapter-train make-test-models test_models/ --size tiny
    ipadapter-train make-learned-world learned_world/
    ipadapter-train generate --base-model sd15.safetensors --image-encoder clip_vision/ \\
        --adapter my_adapter.safetensors --image ref.jpg --prompt "a cat in a palace" --output result.png
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import IPAdapterError

log = logging.getLogger("ipadapter_train")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    from . import generation as cli_generation
    from . import search as cli_search
    from . import training as cli_training
    from . import world as cli_world

    parser = argparse.ArgumentParser(prog="ipadapter-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_training.register(sub)
    cli_search.register(sub)
    cli_generation.register(sub)
    cli_world.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    for noisy in ("accelerate", "diffusers", "transformers", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except IPAdapterError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
