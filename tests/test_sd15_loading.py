"""SD1.5 loading: the single-file key table, config inference, diffusers parity, and bad input."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_train.models.ldm import layout as L
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.layout import adapter_layers
from ipadapter_train.models.sd15 import (SD15, build_sd15, load_sd15, load_tokenizer, save_single_file, shipped_config_dir,
                                  tiny_unet_config)
from ipadapter_train.storage.weights_io import WeightFile

from conftest import random_model_files

pytestmark = pytest.mark.unit

P = L.UNET_PREFIX


def _shipped(name):
    return json.loads((shipped_config_dir() / name).read_text())


def _states_equal(a, b, cast=None):
    """Every tensor of `a` (rounded through `cast` if given) equals the one in `b`."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        x, y = sa[k].reshape(-1), sb[k].reshape(-1)
        assert x.shape == y.shape, k
        # chunks: casting a 100M-element tensor whole costs seconds of page faults on this machine
        for i in range(0, x.numel(), 1 << 22):
            xc = x[i:i + (1 << 22)]
            xc = xc if cast is None or not xc.is_floating_point() else xc.to(cast).to(y.dtype)
            assert torch.equal(xc, y[i:i + (1 << 22)]), k


@pytest.fixture(scope="module")
def tiny_files():
    """The tiny test models of `make_test_models` (written once per session, shared: read only)."""
    return random_model_files("sd15", "tiny", vision="tiny", seed=0)


@pytest.fixture(scope="module")
def built():
    return build_sd15("tiny", seed=0)  # same seed as the file: the same weights


@pytest.fixture(scope="module")
def loaded(tiny_files):
    return load_sd15(tiny_files["sd15"])


def _full_ldm_shapes() -> dict[str, tuple]:
    """Original-layout shapes of the full SD1.5, from meta-device models (nothing allocated)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    shapes = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_shipped("unet/config.json"))
        vae = AutoencoderKL.from_config(_shipped("vae/config.json"))
        text = CLIPTextModel(CLIPTextConfig.from_dict(_shipped("text_encoder/config.json")))
    for model, kmap in ((unet, L.unet_key_map(unet.config)), (vae, L.vae_key_map(vae.config)),
                        (text, L.text_key_map(text.state_dict().keys()))):
        state = model.state_dict()
        for dk, lk in kmap.items():
            shapes[lk] = tuple(L.to_ldm_tensor(dk, state[dk]).shape)
    return shapes


# ------------------------------------------------------------------ the key table

def test_unet_key_map_full_sd15_known_names():
    kmap = L.unet_key_map(_shipped("unet/config.json"))
    assert len(kmap) == 686 and len(set(kmap.values())) == 686
    known = {
        "conv_in.weight": "input_blocks.0.0.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight":
            "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.resnets.1.norm1.weight": "input_blocks.2.0.in_layers.0.weight",
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight":
            "middle_block.1.transformer_blocks.0.attn2.to_v.weight",
        "mid_block.resnets.1.time_emb_proj.weight": "middle_block.2.emb_layers.1.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.resnets.0.conv_shortcut.weight": "output_blocks.3.0.skip_connection.weight",
        "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
        "up_blocks.3.attentions.2.proj_out.weight": "output_blocks.11.1.proj_out.weight",
        "conv_norm_out.weight": "out.0.weight",
        "conv_out.bias": "out.2.bias",
    }
    for dk, lk in known.items():
        assert kmap[dk] == P + lk, dk


def test_unet_key_map_agrees_with_adapter_layout():
    # layout.py's ComfyUI block numbers and this table must name the same 16 cross-attention layers
    cfg = _shipped("unet/config.json")
    kmap = L.unet_key_map(cfg)
    layers = adapter_layers(cfg)
    assert len(layers) == 16
    for layer in layers:
        block, number, t = layer.comfy_key
        ldm = {"input": f"input_blocks.{number}.1", "output": f"output_blocks.{number}.1",
               "middle": "middle_block.1"}[block] + f".transformer_blocks.{t}.attn2.to_k.weight"
        assert kmap[layer.name + ".to_k.weight"] == P + ldm


def test_vae_key_map_full_sd15_known_names():
    kmap = L.vae_key_map(_shipped("vae/config.json"))
    assert len(kmap) == 248 and len(set(kmap.values())) == 248
    V = L.VAE_PREFIX
    assert kmap["encoder.mid_block.attentions.0.to_q.weight"] == V + "encoder.mid.attn_1.q.weight"
    assert kmap["decoder.mid_block.attentions.0.to_out.0.bias"] == V + "decoder.mid.attn_1.proj_out.bias"
    assert kmap["decoder.mid_block.attentions.0.group_norm.weight"] == V + "decoder.mid.attn_1.norm.weight"
    assert kmap["decoder.up_blocks.0.resnets.2.conv1.weight"] == V + "decoder.up.3.block.2.conv1.weight"
    assert kmap["decoder.up_blocks.0.upsamplers.0.conv.weight"] == V + "decoder.up.3.upsample.conv.weight"
    assert kmap["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"] == V + "encoder.down.1.block.0.nin_shortcut.weight"
    assert kmap["encoder.down_blocks.2.downsamplers.0.conv.weight"] == V + "encoder.down.2.downsample.conv.weight"
    assert kmap["encoder.conv_norm_out.weight"] == V + "encoder.norm_out.weight"
    x = torch.zeros(512, 512)
    assert L.to_ldm_tensor("encoder.mid_block.attentions.0.to_k.weight", x).shape == (512, 512, 1, 1)
    assert L.from_ldm_tensor("encoder.mid_block.attentions.0.to_k.weight", x[:, :, None, None]).shape == (512, 512)


def test_infer_configs_from_full_sd15_shapes():
    shapes = _full_ldm_shapes()
    assert len(shapes) == 686 + 248 + 196
    unet = L.infer_unet_config(shapes)
    ref = _shipped("unet/config.json")
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim", "attention_head_dim", "in_channels", "out_channels"):
        assert unet[key] == ref[key], key
    assert unet["transformer_layers_per_block"] == 1 and unet["use_linear_projection"] is False
    vae = L.infer_vae_config(shapes)
    for key, value in _shipped("vae/config.json").items():
        if key in vae:
            assert vae[key] == value, key
    text = L.infer_text_config(shapes)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "vocab_size"):
        assert text[key] == _shipped("text_encoder/config.json")[key], key


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update({P + "label_emb.0.0.weight": (1280, 2816)}), "SDXL"),
    (lambda s: s.update({k: (v[0], 1024) for k, v in s.items() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}), "SD2"),
    (lambda s: s.update({k: v[:2] for k, v in s.items() if k.endswith("proj_in.weight")}), "linear"),
    (lambda s: s.update({P + "input_blocks.0.0.weight": (320, 9, 3, 3)}), "9 input channels"),
])
def test_rejects_other_models_by_shape(change, words):
    shapes = _full_ldm_shapes()
    change(shapes)
    with pytest.raises(IPAdapterError, match=words):
        L.infer_unet_config(shapes, source="x.safetensors")


# ------------------------------------------------------------------ tiny model: round trips

def test_make_test_models_writes_fp16_single_files(tiny_files):
    files = tiny_files
    assert files["sd15"].name == "sd15-tiny.safetensors" and files["sd15"].is_file()
    assert files["clip_vision"].name == "clip-vision-tiny.safetensors" and files["clip_vision"].is_file()
    with WeightFile(files["sd15"]) as wf:
        assert all(wf.take(k).dtype == torch.float16 for k in list(wf.shapes)[:20])
        assert not any(k.endswith("position_ids") for k in wf.shapes)
        keys = set(wf.shapes)
    assert {P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            L.VAE_PREFIX + "encoder.mid.attn_1.q.weight", L.TEXT_PREFIX + "final_layer_norm.weight"} <= keys


def test_single_file_round_trip(built, loaded):
    assert loaded.unet.config.block_out_channels == [320] * 4 or list(loaded.unet.config.block_out_channels) == [320] * 4
    assert len(adapter_layers(loaded.unet.config)) == 16
    for a, b in ((built.unet, loaded.unet), (built.vae, loaded.vae), (built.text_encoder, loaded.text_encoder)):
        _states_equal(a, b, cast=torch.float16)  # the file is fp16
        assert not b.training and not any(p.requires_grad for p in b.parameters())
        assert all(p.dtype == torch.float32 for p in b.parameters())
    assert loaded.tokenizer.model_max_length == 77
    assert loaded.scheduler_config["num_train_timesteps"] == 1000


def test_loaded_tiny_model_runs_finite(loaded):
    with torch.no_grad():
        ids = loaded.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = loaded.text_encoder(ids).last_hidden_state
        eps = loaded.unet(torch.randn(1, 4, 16, 16), 500, encoder_hidden_states=text).sample
        image = loaded.vae.decode(torch.randn(1, 4, 8, 8)).sample
    assert text.shape == (1, 77, 768) and eps.shape == (1, 4, 16, 16) and image.shape == (1, 3, 64, 64)
    assert all(torch.isfinite(t).all() for t in (text, eps, image))


def test_matches_diffusers_own_single_file_converter(tiny_files, loaded, tmp_path):
    # independent check: diffusers converts the same file with its own code
    from diffusers import StableDiffusionPipeline

    config = tmp_path / "config"
    shutil.copytree(shipped_config_dir(), config)
    (config / "unet" / "config.json").write_text(json.dumps(tiny_unet_config()))
    pipe = StableDiffusionPipeline.from_single_file(str(tiny_files["sd15"]), config=str(config),
                                                    local_files_only=True, torch_dtype=torch.float32)
    _states_equal(pipe.unet, loaded.unet)
    _states_equal(pipe.vae, loaded.vae)
    _states_equal(pipe.text_encoder, loaded.text_encoder)


def test_diffusers_folder_load(loaded, tmp_path):
    folder = tmp_path / "sd15-diffusers"
    loaded.unet.save_pretrained(folder / "unet")
    loaded.vae.save_pretrained(folder / "vae")
    loaded.text_encoder.save_pretrained(folder / "text_encoder")
    loaded.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    shutil.copy(shipped_config_dir() / "scheduler" / "scheduler_config.json", folder / "scheduler")
    shutil.copy(shipped_config_dir() / "model_index.json", folder)
    again = load_sd15(folder)
    for a, b in ((loaded.unet, again.unet), (loaded.vae, again.vae), (loaded.text_encoder, again.text_encoder)):
        _states_equal(a, b)
        assert not b.training and not any(p.requires_grad for p in b.parameters())
    assert again.tokenizer.model_max_length == 77 and again.source == str(folder)


def test_tokenizer_is_shipped_and_capped():
    tok = load_tokenizer()
    ids = tok(["a photo of a cat"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    assert tok.model_max_length == 77 and ids.shape == (1, 77)
    assert ids[0, 0].item() == 49406  # <|startoftext|>


# ------------------------------------------------------------------ a micro model with an odd shape

def _micro_sd15():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet_cfg = dict(_shipped("unet/config.json"), block_out_channels=[32, 64], layers_per_block=1,
                    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    vae_cfg = dict(_shipped("vae/config.json"), block_out_channels=[32, 64], layers_per_block=1,
                   down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text_cfg = dict(_shipped("text_encoder/config.json"), vocab_size=1000, num_hidden_layers=1, intermediate_size=128)
    return SD15(UNet2DConditionModel.from_config(unet_cfg), AutoencoderKL.from_config(vae_cfg),
                CLIPTextModel(CLIPTextConfig.from_dict(text_cfg)), None, {}, "micro")


def test_micro_model_config_inferred_and_round_trips(tmp_path):
    micro = _micro_sd15()
    path = save_single_file(micro, tmp_path / "micro.safetensors", dtype=torch.float32)
    assert not [p for p in tmp_path.iterdir() if p.name != "micro.safetensors"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other saved file
    back = load_sd15(path)
    assert list(back.unet.config.block_out_channels) == [32, 64] and back.unet.config.layers_per_block == 1
    assert list(back.unet.config.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert back.text_encoder.config.num_hidden_layers == 1 and back.text_encoder.config.vocab_size == 1000
    for a, b in ((micro.unet, back.unet), (micro.vae, back.vae), (micro.text_encoder, back.text_encoder)):
        _states_equal(a, b)
    half = load_sd15(path, dtype=torch.float16)
    for model in (half.unet, half.vae, half.text_encoder):
        assert all(p.dtype == torch.float16 for p in model.parameters())


def test_micro_model_matches_diffusers_conversion_functions(tmp_path):
    # the tiny model has no width changes; this odd shape also covers skip_connection / nin_shortcut
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    micro = _micro_sd15()
    with WeightFile(save_single_file(micro, tmp_path / "micro.safetensors", dtype=torch.float32)) as wf:
        tensors = {k: wf.take(k) for k in list(wf.shapes)}
    assert any("skip_connection" in k for k in tensors) and any("nin_shortcut" in k for k in tensors)
    for model, converted in ((micro.unet, convert_ldm_unet_checkpoint(tensors, dict(micro.unet.config))),
                             (micro.vae, convert_ldm_vae_checkpoint(tensors, dict(micro.vae.config)))):
        state = model.state_dict()
        assert converted.keys() == state.keys()
        for k, v in state.items():
            assert torch.equal(converted[k].reshape(v.shape), v), k


def test_ckpt_with_state_dict_wrapper_loads(tmp_path):
    micro = _micro_sd15()
    st = save_single_file(micro, tmp_path / "micro.safetensors")
    with WeightFile(st) as wf:
        tensors = {k: wf.take(k) for k in list(wf.shapes)}
    ckpt = tmp_path / "micro.ckpt"
    torch.save({"state_dict": tensors, "global_step": 7}, ckpt)
    back = load_sd15(ckpt)
    _states_equal(micro.unet, back.unet, cast=torch.float16)


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory):
    """The micro model and its single-file tensors (fp16, as `save_single_file` writes by default)."""
    micro = _micro_sd15()
    with WeightFile(save_single_file(micro, tmp_path_factory.mktemp("micro") / "micro.safetensors")) as wf:
        tensors = {k: wf.take(k) for k in list(wf.shapes)}
    return micro, tensors


_T = "cond_stage_model.transformer."
_SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def _ema(tensors):
    """LDM's EMA copy of the UNet: `model_ema.` + the UNet key without its dots, plus decay and step count."""
    out = {"model_ema." + k[len("model."):].replace(".", ""): v.clone() for k, v in tensors.items() if k.startswith(P)}
    return dict(out, **{"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)})


def _old_text_layout(tensors):
    """Text encoder keys without the `text_model.` level (checkpoints from before transformers 4.17)."""
    return {(L.OLD_TEXT_PREFIX + k[len(L.TEXT_PREFIX):] if k.startswith(L.TEXT_PREFIX) else k): v
            for k, v in tensors.items()}


_IDS = torch.arange(77)[None]
# variant name -> (change to the file's tensors, file suffix, words the one log line must hold)
_USER_VARIANTS = {
    "ema": (lambda t: dict(t, **_ema(t)), ".safetensors", ["model_ema.* ("]),
    "position_ids": (lambda t: dict(t, **{L.TEXT_PREFIX + "embeddings.position_ids": _IDS}), ".safetensors",
                     [L.TEXT_PREFIX + "embeddings.position_ids"]),
    "old_layout_position_ids": (lambda t: dict(_old_text_layout(t), **{_T + "embeddings.position_ids": _IDS}),
                                ".safetensors", [_T + "embeddings.position_ids"]),
    "text_projection": (lambda t: dict(t, **{_T + "text_projection.weight": torch.randn(768, 768).half()}),
                        ".safetensors", [_T + "text_projection.weight"]),
    "logit_scale": (lambda t: dict(t, **{"cond_stage_model.logit_scale": torch.tensor(4.6).half()}), ".safetensors",
                    ["cond_stage_model.logit_scale"]),
    "schedule_buffers": (lambda t: dict(t, **{k: torch.rand(1000) for k in _SCHEDULE}), ".safetensors",
                         ["12 top-level tensors (alphas_cumprod"]),
    # the original SD releases: a pickle with everything above inside "state_dict", position ids as floats
    "ckpt_everything": (lambda t: dict(t, **_ema(t), **{k: torch.rand(1000) for k in _SCHEDULE},
                                       **{L.TEXT_PREFIX + "embeddings.position_ids": _IDS.half(),
                                          _T + "text_projection.weight": torch.randn(768, 768).half(),
                                          "cond_stage_model.logit_scale": torch.tensor(4.6).half()}),
                        ".ckpt", ["model_ema.* (", "12 top-level tensors", "logit_scale"]),
}


@pytest.mark.parametrize("variant", list(_USER_VARIANTS))
def test_checkpoints_as_users_have_them_load(micro_file, tmp_path, caplog, variant):
    # extra entries that diffusers and ComfyUI skip are skipped here too, with one log line naming them
    micro, tensors = micro_file
    change, suffix, words = _USER_VARIANTS[variant]
    path = tmp_path / f"{variant}{suffix}"
    changed = change(tensors)
    if suffix == ".ckpt":
        torch.save({"state_dict": changed, "global_step": 470000}, path)
    else:
        save_file(changed, path)
    with caplog.at_level(logging.INFO, logger="ipadapter_train.models.single_file"):
        back = load_sd15(path)
    for a, b in ((micro.unet, back.unet), (micro.vae, back.vae), (micro.text_encoder, back.text_encoder)):
        _states_equal(a, b, cast=torch.float16)  # fp16 in the file, fp32 in memory
        assert all(p.dtype == torch.float32 for p in b.parameters())
    lines = [r for r in caplog.records if r.name == "ipadapter_train.models.single_file" and "ignored" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    message = lines[0].getMessage()
    assert path.name in message and all(w in message for w in words), message
    assert len(message) < 400  # a summary, not a list of a thousand names


def test_unknown_extra_weight_is_ignored_with_a_warning(micro_file, tmp_path, caplog):
    micro, tensors = micro_file
    path = tmp_path / "extra.safetensors"
    save_file(dict(tensors, **{P + "input_blocks.1.1.extra_norm.weight": torch.zeros(32)}), path)
    with caplog.at_level(logging.INFO, logger="ipadapter_train.models.single_file"):
        back = load_sd15(path)
    _states_equal(micro.unet, back.unet, cast=torch.float16)
    lines = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "ignored 1 entry the SD1.5" in lines[0].getMessage() and "extra_norm.weight" in lines[0].getMessage()


def test_plain_checkpoint_logs_nothing_ignored(micro_file, tmp_path, caplog):
    path = tmp_path / "plain.safetensors"
    save_file(micro_file[1], path)
    with caplog.at_level(logging.INFO, logger="ipadapter_train.models.single_file"):
        load_sd15(path)
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


def test_summary_of_many_keys_is_short():
    keys = [f"model_ema.w{i}" for i in range(900)] + list(_SCHEDULE) + [f"extra{i}.x" for i in range(10)]
    text = L.summarize_keys(keys)
    assert text.startswith("12 top-level tensors (alphas_cumprod, alphas_cumprod_prev, ...)")
    assert "extra0.x" in text and "model_ema.* (900)" not in text and text.endswith("and 6 more")
    assert L.summarize_keys(keys, limit=20).endswith("model_ema.* (900)")


def test_missing_needed_weight_is_refused(micro_file, tmp_path):
    lacking = dict(micro_file[1])
    del lacking[L.VAE_PREFIX + "decoder.conv_out.bias"]
    save_file(lacking, tmp_path / "lacking.safetensors")
    with pytest.raises(IPAdapterError, match=r"lacking\.safetensors lacks 1 weights an SD1\.5 checkpoint needs "
                                             r"\(for example first_stage_model\.decoder\.conv_out\.bias\): the file "
                                             r"is incomplete or not an SD1\.5 checkpoint; download it again"):
        load_sd15(tmp_path / "lacking.safetensors")


def test_wrongly_shaped_needed_weight_is_refused(micro_file, tmp_path):
    key = P + "input_blocks.1.0.in_layers.2.bias"
    wrong = dict(micro_file[1], **{key: torch.zeros(31).half()})
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(IPAdapterError, match=rf"wrong\.safetensors has {re.escape(key)} of shape \(31,\) where "
                                             r"\(32,\) was expected: the file is damaged or not an SD1\.5"):
        load_sd15(tmp_path / "wrong.safetensors")
    # a wrongly shaped extra that nothing uses is no reason to refuse
    save_file(dict(micro_file[1], **{_T + "text_projection.weight": torch.zeros(3)}), tmp_path / "odd.safetensors")
    load_sd15(tmp_path / "odd.safetensors")


# ------------------------------------------------------------------ bad input

def test_sdxl_file_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({P + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3), P + "label_emb.0.0.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(IPAdapterError, match=r"sdxl\.safetensors is an SDXL"):
        load_sd15(path)


def test_clip_vision_file_given_as_sd15(tiny_files):
    path = tiny_files["clip_vision"]
    with pytest.raises(IPAdapterError, match=rf"{path.name} is a CLIP vision model, not a Stable Diffusion"):
        load_sd15(path)


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.ckpt", "garbage.pt"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 this is not a model " * 50)
    with pytest.raises(IPAdapterError, match=name.replace(".", r"\.")):
        load_sd15(path)


def test_truncated_safetensors(tiny_files, tmp_path):
    src = tiny_files["clip_vision"]
    path = tmp_path / "cut.safetensors"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(IPAdapterError, match=r"cut\.safetensors"):
        load_sd15(path)


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(IPAdapterError, match=r"nothing-here\.safetensors does not exist"):
        load_sd15(tmp_path / "nothing-here.safetensors")
    (tmp_path / "model.txt").write_text("hello")
    with pytest.raises(IPAdapterError, match=r"model\.txt has an unsupported extension"):
        load_sd15(tmp_path / "model.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IPAdapterError, match=r"folder is a folder without model_index\.json"):
        load_sd15(tmp_path / "folder")


class _RunsCode:
    """Pickles to a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_ckpt_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": _RunsCode(marker)}}, path)
    with pytest.raises(IPAdapterError, match=r"evil\.ckpt contains Python objects .* refused"):
        load_sd15(path)
    assert not marker.exists()
    # control: the payload is real, an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_raw_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"model.diffusion_model.x": _RunsCode(marker)}))
    with pytest.raises(IPAdapterError, match=r"raw\.pt is not a readable PyTorch checkpoint"):
        load_sd15(path)
    assert not marker.exists()
