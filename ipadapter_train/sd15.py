"""Load, build and save the frozen Stable Diffusion 1.5 parts the trainer needs.

A model comes either from a diffusers folder or from a single original-layout file
(`.safetensors`, or `.ckpt`/`.pt` read with `weights_only=True`, so a pickle never runs code). For a
single file the configs are read from the weight shapes and the tokenizer and scheduler config ship
with the package. Models are built on the meta device and the file's tensors are assigned into them,
so the weights exist once in memory. Entries of the file that no part uses (EMA copies, the noise
schedule, CLIP's contrastive head) are skipped with one log line, as diffusers and ComfyUI skip them;
only a missing or wrongly shaped weight that a part needs is refused. File reading and writing live in
`weights_io`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch

from . import families
from . import ldm_layout as L
from .diffusion_model import DiffusionModel
from .errors import IPAdapterError
from .random_init import RANDOM_MARK, empty_model, fill_random_, freeze, random_metadata
from .weights_io import WeightFile, save_safetensors_atomic

log = logging.getLogger(__name__)

_TOKENIZER_MAX = 77  # CLIP-L has 77 positions; ComfyUI's tokenizer copy says 8192 and would pad to that


def SD15(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler_config: dict, source: str,
         random_weights: bool = False) -> DiffusionModel:  # noqa: N802 (the name the SD1.5 container had)
    """An SD1.5 `DiffusionModel`: one CLIP-L text encoder and its tokenizer."""
    return DiffusionModel(families.SD15, unet, vae, [text_encoder], [tokenizer], scheduler_config, source,
                          random_weights)


# ---------------------------------------------------------------- configs and tokenizer

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IPAdapterError(f"{path} is not a readable JSON file ({exc}).") from None


def shipped_config_dir() -> Path:
    """Folder of the SD1.5 configs and tokenizer that ship with the package."""
    return Path(__file__).resolve().parent / "assets" / "sd15"


def _shipped(name: str) -> dict:
    return _read_json(shipped_config_dir() / name)


def load_tokenizer(path: str | os.PathLike | None = None):
    """Load a CLIPTokenizer from `path` (default: the shipped SD1.5 tokenizer), capped at 77 tokens."""
    from transformers import CLIPTokenizer

    folder = Path(path) if path is not None else shipped_config_dir() / "tokenizer"
    try:
        tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise IPAdapterError(f"{folder} is not a CLIP tokenizer folder with vocab.json and merges.txt "
                             f"({type(exc).__name__}).") from None
    if tok.model_max_length > _TOKENIZER_MAX:
        tok.model_max_length = _TOKENIZER_MAX
    return tok


def tiny_unet_config() -> dict:
    """The tiny UNet: SD1.5's block layout (16 cross-attention layers) with every level 320 wide."""
    cfg = _shipped("unet/config.json")
    cfg["block_out_channels"] = [320, 320, 320, 320]
    return cfg


# ---------------------------------------------------------------- build / load / save

def _empty_parts(unet_cfg: dict, vae_cfg: dict, text_cfg: dict):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = empty_model(lambda: UNet2DConditionModel.from_config(unet_cfg))
    vae = empty_model(lambda: AutoencoderKL.from_config(vae_cfg))
    text = empty_model(lambda: CLIPTextModel(CLIPTextConfig.from_dict(text_cfg)))
    return unet, vae, text


def build_sd15(size: Literal["tiny", "full"] = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Build an SD1.5 with random weights: "full" is the real shape, "tiny" a cheap ComfyUI-loadable one."""
    if size not in ("tiny", "full"):
        raise IPAdapterError(f"Unknown model size {size!r}; expected 'tiny' or 'full'.")
    unet_cfg = tiny_unet_config() if size == "tiny" else _shipped("unet/config.json")
    unet, vae, text = _empty_parts(unet_cfg, _shipped("vae/config.json"), _shipped("text_encoder/config.json"))
    for i, model in enumerate((unet, vae, text)):
        freeze(fill_random_(model, seed=seed * 3 + i, dtype=dtype))
    return SD15(unet, vae, text, load_tokenizer(), _shipped("scheduler/scheduler_config.json"), f"random:{size}",
                random_weights=True)


def _key_maps(unet, vae, text, text_prefix: str = L.TEXT_PREFIX):
    return ((unet, L.unet_key_map(unet.config, unet.state_dict().keys())),
            (vae, L.vae_key_map(vae.config, vae.state_dict().keys())),
            (text, L.text_key_map(text.state_dict().keys(), text_prefix)))


def _log_unused(name: str, unused: list[str]) -> None:
    """One log line naming the file's entries no model part uses; as diffusers and ComfyUI do, they are
    skipped. Entries checkpoints commonly carry (EMA, noise schedule, CLIP head) are reported at INFO; others
    inside the UNet, VAE or text encoder at WARNING, since they may belong to a variant this loader skips."""
    if not unused:
        return
    inside = (L.UNET_PREFIX, L.VAE_PREFIX, "cond_stage_model.")
    odd = any(k.startswith(inside) and not L.is_known_unused(k) for k in unused)
    log.log(logging.WARNING if odd else logging.INFO, "%s: ignored %d %s the SD1.5 model does not use: %s.",
            name, len(unused), "entry" if len(unused) == 1 else "entries", L.summarize_keys(unused))


def _load_single_file(path: Path, dtype: torch.dtype) -> DiffusionModel:
    name = str(path)
    with WeightFile(path, unwrap_state_dict=True) as wf:  # the original SD releases wrap it in "state_dict"
        shapes = wf.shapes
        unet_cfg = L.infer_unet_config(shapes, base=_shipped("unet/config.json"), source=name)
        vae_cfg = L.infer_vae_config(shapes, base=_shipped("vae/config.json"), source=name)
        text_cfg = L.infer_text_config(shapes, base=_shipped("text_encoder/config.json"), source=name)
        text_prefix = L.find_text_prefix(shapes.keys())
        unet, vae, text = _empty_parts(unet_cfg, vae_cfg, text_cfg)
        used: set[str] = set()
        for model, kmap in _key_maps(unet, vae, text, text_prefix):
            missing = [k for k in kmap.values() if k not in shapes]
            if missing:
                raise IPAdapterError(f"{name} lacks {len(missing)} weights an SD1.5 checkpoint needs "
                                     f"(for example {missing[0]}): the file is incomplete or not an SD1.5 "
                                     "checkpoint; download it again or choose another.")
            expected = model.state_dict()  # meta tensors: shapes only
            state = {}
            for dk, lk in kmap.items():
                t = L.from_ldm_tensor(dk, wf.take(lk, dtype))
                if tuple(t.shape) != tuple(expected[dk].shape):
                    raise IPAdapterError(f"{name} has {lk} of shape {tuple(t.shape)} where "
                                         f"{tuple(expected[dk].shape)} was expected: the file is damaged or not "
                                         "an SD1.5 checkpoint; download it again or choose another.")
                state[dk] = t
            model.load_state_dict(state, strict=True, assign=True)
            used.update(kmap.values())
        _log_unused(name, [k for k in shapes if k not in used])
        random_weights = wf.metadata.get(RANDOM_MARK) == "true"
    return SD15(unet, vae, text, load_tokenizer(), _shipped("scheduler/scheduler_config.json"), name, random_weights)


def _variant(folder: Path) -> str | None:
    # folders saved with variant="fp16" only have `*.fp16.safetensors`; from_pretrained needs to be told
    names = [p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if n.count(".") == 1]
    return "fp16" if not plain and any(".fp16." in n for n in names) else None


def _load_folder(path: Path, dtype: torch.dtype) -> DiffusionModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if not (path / "model_index.json").is_file():
        raise IPAdapterError(f"{path} is a folder without model_index.json; give a diffusers SD1.5 folder "
                             "or a single-file checkpoint.")
    for sub in ("unet", "vae", "text_encoder"):
        if not (path / sub / "config.json").is_file():
            raise IPAdapterError(f"{path} has no {sub}/config.json; it is not a complete diffusers SD1.5 folder.")
    unet_json = _read_json(path / "unet" / "config.json")
    context = unet_json.get("cross_attention_dim")
    if (path / "text_encoder_2").exists() or context != L.SD15_CONTEXT_DIM:
        raise IPAdapterError(f"{path} is not a Stable Diffusion 1.5 folder (its UNet cross-attention width is "
                             f"{context}, SD1.5 uses {L.SD15_CONTEXT_DIM}).")
    sub = "unet"
    try:
        unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", torch_dtype=dtype,
                                                    local_files_only=True, variant=_variant(path / "unet"))
        sub = "vae"
        vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype,
                                            local_files_only=True, variant=_variant(path / "vae"))
        sub = "text_encoder"
        text = CLIPTextModel.from_pretrained(str(path / "text_encoder"), dtype=dtype, local_files_only=True,
                                             variant=_variant(path / "text_encoder"))
    except IPAdapterError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IPAdapterError(f"{path / sub} could not be loaded ({reason}).") from None
    tok_dir = path / "tokenizer"
    if (tok_dir / "vocab.json").is_file():
        tokenizer = load_tokenizer(tok_dir)
    else:
        log.warning("%s has no tokenizer/ folder; using the SD1.5 tokenizer shipped with the package.", path)
        tokenizer = load_tokenizer()
    sched = path / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(sched) if sched.is_file() else _shipped("scheduler/scheduler_config.json")
    return SD15(unet, vae, text, tokenizer, scheduler_config, str(path))


def load_sd15(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load SD1.5 from a diffusers folder or an original-layout single file; every part frozen, in `dtype`."""
    path = Path(path)
    if not path.exists():
        raise IPAdapterError(f"{path} does not exist; give a diffusers SD1.5 folder or a "
                             ".safetensors/.ckpt single-file checkpoint.")
    sd15 = _load_folder(path, dtype) if path.is_dir() else _load_single_file(path, dtype)
    for model in (sd15.unet, sd15.vae, sd15.text_encoder):
        freeze(model.to(device))  # already in `dtype`: loaded that way (casting again makes diffusers warn)
    log.info("Loaded SD1.5 from %s (%s, %s).", path, dtype, device)
    return sd15


def save_single_file(sd15: DiffusionModel, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Write `sd15` as one original-layout `.safetensors` checkpoint (what ComfyUI and A1111 load)."""
    out: dict[str, torch.Tensor] = {}
    for model, kmap in _key_maps(sd15.unet, sd15.vae, sd15.text_encoder):
        state = model.state_dict()
        for dk, lk in kmap.items():
            out[lk] = L.to_ldm_tensor(dk, state[dk].detach()).to(device="cpu", dtype=dtype)
    path = save_safetensors_atomic(out, path, metadata=random_metadata(sd15.random_weights))
    log.info("Wrote %s (%d tensors, %.1f MiB).", path, len(out), path.stat().st_size / 2**20)
    return path
