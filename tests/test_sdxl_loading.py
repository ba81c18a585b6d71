"""SDXL in and out with a tiny random SDXL: build, save, load (single file, diffusers folders), user
checkpoints, the tokenizers, agreement with diffusers' own single-file loader, and the test models.
The full-size layout and ComfyUI's readers are in test_sdxl_layout.py."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_train import families
from ipadapter_train.models.clip_vision import PRESETS, infer_clip_vision_config, preset_config
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.layout import adapter_layers
from ipadapter_train.models.loading import load_model, peek_family
from ipadapter_train.models.diffusion_model import DiffusionModel
from ipadapter_train.models.parts import empty_parts, tokenizer_subfolder
from ipadapter_train.models.random_init import fill_random_
from ipadapter_train.models.random_models import build_empty, build_model, model_configs
from ipadapter_train.models.sd15 import load_sd15
from ipadapter_train.models.single_file import save_single_file
from ipadapter_train.storage.weights_io import WeightFile

pytestmark = pytest.mark.unit

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
    with caplog.at_level(logging.INFO, logger="ipadapter_train.models.single_file"):
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
    with pytest.raises(IPAdapterError, match=r"sdxl-tiny\.safetensors is an SDXL checkpoint; SD1\.5 is needed here"):
        load_model(tiny_file, family=families.SD15)


def _micro_sd15():
    """A 2-level SD1.5 (32/64 wide, the shipped norms: a single file does not record them), 1-layer CLIP-L."""
    cfgs = model_configs("sd15", "tiny")
    cfgs["unet"].update(block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=8,
                        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    cfgs["vae"].update(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                       up_block_types=["UpDecoderBlock2D"] * 2)
    cfgs["text_encoder"].update(num_hidden_layers=1, intermediate_size=64)
    unet, vae, texts = empty_parts(families.SD15, cfgs["unet"], cfgs["vae"], [cfgs["text_encoder"]])
    for i, part in enumerate((unet, vae, *texts)):
        fill_random_(part, seed=i)
    return DiffusionModel(families.SD15, unet, vae, texts, [], {}, "micro")


def test_load_model_reads_sd15_too(tmp_path):
    micro = _micro_sd15()
    path = save_single_file(micro, tmp_path / "model.safetensors")
    assert peek_family(path) is families.SD15
    back = load_model(path)
    assert back.family is families.SD15 and len(back.text_encoders) == len(back.tokenizers) == 1
    _states_equal(micro.unet, back.unet, cast=torch.float16)
    assert back.tokenizer.pad_token == "<|endoftext|>"


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

def test_make_test_models_sdxl(tmp_path, monkeypatch, caplog):
    from ipadapter_train.models import testmodels

    asked = []
    build = testmodels.build_clip_vision
    monkeypatch.setattr(testmodels, "build_clip_vision", lambda preset, **kw: asked.append(preset) or build("tiny", **kw))
    with caplog.at_level(logging.WARNING, logger="ipadapter_train.models.testmodels"):
        files = testmodels.make_test_models(tmp_path, size="tiny", family="sdxl")
    assert asked == ["vit-h"]  # SDXL's default image encoder (the public sdxl_vit-h adapters)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "RANDOM" in warning  # files that load like real ones say what they are
    assert files["sdxl"].name == "sdxl-tiny.safetensors" and peek_family(files["sdxl"]) is SDXL
    with WeightFile(files["sdxl"]) as wf:
        assert wf.metadata.get("ipadapter_train_random_weights") == "true"


def test_cli_make_test_models_offers_families():
    from ipadapter_train.cli.main import build_parser

    args = build_parser().parse_args(["make-test-models", "out", "--family", "sdxl", "--vision", "vit-bigg"])
    assert (args.family, args.size, args.vision) == ("sdxl", "tiny", "vit-bigg")
    from ipadapter_train.models.random_models import SIZES

    for size in SIZES:  # every size the builder knows is a choice of the command
        assert build_parser().parse_args(["make-test-models", "out", "--size", size]).size == size


def test_the_narrow_sdxl_keeps_the_block_layout_at_320_wide():
    """What ComfyUI's detection reads stays (tests/test_sdxl_layout.py asks ComfyUI itself); the rest is full size."""
    narrow, full = model_configs("sdxl", "narrow"), model_configs("sdxl", "full")
    assert narrow["unet"]["block_out_channels"] == [320, 320, 320]
    assert {k: v for k, v in narrow["unet"].items() if k not in ("block_out_channels", "attention_head_dim")} == {
        k: v for k, v in full["unet"].items() if k not in ("block_out_channels", "attention_head_dim")}
    assert narrow["unet"]["attention_head_dim"] == [5, 5, 5]  # SDXL's 64-d heads
    assert {k: narrow[k] for k in narrow if k != "unet"} == {k: full[k] for k in full if k != "unet"}
    model = build_empty("sdxl", "narrow")
    assert len(adapter_layers(model.unet.config)) == 70
    assert 282e6 < sum(p.numel() for p in model.unet.parameters()) < 284e6


def test_vit_bigg_preset_reads_back():
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(preset_config("vit-bigg"))
    cfg = infer_clip_vision_config(model.state_dict())
    for key, value in PRESETS["vit-bigg"].items():
        assert getattr(cfg, key) == value, key
    assert (cfg.image_size, cfg.patch_size) == (224, 14)
