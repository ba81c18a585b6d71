"""The SDXL single-file layout at full size, read from meta-device models (nothing allocated): key
names, configs read back from shapes, family detection, and agreement with ComfyUI's own tokenizer
and model detection."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipadapter_train import families
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.layout import adapter_layers
from ipadapter_train.models.ldm.text import read_text_config
from ipadapter_train.models.ldm.unet import UNET_PREFIX as P
from ipadapter_train.models.ldm.unet import family_of_checkpoint, read_unet_config
from ipadapter_train.models.ldm.vae import infer_vae_config
from ipadapter_train.models.parts import family_tokenizers
from ipadapter_train.models.random_models import build_empty
from ipadapter_train.models.single_file import ldm_shapes

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SDXL = families.SDXL
G = "conditioner.embedders.1.model."  # OpenCLIP bigG
L_ = "conditioner.embedders.0.transformer.text_model."  # CLIP-L

@functools.lru_cache(maxsize=None)
def _full_shapes(family: str) -> dict[str, tuple]:
    """Single-file shapes of the full-size model, from meta-device parts (nothing allocated)."""
    return ldm_shapes(build_empty(family, "full"))


def test_full_sdxl_layout_known_names():
    shapes = _full_shapes("sdxl")
    known = {
        P + "label_emb.0.0.weight": (1280, 2816), P + "label_emb.0.2.weight": (1280, 1280),
        P + "input_blocks.1.0.in_layers.0.weight": (320,),  # level 0: no attention
        P + "input_blocks.4.1.proj_in.weight": (640, 640),  # linear projections
        P + "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        P + "input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight": (1280, 2048),
        P + "middle_block.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        P + "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),  # upsampler after the attention slot
        P + "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        P + "output_blocks.8.0.out_layers.3.weight": (320, 320, 3, 3),
        "first_stage_model.decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        L_ + "encoder.layers.11.mlp.fc1.weight": (3072, 768),
        G + "token_embedding.weight": (49408, 1280), G + "positional_embedding": (77, 1280),
        G + "transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        G + "transformer.resblocks.31.attn.in_proj_bias": (3840,),
        G + "transformer.resblocks.0.attn.out_proj.weight": (1280, 1280),
        G + "transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
        G + "transformer.resblocks.0.mlp.c_proj.weight": (1280, 5120),
        G + "transformer.resblocks.0.ln_1.weight": (1280,), G + "ln_final.bias": (1280,),
        G + "text_projection": (1280, 1280),
    }
    for key, shape in known.items():
        assert shapes.get(key) == shape, key
    assert not any(k.startswith(G) and ("text_model" in k or "q_proj" in k) for k in shapes)
    assert not any("output_blocks.9" in k or "input_blocks.9" in k for k in shapes)  # 3 levels, not 4
    cross = [k for k in shapes if k.startswith(P) and k.endswith("attn2.to_k.weight")]
    assert len(cross) == 70 == SDXL.adapter_layer_count


def test_full_sdxl_layout_agrees_with_adapter_layout():
    # layout.py's ComfyUI block numbers and this table name the same 70 cross-attention layers
    shapes = _full_shapes("sdxl")
    layers = adapter_layers(SDXL.config("unet/config.json"))
    assert len(layers) == 70
    for layer in layers:
        block, number, t = layer.comfy_key
        ldm = {"input": f"input_blocks.{number}.1", "output": f"output_blocks.{number}.1",
               "middle": "middle_block.1"}[block] + f".transformer_blocks.{t}.attn2.to_k.weight"
        assert P + ldm in shapes, layer


def test_configs_read_back_from_full_sdxl_shapes():
    shapes = _full_shapes("sdxl")
    unet = read_unet_config(shapes, SDXL.config("unet/config.json"))
    ref = SDXL.config("unet/config.json")
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "transformer_layers_per_block", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
                "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
        assert unet[key] == ref[key], key
    assert infer_vae_config(shapes, SDXL.config("vae/config.json"))["scaling_factor"] == 0.13025
    for encoder in SDXL.text_encoders:
        cfg, prefix = read_text_config(shapes, encoder, SDXL.config(f"{encoder.subfolder}/config.json"))
        want = SDXL.config(f"{encoder.subfolder}/config.json")
        assert prefix == encoder.checkpoint_prefix
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "vocab_size", "projection_dim", "hidden_act"):
            assert cfg[key] == want[key], (encoder.subfolder, key)


def test_family_read_from_shapes_not_names():
    assert family_of_checkpoint(_full_shapes("sdxl")) is SDXL
    assert family_of_checkpoint(_full_shapes("sd15")) is families.SD15


def _changed(family, change):
    shapes = dict(_full_shapes(family))
    change(shapes)
    return shapes


def _context(width):
    return lambda s: s.update({k: (v[0], width) for k, v in s.items() if k.endswith(("attn2.to_k.weight",
                                                                                      "attn2.to_v.weight"))})


@pytest.mark.parametrize("family, change, words", [
    ("sd15", _context(1024), r"x\.safetensors is an SD2\.x checkpoint \(1024-d cross-attention\); supported are "
                             r"SD1\.5 \(768-d\), SDXL \(2048-d, 2816-d extra\)"),
    ("sdxl", lambda s: (_context(1280)(s), s.update({P + "label_emb.0.0.weight": (1536, 2560)})),
     r"is an SDXL refiner checkpoint \(1280-d cross-attention and 2560-d extra conditioning\)"),
    ("sdxl", lambda s: s.update({P + "input_blocks.0.0.weight": (320, 9, 3, 3)}), r"9 input channels \(an inpainting"),
    ("sd15", lambda s: s.update({P + "input_blocks.0.0.weight": (320, 9, 3, 3)}), r"9 input channels \(an inpainting"),
    ("sdxl", lambda s: s.update({k: v + (1, 1) for k, v in s.items() if k.endswith("proj_in.weight")}),
     r"1x1-convolution transformer projections where SDXL uses linear ones"),
    ("sdxl", lambda s: s.pop(P + "label_emb.0.0.weight"), r"2048-d cross-attention\); supported"),
])
def test_unsupported_checkpoints_get_one_sentence(family, change, words):
    with pytest.raises(IPAdapterError, match=words):
        family_of_checkpoint(_changed(family, change), source="x.safetensors")

# ------------------------------------------------------------------ ComfyUI's own readers (in a subprocess:
# importing ComfyUI replaces the `nodes` module for the rest of the session)

_COMFY = ROOT / ".comfyui" / "ComfyUI"
_COMFY_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from comfy_import import import_comfy
import_comfy(cpu=True)
import comfy.model_detection, comfy.sdxl_clip
from ipadapter_train.models.random_models import build_empty
from ipadapter_train.models.single_file import ldm_shapes
prompts = json.loads(sys.argv[2])
tok = comfy.sdxl_clip.SDXLTokenizer()
tokens = [{k: [[t for t, _ in batch] for batch in v] for k, v in tok.tokenize_with_weights(p).items()} for p in prompts]
def meta_state(family, size):
    return {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in ldm_shapes(build_empty(family, size)).items()}
def detected(sd):
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    return config, None if config is None else type(config).__name__
sd = meta_state("sdxl", "full")
config = detected(sd)[0]
# what the server tests load: every level 320 wide; tiny SDXL (32 wide) is no model ComfyUI knows
sizes = {f"{f}-{s}": detected(meta_state(f, s))[1] for f, s in (("sdxl", "narrow"), ("sdxl", "tiny"), ("sd15", "tiny"))}
clip_sd = config.process_clip_state_dict({k: v for k, v in sd.items() if k.startswith("conditioner.")})
with torch.device("meta"):
    clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16).state_dict()
print(json.dumps({"tokens": tokens, "config": type(config).__name__, "sizes": sizes, "unet": {k: config.unet_config.get(k) for k in (
    "model_channels", "transformer_depth", "context_dim", "adm_in_channels")},
    "clip_missing": sorted(set(clip) - set(clip_sd)), "clip_unexpected": sorted(set(clip_sd) - set(clip)),
    "clip_misshaped": sorted(k for k in set(clip) & set(clip_sd) if tuple(clip[k].shape) != tuple(clip_sd[k].shape))}))
"""
_PROMPTS = ["a photo of a cat", "A Red CAR, parked by the sea at dusk!", "", "café crème: naïve façade", "! !! !!!",
            " ".join(["dog"] * 74)]


@functools.lru_cache(maxsize=None)
def _comfy_report() -> dict:
    """Run ComfyUI's SDXL tokenizer and model detection on our layout, once, in a fresh interpreter."""
    if not (_COMFY / "main.py").is_file():
        pytest.skip("ComfyUI is not installed (run tests/comfyui/setup_comfyui.sh)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", _COMFY_SCRIPT, str(ROOT / "tests" / "comfyui"), json.dumps(_PROMPTS)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.cli  # ComfyUI runs in a subprocess (`_comfy_report`)
def test_tokenizers_match_comfyui():
    report = _comfy_report()
    tok_l, tok_g = family_tokenizers(SDXL)
    for prompt, theirs in zip(_PROMPTS, report["tokens"]):
        assert len(theirs["l"]) == len(theirs["g"]) == 1, prompt  # one 77-token chunk each
        assert tok_l(prompt, padding="max_length", max_length=77).input_ids == theirs["l"][0], prompt
        assert tok_g(prompt, padding="max_length", max_length=77).input_ids == theirs["g"][0], prompt


@pytest.mark.cli
def test_comfyui_detects_our_full_size_layout_as_sdxl():
    report = _comfy_report()
    assert report["config"] == "SDXL"
    assert report["unet"] == {"model_channels": 320, "transformer_depth": [0, 0, 2, 2, 10, 10], "context_dim": 2048,
                              "adm_in_channels": 2816}
    # ComfyUI's SDXL text encoders take every text tensor we write, in the shapes we write; only the
    # contrastive heads' logit scales and CLIP-L's unused projection keep ComfyUI's defaults
    assert report["clip_unexpected"] == [] and report["clip_misshaped"] == []
    assert report["clip_missing"] == ["clip_g.logit_scale", "clip_l.logit_scale", "clip_l.transformer.text_projection.weight"]


@pytest.mark.cli
def test_comfyui_detects_the_narrow_test_models_as_their_family():
    """ComfyUI reads the first level's width, the transformer depths and the context and extra conditioning widths,
    not the later levels' widths: the narrow SDXL (every level 320 wide, 283M UNet) is SDXL to it, so the server
    tests load it instead of the full size (6.5 GiB)."""
    assert _comfy_report()["sizes"] == {"sdxl-narrow": "SDXL", "sdxl-tiny": None, "sd15-tiny": "SD15"}
