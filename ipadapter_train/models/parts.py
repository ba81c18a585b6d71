"""The parts of a family's model, built empty from configs, and their tokenizers.

Every text encoder of every family tokenizes with OpenAI CLIP's BPE vocabulary; the one copy ships in
`assets/sd15/tokenizer`. SDXL's second tokenizer differs only in its pad token ("!", id 0, where
CLIP-L pads with end-of-text), which the family's `TextEncoder.pad_token` gives, so the 1.5 MB
vocabulary is never duplicated.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import IPAdapterError
from ..families import ASSETS, ModelFamily, TextEncoder
from .random_init import empty_model

log = logging.getLogger(__name__)

TOKENIZER_MAX = 77  # CLIP text encoders have 77 positions; ComfyUI's tokenizer copy says 8192 and would pad to that
SHIPPED_TOKENIZER = ASSETS / "sd15" / "tokenizer"


def load_tokenizer(path: str | os.PathLike | None = None, pad_token: str | None = None):
    """Load a CLIPTokenizer from `path` (default: the shipped CLIP BPE tokenizer), capped at 77 tokens.

    `pad_token` makes it pad with that token the way OpenCLIP does (SDXL's bigG: "!", id 0): see `_open_clip_padding`.
    """
    from transformers import CLIPTokenizer

    folder = Path(path) if path is not None else SHIPPED_TOKENIZER
    try:
        tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise IPAdapterError(f"{folder} is not a CLIP tokenizer folder (tokenizer.json, or vocab.json and "
                             f"merges.txt) ({type(exc).__name__}).") from None
    if pad_token is not None:
        tok = _open_clip_padding(tok, pad_token)
    if tok.model_max_length > TOKENIZER_MAX:
        tok.model_max_length = TOKENIZER_MAX
    return tok


def _open_clip_padding(tok: Any, pad_token: str) -> Any:
    """The same vocabulary, padding with `pad_token` while a prompt's own "!" stays an ordinary word.

    OpenCLIP (what SDXL's bigG was trained with, and what ComfyUI reproduces) pads with id 0 but
    tokenizes "!" in a prompt as the word "!" (256). transformers registers a pad token as a special
    token and cuts it out of the text (id 0): diffusers' SDXL tokenizer_2 does so (diffusers issue 4153).
    So the tokenizer is rebuilt from the vocabulary with no special "!" and only told its pad token
    afterwards, which sets the padding id without adding "!" to the special tokens it splits on.
    """
    import json

    from transformers import CLIPTokenizer

    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    clean = CLIPTokenizer(vocab=model["vocab"], merges=merges)
    clean.model_max_length = tok.model_max_length
    clean.pad_token = pad_token
    return clean


def tokenizer_subfolder(encoder: TextEncoder) -> str:
    """The diffusers folder of an encoder's tokenizer: text_encoder -> tokenizer, text_encoder_2 -> tokenizer_2."""
    return encoder.subfolder.replace("text_encoder", "tokenizer", 1)


def family_tokenizers(family: ModelFamily, folder: Path | None = None) -> list[Any]:
    """One tokenizer per text encoder: from a diffusers `folder`'s tokenizer folders when present,
    else the shipped vocabulary with the encoder's pad token."""
    out = []
    for encoder in family.text_encoders:
        sub = folder / tokenizer_subfolder(encoder) if folder is not None else None
        # transformers 5 saves tokenizer.json only; older saves (and hub folders) have vocab.json + merges.txt
        if sub is not None and any((sub / n).is_file() for n in ("vocab.json", "tokenizer.json")):
            out.append(load_tokenizer(sub, pad_token=encoder.pad_token))
            continue
        if sub is not None:
            log.warning("%s has no %s/ folder; using the CLIP tokenizer shipped with the package.", folder, sub.name)
        out.append(load_tokenizer(pad_token=encoder.pad_token))
    return out


def text_model_class(encoder: TextEncoder):
    """CLIPTextModelWithProjection for an encoder whose pooled, projected output the UNet takes; else CLIPTextModel."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection if encoder.pooled else CLIPTextModel


def empty_parts(family: ModelFamily, unet_cfg: Mapping[str, Any], vae_cfg: Mapping[str, Any],
                text_cfgs: Sequence[Mapping[str, Any]]) -> tuple[Any, Any, list[Any]]:
    """UNet, VAE and text encoders built from configs on the meta device (no memory, no init)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    unet = empty_model(lambda: UNet2DConditionModel.from_config(dict(unet_cfg)))
    vae = empty_model(lambda: AutoencoderKL.from_config(dict(vae_cfg)))
    texts = []
    for encoder, cfg in zip(family.text_encoders, text_cfgs):
        config = CLIPTextConfig.from_dict(dict(cfg))
        texts.append(empty_model(lambda: text_model_class(encoder)(config)))
    return unet, vae, texts
