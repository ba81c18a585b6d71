"""Build the adapter a run trains: new (to_k_ip/to_v_ip copied from the UNet) or from a file or module to
fine-tune, checked once against the run's variant, image encoder and UNet (`check_init_adapter`)."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapter.check import check_adapter_state
from ..adapter.fileformat import load_adapter
from ..adapter.module import IPAdapter
from ..config import TrainConfig
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..errors import IPAdapterError

log = logging.getLogger(__name__)


def load_adapter_module(path: Path) -> IPAdapter:
    """An `IPAdapter` module (fp32) with the weights of an adapter file, its shape read from the file and
    the file's metadata as `.metadata`."""
    state, metadata = load_adapter(Path(path))
    adapter = IPAdapter(check_adapter_state(state, str(path), values=False))
    adapter.load_state_dict({k: v.float() for k, v in state.items()})
    adapter.metadata = dict(metadata)
    return adapter


@dataclass(frozen=True)
class FitWords:
    """How a refusal of an adapter to fine-tune names things, so each front end says it in its own words (the
    CLI's flags, the Train node's inputs). None: the file's path, the encoder's and the model's own names."""

    source: str | None = None  # the adapter
    encoder: str | None = None  # the image encoder
    model: str | None = None  # the UNet
    encoder_fix: str | None = None  # where to load `{file}`, the encoder that fits (`AdapterSpec.check_fits`)
    # the refusal of another variant: {source}, {have} (the adapter's variant), {want} (the run's)
    variant: str = "{source} is a {have} adapter but the run trains a {want} one: pass --variant {have}."


def check_init_adapter(init_adapter: Path | IPAdapter, backend: DiffusionBackend, encoder: ImageFeatureEncoder,
                       config: TrainConfig, words: FitWords = FitWords()) -> IPAdapter:
    """The adapter to fine-tune as a trainable fp32 copy (the caller's module stays as it was), refused in one
    sentence unless it is sound and fits the run's variant, image encoder and UNet."""
    if isinstance(init_adapter, IPAdapter):
        source = words.source or "The init adapter"
        adapter = copy.deepcopy(init_adapter).float().train().requires_grad_(True)
        check_adapter_state(adapter.state_dict(), source)  # a file is checked when read; a module here
    else:
        source = words.source or str(init_adapter)
        adapter = load_adapter_module(Path(init_adapter))
    spec = adapter.spec
    if spec.variant != config.variant:
        raise IPAdapterError(words.variant.format(source=source, have=spec.variant, want=config.variant))
    fix = {"fix": words.encoder_fix} if words.encoder_fix else {}
    spec.check_fits(encoder.feature_width(config.variant), words.encoder or encoder.name, backend.cross_dim,
                    backend.adapter_layers(), words.model or f"the UNet of {backend.name}", source,
                    model_family=backend.family, metadata=getattr(adapter, "metadata", None), **fix)
    log.info("Fine-tuning %s (%s, %d tokens).", source, spec.variant, spec.tokens)
    return adapter


def build_adapter(backend: DiffusionBackend, encoder: ImageFeatureEncoder, config: TrainConfig,
                  init_adapter: IPAdapter | None = None) -> IPAdapter:
    """The adapter to train: a copy of `init_adapter` (checked by `check_init_adapter`), or a new one."""
    if init_adapter is not None:
        return copy.deepcopy(init_adapter)  # the plan's stays as checked, so a plan trains the same way twice
    width = encoder.feature_width(config.variant)
    # The image projection starts from random weights: draw them from the run's seed, not from whatever
    # the process drew before, so the same settings give the same adapter (in a server, in tests).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        resampler = backend.family.resampler_dim if config.variant == "plus" else None
        adapter = IPAdapter.new(config.variant, width, backend.cross_dim, backend.adapter_layers(),
                                resampler_dim=resampler)
    adapter.init_from_unet(backend.base_kv())
    return adapter
