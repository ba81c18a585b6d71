"""What every original-layout (single-file) key table shares: entries, table application, key summaries.

A single-file checkpoint keeps each model part under its own prefix in the original (LDM/SGM) names.
An `Entry` ties one original tensor to the diffusers/transformers tensor(s) it holds and says how to
turn one into the other: most are the same tensor under another name; the VAE's attention projections
are 1x1 convolutions there and linear layers here; OpenCLIP keeps q, k and v in one `in_proj` tensor
and its text projection transposed. The same entries serve reading and writing, so a round trip is
exact by construction. Every function accepts tensors or bare shapes where shapes suffice, so the
full-size layouts can be checked without allocating them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from ...errors import IPAdapterError

SAME, CONV1X1, QKV, TRANSPOSE = "same", "conv1x1", "qkv", "transpose"

Table = dict[str, tuple[str, dict[str, str]]]  # diffusers module prefix -> (original prefix, leaf renames)


@dataclass(frozen=True)
class Entry:
    """One original-layout tensor and the diffusers tensor(s) it holds."""

    ldm: str  # the full original-layout key
    parts: tuple[str, ...]  # diffusers state-dict keys: one, or q, k, v for QKV
    kind: str = SAME  # SAME, CONV1X1 (diffusers linear <-> 1x1 conv), QKV (concatenated), TRANSPOSE


def shape_of(value: Any) -> tuple[int, ...]:
    """Shape of a tensor, a torch.Size or a plain tuple."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def indices(keys: Iterable[str], pattern: str) -> list[int]:
    """The sorted distinct integers the first group of `pattern` matches at the start of `keys`."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def ldm_shape(entry: Entry, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The original-layout shape of `entry`, from the shapes of its diffusers parts (check a file's
    shape with `shape_fits` before `from_ldm`)."""
    first = tuple(shapes[0])
    if entry.kind == QKV:
        return (sum(s[0] for s in shapes),) + first[1:]
    if entry.kind == TRANSPOSE:
        return first[::-1]
    if entry.kind == CONV1X1 and len(first) == 2:
        return first + (1, 1)
    return first


def shape_fits(entry: Entry, actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """True when a file's tensor of shape `actual` can hold `entry` (whose layout shape is `expected`).

    Some converted SD files keep the VAE attention projections linear: both shapes are accepted.
    """
    return tuple(actual) == tuple(expected) or (entry.kind == CONV1X1 and tuple(actual) == tuple(expected)[:2])


def to_ldm(entry: Entry, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Turn the diffusers tensor(s) of `entry` into its one original-layout tensor."""
    if entry.kind == QKV:
        return torch.cat(list(tensors), dim=0)
    t = tensors[0]
    if entry.kind == TRANSPOSE:
        return t.T.contiguous()
    if entry.kind == CONV1X1 and t.ndim == 2:
        return t[:, :, None, None]
    return t


def from_ldm(entry: Entry, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Turn an original-layout tensor into the diffusers tensor(s) of `entry` (in `entry.parts` order)."""
    if entry.kind == QKV:
        return [c.clone() for c in tensor.chunk(3, dim=0)]  # clones: three views of one storage confuse savers
    if entry.kind == TRANSPOSE:
        return [tensor.T.contiguous()] if tensor.ndim == 2 else [tensor]
    if entry.kind == CONV1X1 and tensor.ndim == 4:
        return [tensor.reshape(tensor.shape[:2])]
    return [tensor]


def apply_table(keys: Iterable[str], table: Table, prefix: str) -> dict[str, str]:
    """Map diffusers keys to original ones through `table` (longest module prefix wins)."""
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for j in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:j])
            if module in table:
                target, renames = table[module]
                leaf = ".".join(parts[j:])
                for old in sorted(renames, key=len, reverse=True):
                    if leaf == old or leaf.startswith(old + "."):
                        leaf = renames[old] + leaf[len(old):]
                        break
                out[key] = f"{prefix}{target}.{leaf}"
                break
        else:
            # a key the table does not know means diffusers changed its layout: fail loudly
            raise IPAdapterError(f"The diffusers weight {key} has no place in the single-file layout; "
                                 "this diffusers version is not supported.")
    if len(set(out.values())) != len(out):
        raise IPAdapterError("The single-file key table maps two diffusers weights to one name; this is a bug.")
    return out


def diffusers_keys(cls: Any, config: Mapping[str, Any]) -> list[str]:
    """State-dict keys of a diffusers model class built from `config` on the meta device."""
    from accelerate import init_empty_weights  # meta tensors: listing keys allocates nothing

    with init_empty_weights(include_buffers=False):
        model = cls.from_config(dict(config))
    return list(model.state_dict().keys())


# The DDPM noise schedule that original (LDM) checkpoints store next to the models; diffusers and this
# package rebuild it from the scheduler config.
SCHEDULE_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model_ema.decay", "model_ema.num_updates"))
TEXT_ROOTS = ("cond_stage_model.", "conditioner.")  # where SD1.x/2.x and SDXL files keep their text encoders


def is_known_unused(key: str) -> bool:
    """True for entries that single-file checkpoints often carry and no model part uses.

    EMA copies of the UNet, the noise schedule's buffers, CLIP's position ids (transformers rebuilds
    them), the projection and logit scale of CLIP's contrastive head where the text encoder stops before
    it, and the VAE's training loss (LPIPS and discriminator weights).
    """
    if key in SCHEDULE_BUFFERS or key.startswith(("model_ema.", "first_stage_model.loss.")):
        return True
    if key.startswith(TEXT_ROOTS):
        return key.endswith(("position_ids", "text_projection", "text_projection.weight", "logit_scale"))
    return False


def summarize_keys(keys: Iterable[str], limit: int = 6) -> str:
    """Describe many checkpoint keys in one short phrase: a group of more than 3 keys under one top-level
    name becomes `name.* (N)`, other keys are named; at most `limit` items, then how many more."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        groups.setdefault(key.split(".", 1)[0] + ".*" if "." in key else "top-level", []).append(key)
    items: list[str] = []
    for name, members in groups.items():
        if len(members) <= 3:
            items.extend(members)
        elif name == "top-level":
            items.append(f"{len(members)} top-level tensors ({', '.join(members[:2])}, ...)")
        else:
            items.append(f"{name} ({len(members)})")
    if len(items) > limit:
        items = items[:limit] + [f"and {len(items) - limit} more"]
    return ", ".join(items)
