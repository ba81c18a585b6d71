"""Is a state dict a whole, sound IP-Adapter? Every key and shape, checked against what the variant needs.

The one validator of adapter weights: loading a file (`inspect`, `generate`, `--init-adapter`, the Load
node) and applying a module (Apply, generation) all go through `check_adapter_state`, so a damaged file
is refused with one sentence that names the wrong key and says what the file looks like instead,
before any model is touched. Whether a sound adapter fits a given UNet and image encoder is the other
half, `AdapterSpec.check_fits`.

    spec = check_adapter_state(state, "my-adapter.safetensors", metadata)
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Mapping

import torch

from ..errors import IPAdapterError
from .module import IPAdapter
from .resampler import HEAD_DIM
from .spec import AdapterSpec, family_phrase

# Far above any UNet's cross-attention count (SD1.5 numbers up to 31, SDXL up to 139): a larger index is
# damage, refused before a list of that many layers is made.
MAX_LAYER_INDEX = 9999
_AGAIN = "save or download it again"


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def expected_shapes(spec: AdapterSpec) -> dict[str, tuple[int, ...]]:
    """Every key of an adapter of `spec` with its shape (from the module itself, built without memory)."""
    with torch.device("meta"):
        module = IPAdapter(spec)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _image_proj_keys(variant: str) -> tuple[str, ...]:
    return tuple(k for k in expected_shapes(AdapterSpec(variant, 8, 8, 1, ())) if k.startswith("image_proj."))


def _variant(sd: Mapping[str, torch.Tensor], source: str) -> str:
    proj = {key[len("image_proj."):] for key in sd if key.startswith("image_proj.")}
    if "proj.0.weight" in proj:
        raise IPAdapterError(f"{source} is an ip-adapter-full (MLP projection) file, which this version does "
                             "not support: use a base or plus adapter.")
    if any(k.startswith(("latents", "proj_in.", "proj_out.", "norm_out.", "layers.")) for k in proj):
        return "plus"
    if proj & {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}:
        return "base"
    raise IPAdapterError(f"{source} has no image_proj weights: it is not an IP-Adapter in the official layout.")


def _layer_indices(sd: Mapping[str, torch.Tensor], source: str) -> list[int]:
    indices = set()
    for key in sd:
        if key.startswith("ip_adapter."):
            n = key.split(".")[1]
            if not n.isdigit():
                raise IPAdapterError(f"{source} has the key {key}, which is not ip_adapter.<number>.*: "
                                     f"the file is damaged or not an IP-Adapter; {_AGAIN}.")
            indices.add(int(n))
    if not indices:
        raise IPAdapterError(f"{source} has no ip_adapter.<n>.to_k_ip weights: it is not a complete IP-Adapter.")
    # The key table numbers cross-attention layers 1, 3, 5, ... (layout.adapter_layers): the highest index
    # says how many layers the file was made with, so a layer missing in the middle shows as a gap.
    top = max(indices)
    if top > MAX_LAYER_INDEX:
        raise IPAdapterError(f"{source} has weights for ip_adapter.{top}, beyond any UNet's layer numbering "
                             f"(1, 3, 5, ...): the file is damaged or not an IP-Adapter; {_AGAIN}.")
    return list(range(1, top + 2 if top % 2 else top + 1, 2))


def _check_keys(sd: Mapping[str, torch.Tensor], variant: str, layers: list[int], source: str) -> None:
    proj_keys = _image_proj_keys(variant)
    layer_keys = [f"ip_adapter.{n}.{p}.weight" for n in layers for p in ("to_k_ip", "to_v_ip")]
    cross = sd.get("image_proj.norm.weight" if variant == "base" else "image_proj.norm_out.weight")
    width = int(cross.shape[0]) if cross is not None and cross.dim() == 1 else None
    family = family_phrase(variant, len(layers), width)
    for wanted, what in ((layer_keys, "layer weights"), (proj_keys, "image_proj weights")):
        missing = [k for k in wanted if k not in sd]
        if missing:
            more = f" and {len(missing) - 1} more are" if len(missing) > 1 else " is"
            raise IPAdapterError(f"{source} is damaged: {missing[0]}{more} missing; the file has "
                                 f"{len(wanted) - len(missing)} of the {len(wanted)} {what} of {family}; {_AGAIN}.")
    extra = sorted(set(sd) - set(proj_keys) - set(layer_keys))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise IPAdapterError(f"{source} has {extra[0]}{more}, which is not part of {family}: the file is damaged "
                             f"or of another kind; {_AGAIN}.")


def _dims(sd: Mapping[str, torch.Tensor], key: str, ndim: int, source: str, variant: str) -> tuple[int, ...]:
    t = sd[key]
    if t.dim() != ndim:
        raise IPAdapterError(f"{source} is damaged: {key} is {_shape(t)} but a {variant} adapter needs a "
                             f"{ndim}-d tensor there; {_AGAIN}.")
    return tuple(int(d) for d in t.shape)


def _spec(sd: Mapping[str, torch.Tensor], variant: str, layers: list[int], source: str) -> AdapterSpec:
    """The spec the file's anchor tensors describe (image_proj's sizes, each layer's to_k_ip width)."""
    # The token width is what most layers read: one damaged tensor (a norm, a to_k_ip) is then named as
    # the odd one out instead of making every other tensor look wrong.
    reads = Counter(_dims(sd, f"ip_adapter.{n}.{p}.weight", 2, source, variant)[1]
                    for n in layers for p in ("to_k_ip", "to_v_ip"))
    cross_dim = reads.most_common(1)[0][0]
    if variant == "base":
        rows, clip_dim = _dims(sd, "image_proj.proj.weight", 2, source, variant)
        (bias,) = _dims(sd, "image_proj.proj.bias", 1, source, variant)
        if bias != rows:
            raise IPAdapterError(f"{source} is damaged: image_proj.proj.weight is [{rows}, {clip_dim}] but "
                                 f"image_proj.proj.bias is [{bias}], and a base adapter's projection has one bias "
                                 f"per weight row; {_AGAIN}.")
        if rows == 0 or rows % cross_dim:
            raise IPAdapterError(f"{source} is damaged: image_proj.proj.weight is [{rows}, {clip_dim}] but a base "
                                 f"adapter for {cross_dim}-d tokens needs [tokens x {cross_dim}, N], "
                                 f"a multiple of {cross_dim} rows; {_AGAIN}.")
        tokens = rows // cross_dim
    else:
        tokens = _dims(sd, "image_proj.latents", 3, source, variant)[1]
        clip_dim = _dims(sd, "image_proj.proj_in.weight", 2, source, variant)[1]
        resampler_dim = _resampler_width(sd, source)
    widths = []
    for n in layers:
        k, v = sd[f"ip_adapter.{n}.to_k_ip.weight"], sd[f"ip_adapter.{n}.to_v_ip.weight"]
        hidden = _dims(sd, f"ip_adapter.{n}.to_k_ip.weight", 2, source, variant)[0]
        if k.shape != v.shape:
            raise IPAdapterError(f"{source} is damaged: ip_adapter.{n}.to_k_ip.weight is {_shape(k)} but "
                                 f"ip_adapter.{n}.to_v_ip.weight is {_shape(v)}, and the two projections of a layer "
                                 f"have the same shape [width, {cross_dim}]; {_AGAIN}.")
        widths.append((n, hidden))
    return AdapterSpec(variant, clip_dim, cross_dim, tokens, tuple(widths),
                       resampler_dim if variant == "plus" else None)


# Which axis of each Resampler tensor is its width (image_proj.<key>, keyed by the name's tail).
_RESAMPLER_WIDTH_AXIS = {"latents": 2, "proj_in.weight": 0, "proj_in.bias": 0, "proj_out.weight": 1,
                         "0.norm1.weight": 0, "0.norm1.bias": 0, "0.norm2.weight": 0, "0.norm2.bias": 0,
                         "0.to_q.weight": 1, "0.to_kv.weight": 1, "0.to_out.weight": 0, "1.0.weight": 0,
                         "1.0.bias": 0, "1.1.weight": 1, "1.3.weight": 0}


def _resampler_width(sd: Mapping[str, torch.Tensor], source: str) -> int:
    """The Resampler's width (768 in SD1.5's plus files, 1280 in SDXL's): what most of its tensors say.

    A vote, as for the token width: one damaged tensor is then named by the shape check, instead of
    making all the others look wrong.
    """
    votes: Counter[int] = Counter()
    for key, tensor in sd.items():
        tail = key[len("image_proj."):]
        tail = tail.split(".", 2)[2] if tail.startswith("layers.") and tail.count(".") >= 3 else tail
        axis = _RESAMPLER_WIDTH_AXIS.get(tail)
        if key.startswith("image_proj.") and axis is not None and tensor.dim() > axis:
            votes[int(tensor.shape[axis])] += 1
    width = votes.most_common(1)[0][0]
    if width <= 0 or width % HEAD_DIM:
        raise IPAdapterError(f"{source} has a Resampler (image_proj) {width} wide, which is not a whole number of "
                             f"{HEAD_DIM}-d heads as in every plus adapter: the file is damaged or of another "
                             f"kind; {_AGAIN}.")
    return width


def describe(spec: AdapterSpec) -> str:
    """`spec` in words for messages: variant, tokens, widths and layers."""
    family = family_phrase(spec.variant, len(spec.layers), spec.cross_dim)
    return (f"{family} ({spec.tokens} tokens of {spec.cross_dim}-d, {spec.clip_dim}-d image features, "
            f"{len(spec.layers)} layers)")


def _check_shapes(sd: Mapping[str, torch.Tensor], spec: AdapterSpec, source: str, whose: str = "") -> None:
    for key, shape in expected_shapes(spec).items():
        if tuple(sd[key].shape) != shape:
            raise IPAdapterError(f"{source} is damaged: {key} is {_shape(sd[key])} but {whose or describe(spec)} "
                                 f"needs {_fmt(shape)}; {_AGAIN}.")


def _check_values(sd: Mapping[str, torch.Tensor], source: str) -> None:
    not_float = sorted(k for k, t in sd.items() if not t.is_floating_point())
    if not_float:
        raise IPAdapterError(f"{source} is damaged: {not_float[0]} holds {str(sd[not_float[0]].dtype)[6:]} values, "
                             f"not floating-point weights; {_AGAIN}.")
    bad = [k for k, t in sd.items() if not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise IPAdapterError(f"{source} has non-finite weights (NaN or infinity) in {bad[0]}{more}: it would "
                             f"generate black or noise images; use another file or an earlier checkpoint.")


def _check_metadata(sd: Mapping[str, torch.Tensor], spec: AdapterSpec, metadata: Mapping[str, str],
                    source: str) -> None:
    """The sizes this package's metadata records (written from the tensors) must still match them."""
    from dataclasses import replace

    said: dict[str, int] = {}
    for field in ("tokens", "clip_dim", "cross_dim") + (("resampler_dim",) if spec.variant == "plus" else ()):
        try:
            said[field] = int(metadata[field])
        except (KeyError, TypeError, ValueError):
            continue
    width = said.get("resampler_dim", HEAD_DIM)
    if width <= 0 or width % HEAD_DIM:
        raise IPAdapterError(f"{source} is damaged: its metadata says a Resampler {width} wide, "
                             f"which is not a whole number of {HEAD_DIM}-d heads; {_AGAIN}.")
    if metadata.get("variant") in ("base", "plus") and metadata["variant"] != spec.variant:
        raise IPAdapterError(f"{source} is damaged: its metadata says a {metadata['variant']} adapter but its "
                             f"image_proj weights are those of a {spec.variant} one; {_AGAIN}.")
    try:
        layers = int(metadata["num_layers"])
    except (KeyError, TypeError, ValueError):
        layers = len(spec.layers)
    if layers != len(spec.layers):
        raise IPAdapterError(f"{source} is damaged: its metadata says {layers} layers but the file has weights "
                             f"for {len(spec.layers)} (ip_adapter.1 ... ip_adapter.{spec.layers[-1][0]}); {_AGAIN}.")
    meant = replace(spec, **said)
    if meant != spec:
        # Name the first tensor that differs from the adapter the metadata describes.
        _check_shapes(sd, meant, source, f"{describe(meant)}, as its metadata says,")


def check_adapter_state(sd: Mapping[str, torch.Tensor], source: str = "The adapter",
                        metadata: Mapping[str, str] | None = None, values: bool = True) -> AdapterSpec:
    """Return the AdapterSpec of a flat official-layout state dict, or raise IPAdapterError saying what is wrong.

    Checks every key and shape against what the variant needs, the layer table's numbering (1, 3, 5, ...),
    the sizes recorded in this package's `metadata`, and with `values` that every weight is a finite float.
    """
    bad = sorted(str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise IPAdapterError(f"{source} has non-tensor values at {bad[:3]}: it is not a valid IP-Adapter file.")
    variant = _variant(sd, source)
    layers = _layer_indices(sd, source)
    _check_keys(sd, variant, layers, source)
    spec = _spec(sd, variant, layers, source)
    if metadata:  # first: written from the intact tensors, it tells which of two disagreeing ones changed
        _check_metadata(sd, spec, metadata, source)
    _check_shapes(sd, spec, source)
    if values:
        _check_values(sd, source)
    return spec
