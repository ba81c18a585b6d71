"""Read and write whole single-file checkpoints (original layout) of any model family.

    model = read_single_file("sdxl.safetensors", torch.float32)     # family read from the shapes
    save_single_file(model, "copy.safetensors")                      # fp16, what ComfyUI and A1111 load

Reading: the family and every config come from the weight shapes (the family's shipped configs fill
in what shapes cannot tell), the parts are built on the meta device and the file's tensors assigned
into them one by one, cast on the way, so the weights exist once in memory. Entries no part uses (EMA
copies, the noise schedule, CLIP's contrastive head) are skipped with one log line, as diffusers and
ComfyUI skip them; only a missing or wrongly shaped weight that a part needs is refused. `.ckpt`/`.pt`
files are read with `weights_only=True` (weights_io), so a pickle never runs code.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import IPAdapterError
from ..families import ModelFamily
from ..storage.weights_io import WeightFile, save_safetensors_atomic
from .diffusion_model import DiffusionModel
from .ldm.keys import TEXT_ROOTS, Entry, from_ldm, is_known_unused, ldm_shape, shape_fits, summarize_keys, to_ldm
from .ldm.text import read_text_config, text_entries
from .ldm.unet import UNET_PREFIX, family_of_checkpoint, read_unet_config, unet_key_map
from .ldm.vae import VAE_PREFIX, infer_vae_config, vae_entries
from .parts import empty_parts, family_tokenizers
from .random_init import RANDOM_MARK, random_metadata

log = logging.getLogger(__name__)

Check = Callable[[Mapping[str, Any], str], None]


def model_entries(family: ModelFamily, unet: Any, vae: Any, text_encoders: Sequence[Any],
                  text_prefixes: Sequence[str | None] | None = None) -> list[tuple[Any, list[Entry]]]:
    """Each part with its single-file entries: UNet, VAE, then the text encoders in family order.

    `text_prefixes` override where each text encoder is read from (old files); writing uses the family's.
    """
    prefixes = list(text_prefixes) if text_prefixes is not None else [None] * len(text_encoders)
    parts: list[tuple[Any, list[Entry]]] = [
        (unet, [Entry(lk, (dk,)) for dk, lk in unet_key_map(unet.config, unet.state_dict().keys()).items()]),
        (vae, vae_entries(vae.config, vae.state_dict().keys())),
    ]
    for encoder, model, prefix in zip(family.text_encoders, text_encoders, prefixes):
        parts.append((model, text_entries(encoder, model.state_dict().keys(), prefix)))
    return parts


def ldm_shapes(model: DiffusionModel) -> dict[str, tuple[int, ...]]:
    """The single-file key -> shape table of a model (meta-device parts work: nothing is allocated)."""
    out = {}
    for part, entries in model_entries(model.family, model.unet, model.vae, model.text_encoders):
        state = part.state_dict()
        for e in entries:
            out[e.ldm] = ldm_shape(e, [tuple(state[p].shape) for p in e.parts])
    return out


def _assign(model: Any, entries: list[Entry], wf: WeightFile, dtype: torch.dtype, family: ModelFamily,
            name: str) -> None:
    missing = [e.ldm for e in entries if e.ldm not in wf.shapes]
    if missing:
        raise IPAdapterError(f"{name} lacks {len(missing)} weights an {family.label} checkpoint needs "
                             f"(for example {missing[0]}): the file is incomplete or not an {family.label} "
                             "checkpoint; download it again or choose another.")
    expected = model.state_dict()  # meta tensors: shapes only
    state = {}
    for e in entries:
        want = ldm_shape(e, [tuple(expected[p].shape) for p in e.parts])
        have = tuple(wf.shapes[e.ldm])
        if not shape_fits(e, have, want):
            raise IPAdapterError(f"{name} has {e.ldm} of shape {have} where {want} was expected: the file is "
                                 f"damaged or not an {family.label} checkpoint; download it again or choose another.")
        state.update(zip(e.parts, from_ldm(e, wf.take(e.ldm, dtype))))
    model.load_state_dict(state, strict=True, assign=True)


def _log_unused(family: ModelFamily, name: str, unused: list[str]) -> None:
    """One log line naming the file's entries no part uses. Entries checkpoints commonly carry (EMA, noise
    schedule, CLIP head) are reported at INFO; others inside the UNet, VAE or text encoders at WARNING,
    since they may belong to a variant this loader skips."""
    if not unused:
        return
    inside = (UNET_PREFIX, VAE_PREFIX) + TEXT_ROOTS
    odd = any(k.startswith(inside) and not is_known_unused(k) for k in unused)
    log.log(logging.WARNING if odd else logging.INFO, "%s: ignored %d %s the %s model does not use: %s.",
            name, len(unused), "entry" if len(unused) == 1 else "entries", family.label, summarize_keys(unused))


def read_single_file(path: str | os.PathLike, dtype: torch.dtype = torch.float32, check: Check | None = None,
                     expect: ModelFamily | None = None) -> DiffusionModel:
    """Read an original-layout checkpoint of any supported family into a `DiffusionModel` (CPU, `dtype`).

    `check(shapes, name)` runs on the header first (a caller's own refusals, e.g. SD1.5-only); a family
    other than `expect` is refused before any weight is read.
    """
    name = str(path)
    with WeightFile(path, unwrap_state_dict=True) as wf:  # the original SD releases wrap it in "state_dict"
        shapes = wf.shapes
        if check is not None:
            check(shapes, name)
        family = family_of_checkpoint(shapes, name)
        if expect is not None and family is not expect:
            raise IPAdapterError(f"{name} is an {family.label} checkpoint; {expect.label} is needed here.")
        unet_cfg = read_unet_config(shapes, family.config("unet/config.json"), name)
        vae_cfg = infer_vae_config(shapes, family.config("vae/config.json"), name)
        texts = [read_text_config(shapes, enc, family.config(f"{enc.subfolder}/config.json"), name)
                 for enc in family.text_encoders]
        unet, vae, encoders = empty_parts(family, unet_cfg, vae_cfg, [cfg for cfg, _ in texts])
        used: set[str] = set()
        for part, entries in model_entries(family, unet, vae, encoders, [p for _, p in texts]):
            _assign(part, entries, wf, dtype, family, name)
            used.update(e.ldm for e in entries)
        _log_unused(family, name, [k for k in shapes if k not in used])
        random_weights = wf.metadata.get(RANDOM_MARK) == "true"
    return DiffusionModel(family, unet, vae, encoders, family_tokenizers(family),
                          family.config("scheduler/scheduler_config.json"), name, random_weights)


def save_single_file(model: DiffusionModel, path: str | os.PathLike, dtype: torch.dtype = torch.float16,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as one original-layout `.safetensors` checkpoint (what ComfyUI, A1111 and diffusers'
    `from_single_file` load), atomically, with the random-weights mark when it applies and `metadata` added.

    Tensors already in `dtype` are written as they are (no copy): build or load in the target dtype to
    write a full-size model without a second copy of its weights.
    """
    if model.vae is None or any(t is None for t in model.text_encoders):
        raise IPAdapterError("This model's VAE or text encoders were released after encoding; load it again "
                             "to save it as a single file.")
    out: dict[str, torch.Tensor] = {}
    for part, entries in model_entries(model.family, model.unet, model.vae, model.text_encoders):
        state = part.state_dict()
        for e in entries:
            out[e.ldm] = to_ldm(e, [state[p].detach().to(device="cpu", dtype=dtype) for p in e.parts])
    path = save_safetensors_atomic(out, path, metadata={**random_metadata(model.random_weights), **(metadata or {})})
    log.info("Wrote %s (%s, %d tensors, %.1f MiB).", path, model.family.label, len(out), path.stat().st_size / 2**20)
    return path
