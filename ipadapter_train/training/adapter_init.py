"""Build the adapter a run trains: new (to_k_ip/to_v_ip copied from the UNet) or from a file to fine-tune."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from ..adapter.module import IPAdapter
from ..adapter.check import check_adapter_state
from ..diffusion.backend import DiffusionBackend, ImageFeatureEncoder
from ..config import TrainConfig
from ..errors import IPAdapterError
from ..adapter.fileformat import load_adapter

log = logging.getLogger(__name__)


def load_adapter_module(path: Path) -> IPAdapter:
    """An `IPAdapter` module (fp32) with the weights of an adapter file, its shape read from the file and
    the file's metadata as `.metadata`."""
    state, metadata = load_adapter(Path(path))
    adapter = IPAdapter(check_adapter_state(state, str(path), values=False))
    adapter.load_state_dict({k: v.float() for k, v in state.items()})
    adapter.metadata = dict(metadata)
    return adapter


def build_adapter(backend: DiffusionBackend, encoder: ImageFeatureEncoder, config: TrainConfig,
                  init_adapter: Path | IPAdapter | None = None) -> IPAdapter:
    """The adapter to train, checked against the encoder and the UNet before any training starts.

    `init_adapter` (fine-tuning) is a file or a module; a module is copied, so the caller's stays as it was.
    """
    width = encoder.feature_width(config.variant)
    if init_adapter is None:
        # The image projection starts from random weights: draw them from the run's seed, not from whatever
        # the process drew before, so the same settings give the same adapter (in a server, in tests).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            resampler = backend.family.resampler_dim if config.variant == "plus" else None
            adapter = IPAdapter.new(config.variant, width, backend.cross_dim, backend.adapter_layers(),
                                    resampler_dim=resampler)
        adapter.init_from_unet(backend.base_kv())
        return adapter
    if isinstance(init_adapter, IPAdapter):
        adapter, source = copy.deepcopy(init_adapter).float().train().requires_grad_(True), "The init adapter"
        check_adapter_state(adapter.state_dict(), source)  # a file was checked when read; a module is checked here
    else:
        adapter, source = load_adapter_module(Path(init_adapter)), str(init_adapter)
    spec = adapter.spec
    if spec.variant != config.variant:
        raise IPAdapterError(f"{source} is a {spec.variant} adapter but the run trains a {config.variant} "
                             f"one: pass --variant {spec.variant}.")
    spec.check_fits(width, encoder.name, backend.cross_dim, backend.adapter_layers(), f"the UNet of {backend.name}",
                    source, model_family=backend.family, metadata=getattr(adapter, "metadata", None))
    log.info("Fine-tuning %s (%s, %d tokens).", source, spec.variant, spec.tokens)
    return adapter
