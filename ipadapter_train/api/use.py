"""Using adapters through the front door: load, inspect and convert adapter files, generate with one, score images.

    info = inspect_adapter("my_adapter.safetensors")                  # family, layout, metadata
    generator = load_generator("sd15.safetensors", "clip_vision/", "my_adapter.safetensors")
    images = generator.generate([load_image("ref.jpg")], GenerationSettings(prompt="a cat"))
    report = Scorer.load("clip-vit-large-patch14/").score(images, [load_image("ref.jpg")], "a cat")
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..adapter.convert import convert_checkpoint
from ..adapter.fileformat import inspect_adapter, save_adapter
from ..scoring.evaluate import evaluate, load_cases
from ..scoring.generate import GenerationSettings, Generator
from ..scoring.report import write_eval_files
from ..scoring.scorer import Scorer, ScoreReport, format_report
from ..training.adapter_init import load_adapter_module

log = logging.getLogger(__name__)

__all__ = ["GenerationSettings", "Generator", "ScoreReport", "Scorer", "convert_checkpoint", "evaluate",
           "format_report", "inspect_adapter", "load_adapter_module", "load_cases", "load_generator",
           "make_test_models", "save_adapter", "write_eval_files"]


def load_generator(base_model: str | Path, image_encoder: str | Path, adapter: str | Path, device: str | None = None,
                   precision: str = "auto") -> Generator:
    """The models named by these paths, loaded once, as a ready `Generator`. A damaged adapter file, or one of
    another model family or for another image encoder, is refused from the headers before the big models load."""
    from ..models.clip_vision import load_clip_vision
    from ..models.image_encoders import ENCODER_FIX, check_encoder, encoder_widths_of_file
    from ..models.loading import load_model, peek_family
    from ..training.precision import default_device, inference_dtype

    device = default_device() if device is None else device
    dtype = inference_dtype(precision, device)
    module = load_adapter_module(Path(adapter))
    module.spec.check_family(peek_family(Path(base_model)), f"the model {base_model}", str(adapter))
    encoder = Path(image_encoder)
    check_encoder(module.spec.variant, module.spec.clip_dim, module.metadata, encoder_widths_of_file(encoder),
                  encoder.name, str(adapter), fix=ENCODER_FIX)
    return Generator(load_model(Path(base_model), dtype=dtype), load_clip_vision(encoder), module, device, dtype,
                     adapter_name=str(adapter), encoder_name=encoder.name)


def make_learned_world(*args, **kwargs):
    """Train the learned world's models and write their files (`world.build.make_learned_world`)."""
    from ..world.build import make_learned_world as make

    return make(*args, **kwargs)


def make_test_models(*args, **kwargs):
    """Random-weight model files for tests and benchmarks (`models.testmodels.make_test_models`)."""
    from ..models.testmodels import make_test_models as make

    return make(*args, **kwargs)
