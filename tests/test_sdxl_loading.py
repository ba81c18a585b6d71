"""SDXL in and out: the single-file layout (UNet, CLIP-L, OpenCLIP bigG, VAE), family detection,
diffusers folders, random test models, and agreement with diffusers' and ComfyUI's own readers."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_train import families
from ipadapter_train.clip_vision import PRESETS, infer_clip_vision_config, preset_config
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.layout import adapter_layers
from ipadapter_train.ldm_text import read_text_config
from ipadapter_train.ldm_unet import UNET_PREFIX as P
from ipadapter_train.ldm_unet import family_of_checkpoint, read_unet_config
from ipadapter_train.ldm_vae import infer_vae_config
from ipadapter_train.model_loading import load_model, peek_family
from ipadapter_train.model_parts import family_tokenizers, tokenizer_subfolder
from ipadapter_train.random_models import build_empty, build_model
from ipadapter_train.sd15 import load_sd15
from ipadapter_train.single_file import ldm_shapes, save_single_file
from ipadapter_train.weights_io import WeightFile

ROOT = Path(__file__).resolve().parents[1]
SDXL = families.SDXL
G = "conditioner.embedders.1.model."  # OpenCLIP bigG
L_ = "conditioner.embedders.0.transformer.text_model."  # CLIP-L


def _states_equal(a, b, cast=None):
    """Every tensor of `a` (rounded through `cast` if given) equals the one in `b`."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        x = sa[k] if cast is None or not sa[k].is_floating_point() else sa[k].to(cast).to(sb[k].dtype)
        assert x.shape == sb[k].shape and torch.equal(x, sb[k]), k


def _config(part) -> dict:
    cfg = part.config.to_dict() if hasattr(part.config, "to_dict") else dict(part.config)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _parts(model):
    return [model.unet, model.vae, *model.text_encoders]


@functools.lru_cache(maxsize=None)
def _full_shapes(family: str) -> dict[str, tuple]:
    """Single-file shapes of the full-size model, from meta-device parts (nothing allocated)."""
    return ldm_shapes(build_empty(family, "full"))


@pytest.fixture(scope="module")
def built():
    return build_model("sdxl", "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_file(built, tmp_path_factory):
    return save_single_file(built, tmp_path_factory.mktemp("sdxl") / "sdxl-tiny.safetensors")


@pytest.fixture(scope="module")
def loaded(tiny_file):
    return load_model(tiny_file)


@pytest.fixture(scope="module")
def tensors(tiny_file):
    with WeightFile(tiny_file) as wf:
        return {k: wf.take(k) for k in list(wf.shapes)}


# ------------------------------------------------------------------ the layout, at full size

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


# ------------------------------------------------------------------ tiny SDXL: build, save, load

def test_tiny_sdxl_shape(built):
    cfg = built.unet.config
    assert list(cfg.block_out_channels) == [32, 64, 128] and list(cfg.transformer_layers_per_block) == [1, 2, 10]
    assert cfg.cross_attention_dim == 2048 and cfg.projection_class_embeddings_input_dim == 2816
    assert all(w // h <= 64 for w, h in zip(cfg.block_out_channels, cfg.attention_head_dim))
    assert len(adapter_layers(cfg)) == 70
    assert [t.config.hidden_size for t in built.text_encoders] == [768, 1280]
    assert built.text_encoders[1].config.projection_dim == 1280 and built.random_weights
    assert 2 ** (len(built.vae.config.block_out_channels) - 1) == 8 and built.vae.config.latent_channels == 4
    assert all(not p.requires_grad for m in _parts(built) for p in m.parameters())


def test_random_build_is_seeded():
    a, b = build_empty("sdxl"), build_model("sdxl", seed=1)
    assert all(p.is_meta for p in a.unet.parameters())
    c = build_model("sdxl", seed=1, dtype=torch.float16)
    _states_equal(b.text_encoders[1], c.text_encoders[1], cast=torch.float16)  # same draw in every dtype
    d = build_model("sdxl", seed=2)
    assert not torch.equal(b.unet.conv_in.weight, d.unet.conv_in.weight)


def test_single_file_round_trip(built, loaded, tiny_file):
    assert loaded.family is SDXL and peek_family(tiny_file) is SDXL
    for a, b in zip(_parts(built), _parts(loaded)):
        _states_equal(a, b, cast=torch.float16)  # the file is fp16
        assert not b.training and not any(p.requires_grad for p in b.parameters())
        assert all(p.dtype == torch.float32 for p in b.parameters())
    for a, b in zip(_parts(built), _parts(loaded)):  # every config value the weights must carry was read back
        assert _config(a) == _config(b), type(a).__name__
    assert loaded.random_weights and loaded.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert type(loaded.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
    assert loaded.vae.config.scaling_factor == 0.13025


def test_file_holds_openclip_names_and_fp16(tensors, built):
    assert all(v.dtype == torch.float16 for v in tensors.values())
    qkv = tensors[G + "transformer.resblocks.0.attn.in_proj_weight"]
    attn = built.text_encoders[1].text_model.encoder.layers[0].self_attn
    want = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).half()
    assert torch.equal(qkv, want)
    proj = built.text_encoders[1].text_projection.weight  # transformers: [projection, width]
    assert torch.equal(tensors[G + "text_projection"], proj.T.half())  # OpenCLIP: x @ P with P [width, projection]
    assert not any(k.endswith("position_ids") for k in tensors)


def test_loaded_tiny_sdxl_runs_finite(loaded):
    with torch.no_grad():
        ids = [tok(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
               for tok in loaded.tokenizers]
        out_l = loaded.text_encoders[0](ids[0], output_hidden_states=True)
        out_g = loaded.text_encoders[1](ids[1], output_hidden_states=True)
        context = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        eps = loaded.unet(torch.randn(1, 4, 8, 8), 500, encoder_hidden_states=context,
                          added_cond_kwargs={"text_embeds": out_g.text_embeds, "time_ids": time_ids}).sample
        image = loaded.vae.decode(torch.randn(1, 4, 8, 8)).sample
    assert context.shape == (1, 77, 2048) and out_g.text_embeds.shape == (1, 1280)
    assert eps.shape == (1, 4, 8, 8) and image.shape == (1, 3, 64, 64)
    assert all(torch.isfinite(t).all() for t in (context, eps, image))


def test_tokenizers_pad_as_sdxl_does(loaded):
    tok_l, tok_g = loaded.tokenizers
    ids_l = tok_l("a cat", padding="max_length", max_length=77).input_ids
    ids_g = tok_g("a cat", padding="max_length", max_length=77).input_ids
    assert ids_l[:4] == ids_g[:4] == [49406, 320, 2368, 49407]
    assert ids_l[4:] == [49407] * 73 and ids_g[4:] == [0] * 73  # CLIP-L pads with end-of-text, bigG with "!"
    assert tok_g.model_max_length == tok_l.model_max_length == 77
    # a prompt's own "!" is the word "!" (256), as OpenCLIP and ComfyUI tokenize it, not the pad id
    assert tok_g("dusk! !").input_ids == tok_l("dusk! !").input_ids == [49406, 19708, 256, 256, 49407]
    assert not (Path(families.ASSETS) / "sdxl" / "tokenizer_2").exists()  # the vocabulary ships once


def _config_folder(model, folder: Path) -> Path:
    """A diffusers folder of configs and tokenizers only (what from_single_file's `config=` reads)."""
    model.unet.save_config(folder / "unet")
    model.vae.save_config(folder / "vae")
    for encoder, text, tok in zip(model.family.text_encoders, model.text_encoders, model.tokenizers):
        text.config.save_pretrained(folder / encoder.subfolder)
        tok.save_pretrained(folder / tokenizer_subfolder(encoder))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config))
    shutil.copy(model.family.config_dir() / "model_index.json", folder)
    return folder


def test_matches_diffusers_own_single_file_loader(tiny_file, loaded, tmp_path):
    # independent check that the layout is the real one: diffusers converts our file with its own code
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(tiny_file), config=str(_config_folder(loaded, tmp_path)),
                                                      local_files_only=True, torch_dtype=torch.float32)
    for theirs, ours in ((pipe.unet, loaded.unet), (pipe.vae, loaded.vae), (pipe.text_encoder, loaded.text_encoders[0]),
                         (pipe.text_encoder_2, loaded.text_encoders[1])):
        _states_equal(theirs, ours)
    assert pipe.tokenizer_2.pad_token == "!"


@pytest.mark.parametrize("variant, tokenizer_2", [(None, True), ("fp16", False)])
def test_diffusers_folder_load(loaded, tmp_path, caplog, variant, tokenizer_2):
    folder = tmp_path / "sdxl-diffusers"
    _config_folder(loaded, folder)
    kwargs = {"variant": variant} if variant else {}
    for name, part in zip(["unet", "vae", "text_encoder", "text_encoder_2"], _parts(loaded)):
        part.save_pretrained(folder / name, **kwargs)
    if not tokenizer_2:
        shutil.rmtree(folder / "tokenizer_2")
    assert peek_family(folder) is SDXL
    with caplog.at_level(logging.WARNING):
        again = load_model(folder, dtype=torch.float16)
    assert again.family is SDXL and again.source == str(folder)
    for a, b in zip(_parts(loaded), _parts(again)):
        _states_equal(a, b, cast=torch.float16)
        assert all(p.dtype == torch.float16 for p in b.parameters()) and not b.training
    assert again.tokenizers[1].pad_token == "!" and again.tokenizers[1].model_max_length == 77
    # a saved tokenizer_2 declares "!" a special token, which transformers would cut out of prompts
    assert again.tokenizers[1]("dusk!", padding="max_length", max_length=5).input_ids == [49406, 19708, 256, 49407, 0]
    assert any("no tokenizer_2/ folder" in r.getMessage() for r in caplog.records) == (not tokenizer_2)
    with pytest.raises(IPAdapterError, match=r"sdxl-diffusers is an SDXL model; SD1\.5 is needed here"):
        load_sd15(folder)


# ------------------------------------------------------------------ checkpoints as users have them

_EXTRAS = {
    G + "logit_scale": torch.tensor(4.6).half(),
    L_ + "embeddings.position_ids": torch.arange(77)[None],
    "conditioner.embedders.0.transformer.text_projection.weight": torch.zeros(768, 768).half(),
    "model_ema.decay": torch.tensor(0.9999), "alphas_cumprod": torch.rand(1000),
}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_extra_entries_and_ckpt_load(tensors, built, tmp_path, caplog, suffix):
    path = tmp_path / f"user{suffix}"
    changed = dict(tensors, **_EXTRAS)
    if suffix == ".ckpt":
        torch.save({"state_dict": changed, "global_step": 1}, path)
    else:
        save_file(changed, path)
    with caplog.at_level(logging.INFO, logger="ipadapter_train.single_file"):
        back = load_model(path)
    for a, b in zip(_parts(built), _parts(back)):
        _states_equal(a, b, cast=torch.float16)
    lines = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert "ignored 5 entries the SDXL model does not use" in lines[0].getMessage()


def test_missing_and_misshaped_weights_are_refused(tensors, tmp_path):
    lacking = {k: v for k, v in tensors.items() if k != G + "transformer.resblocks.0.attn.in_proj_bias"}
    save_file(lacking, tmp_path / "lacking.safetensors")
    with pytest.raises(IPAdapterError, match=r"lacking\.safetensors lacks 1 weights an SDXL checkpoint needs "
                                             r"\(for example conditioner\.embedders\.1\.model\.transformer"):
        load_model(tmp_path / "lacking.safetensors")
    key = G + "transformer.resblocks.0.attn.in_proj_weight"
    save_file(dict(tensors, **{key: torch.zeros(1280, 1280).half()}), tmp_path / "wrong.safetensors")
    with pytest.raises(IPAdapterError, match=r"wrong\.safetensors has conditioner\.embedders\.1\.model\.transformer"
                                             r"\.resblocks\.0\.attn\.in_proj_weight of shape \(1280, 1280\) where "
                                             r"\(3840, 1280\) was expected"):
        load_model(tmp_path / "wrong.safetensors")
    no_g = {k: v for k, v in tensors.items() if not k.startswith(G)}
    save_file(no_g, tmp_path / "no_g.safetensors")
    with pytest.raises(IPAdapterError, match=r"no_g\.safetensors has no 1280-wide text encoder at "
                                             r"conditioner\.embedders\.1\.model\."):
        load_model(tmp_path / "no_g.safetensors")


def test_load_sd15_refuses_sdxl_file(tiny_file):
    with pytest.raises(IPAdapterError, match=r"sdxl-tiny\.safetensors is an SDXL"):
        load_sd15(tiny_file)


def test_peek_family_bad_input(tmp_path):
    with pytest.raises(IPAdapterError, match=r"nothing\.safetensors does not exist"):
        peek_family(tmp_path / "nothing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IPAdapterError, match=r"empty is a folder without model_index\.json"):
        peek_family(tmp_path / "empty")
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 14, 14)}, tmp_path / "v.safetensors")
    with pytest.raises(IPAdapterError, match=r"v\.safetensors is a CLIP vision model"):
        peek_family(tmp_path / "v.safetensors")


# ------------------------------------------------------------------ test models and presets

def test_make_test_models_sdxl(tmp_path, monkeypatch):
    from ipadapter_train import testmodels

    asked = []
    build = testmodels.build_clip_vision
    monkeypatch.setattr(testmodels, "build_clip_vision", lambda preset, **kw: asked.append(preset) or build("tiny", **kw))
    files = testmodels.make_test_models(tmp_path, size="tiny", family="sdxl")
    assert asked == ["vit-h"]  # SDXL's default image encoder (the public sdxl_vit-h adapters)
    assert files["sdxl"].name == "sdxl-tiny.safetensors" and peek_family(files["sdxl"]) is SDXL
    with WeightFile(files["sdxl"]) as wf:
        assert wf.metadata.get("ipadapter_train_random_weights") == "true"


def test_cli_make_test_models_offers_families():
    from ipadapter_train.cli import build_parser

    args = build_parser().parse_args(["make-test-models", "out", "--family", "sdxl", "--vision", "vit-bigg"])
    assert (args.family, args.size, args.vision) == ("sdxl", "tiny", "vit-bigg")


def test_vit_bigg_preset_reads_back():
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(preset_config("vit-bigg"))
    cfg = infer_clip_vision_config(model.state_dict())
    for key, value in PRESETS["vit-bigg"].items():
        assert getattr(cfg, key) == value, key
    assert (cfg.image_size, cfg.patch_size) == (224, 14)


# ------------------------------------------------------------------ ComfyUI's own readers (in a subprocess:
# importing ComfyUI replaces the `nodes` module for the rest of the session)

_COMFY = ROOT / ".comfyui" / "ComfyUI"
_COMFY_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from comfy_import import import_comfy
import_comfy(cpu=True)
import comfy.model_detection, comfy.sdxl_clip
from ipadapter_train.random_models import build_empty
from ipadapter_train.single_file import ldm_shapes
prompts = json.loads(sys.argv[2])
tok = comfy.sdxl_clip.SDXLTokenizer()
tokens = [{k: [[t for t, _ in batch] for batch in v] for k, v in tok.tokenize_with_weights(p).items()} for p in prompts]
sd = {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in ldm_shapes(build_empty("sdxl", "full")).items()}
config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
clip_sd = config.process_clip_state_dict({k: v for k, v in sd.items() if k.startswith("conditioner.")})
with torch.device("meta"):
    clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16).state_dict()
print(json.dumps({"tokens": tokens, "config": type(config).__name__, "unet": {k: config.unet_config.get(k) for k in (
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


@pytest.mark.cli  # a subprocess (the cached helper hides it from the automatic tiering)
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
