"""Build the adapter a run trains: new (to_k_ip/to_v_ip copied from the UNet) or from a file to fine-tune."""
from __future__ import annotations

import logging
from pathlib import Path

from .adapter import AdapterSpec, IPAdapter
from .backend import DiffusionBackend, ImageFeatureEncoder
from .config import TrainConfig
from .errors import IPAdapterError
from .fileformat import load_adapter

log = logging.getLogger(__name__)


def load_adapter_module(path: Path) -> IPAdapter:
    """An `IPAdapter` module (fp32) with the weights of an adapter file, its shape read from the file."""
    state, _ = load_adapter(Path(path))
    adapter = IPAdapter(AdapterSpec.from_state_dict(state, str(path)))
    adapter.load_state_dict({k: v.float() for k, v in state.items()})
    return adapter


def build_adapter(backend: DiffusionBackend, encoder: ImageFeatureEncoder, config: TrainConfig,
                  init_adapter: Path | None = None) -> IPAdapter:
    """The adapter to train, checked against the encoder and the UNet before any training starts."""
    width = encoder.feature_width(config.variant)
    if init_adapter is None:
        adapter = IPAdapter.new(config.variant, width, backend.cross_dim, backend.adapter_layers())
        adapter.init_from_unet(backend.base_kv())
        return adapter
    adapter = load_adapter_module(Path(init_adapter))
    spec = adapter.spec
    if spec.variant != config.variant:
        raise IPAdapterError(f"{init_adapter} is a {spec.variant} adapter but the run trains a {config.variant} "
                             f"one: pass --variant {spec.variant}.")
    if spec.clip_dim != width:
        raise IPAdapterError(f"{init_adapter} needs {spec.encoder_requirement}, but {encoder.name} gives "
                             f"{width}-d features: use the image encoder the adapter was trained with.")
    if spec.cross_dim != backend.cross_dim:
        raise IPAdapterError(f"{init_adapter} makes {spec.cross_dim}-d image tokens but the UNet's cross-attention "
                             f"is {backend.cross_dim}-d: it was trained for another base model family.")
    adapter.check_layers(backend.adapter_layers(), f"the UNet of {backend.name}")
    log.info("Fine-tuning %s (%s, %d tokens).", init_adapter, spec.variant, spec.tokens)
    return adapter
