"""The adapter file: key table, save/load/inspect round trips, diffusers loads it, and it fails safely."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from ipadapter_train.storage import weights_io
from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.adapter.convert import default_unet_config
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.adapter.fileformat import inspect_adapter, load_adapter, save_adapter
from ipadapter_train.layout import adapter_layers
from ipadapter_train.storage.weights_io import atomic_write_bytes, atomic_write_text, safe_torch_load

pytestmark = pytest.mark.unit

ASSETS = Path(__file__).resolve().parents[1] / "ipadapter_train" / "assets" / "sd15"

# The facts table: (n, diffusers attention path, hidden, ComfyUI attn2 patch key).
GOLDEN_SD15 = [
    (1, "down_blocks.0.attentions.0", 320, ("input", 1, 0)),
    (3, "down_blocks.0.attentions.1", 320, ("input", 2, 0)),
    (5, "down_blocks.1.attentions.0", 640, ("input", 4, 0)),
    (7, "down_blocks.1.attentions.1", 640, ("input", 5, 0)),
    (9, "down_blocks.2.attentions.0", 1280, ("input", 7, 0)),
    (11, "down_blocks.2.attentions.1", 1280, ("input", 8, 0)),
    (13, "up_blocks.1.attentions.0", 1280, ("output", 3, 0)),
    (15, "up_blocks.1.attentions.1", 1280, ("output", 4, 0)),
    (17, "up_blocks.1.attentions.2", 1280, ("output", 5, 0)),
    (19, "up_blocks.2.attentions.0", 640, ("output", 6, 0)),
    (21, "up_blocks.2.attentions.1", 640, ("output", 7, 0)),
    (23, "up_blocks.2.attentions.2", 640, ("output", 8, 0)),
    (25, "up_blocks.3.attentions.0", 320, ("output", 9, 0)),
    (27, "up_blocks.3.attentions.1", 320, ("output", 10, 0)),
    (29, "up_blocks.3.attentions.2", 320, ("output", 11, 0)),
    (31, "mid_block.attentions.0", 1280, ("middle", 0, 0)),
]

TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=2,
                 cross_attention_dim=32, sample_size=8, in_channels=4, out_channels=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@pytest.fixture(scope="module")
def sd15_layers():
    return adapter_layers(json.loads((ASSETS / "unet" / "config.json").read_text()))


def make_adapter(variant: str, clip_dim: int, layers, cross_dim: int = 768) -> IPAdapter:
    torch.manual_seed(0)
    return IPAdapter.new(variant, clip_dim, cross_dim, layers)


# ---------------------------------------------------------------- key table

def test_sd15_key_table_is_the_golden_one(sd15_layers):
    got = [(layer.index, layer.name, layer.hidden, layer.comfy_key) for layer in sd15_layers]
    want = [(n, f"{path}.transformer_blocks.0.attn2", hidden, key) for n, path, hidden, key in GOLDEN_SD15]
    assert got == want


def test_sd15_key_table_matches_diffusers_processor_order(sd15_layers):
    # Full-size SD1.5 UNet on the meta device: diffusers' own enumeration, no memory allocated.
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(default_unet_config())
    names = list(unet.attn_processors)
    assert len(names) == 32
    for layer in sd15_layers:
        assert names[layer.index] == layer.name + ".processor"
        assert unet.get_submodule(layer.name).to_q.out_features == layer.hidden
    assert all(name.endswith("attn1.processor") for name in names[0::2])


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("variant,clip_dim,tokens", [("base", 768, 4), ("base", 1024, 4), ("plus", 1280, 16)])
def test_save_load_inspect_round_trip(tmp_path, sd15_layers, variant, clip_dim, tokens):
    adapter = make_adapter(variant, clip_dim, sd15_layers)
    state = adapter.state_dict()
    path = save_adapter(state, tmp_path / "adapter.safetensors")
    loaded, meta = load_adapter(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == torch.float16
        assert torch.equal(loaded[key], value.half()), key
    assert meta["format"] == "pt" and meta["variant"] == variant
    assert (meta["tokens"], meta["clip_dim"], meta["cross_dim"], meta["num_layers"]) == (
        str(tokens), str(clip_dim), "768", "16")
    assert meta["family"] == "sd15" and meta.get("resampler_dim") == ("768" if variant == "plus" else None)

    info = inspect_adapter(path)
    json.dumps(info)
    assert info["file"] == str(path) and info["size_bytes"] == path.stat().st_size
    assert (info["format"], info["variant"], info["tokens"], info["clip_dim"], info["cross_dim"]) == (
        "safetensors", variant, tokens, clip_dim, 768)
    assert info["num_layers"] == 16 and info["layer_indices"] == list(range(1, 32, 2))
    assert info["family"] == "sd15" and info["summary"].startswith(f"an SD1.5 {variant} adapter ({tokens} tokens")
    assert info["parameters"] == sum(v.numel() for v in state.values())
    assert info["dtype"] == "float16"


def test_sd15_base_parameter_count_matches_the_paper(sd15_layers):
    # Facts: to_k_ip/to_v_ip about 19.2M, ViT-L projection 2.4M: "about 22M" trainable.
    params = sum(v.numel() for v in make_adapter("base", 768, sd15_layers).state_dict().values())
    assert 21.4e6 < params < 21.6e6


def test_metadata_round_trip(tmp_path, sd15_layers):
    config = {"lr": 1e-4, "batch_size": 4, "variant": "base"}
    path = save_adapter(make_adapter("base", 768, sd15_layers).state_dict(), tmp_path / "a.safetensors",
                        metadata={"image_encoder": "openai/clip-vit-large-patch14", "base_model": "sd15",
                                  "steps": 500, "training_config": config, "variant": "wrong"})
    _, meta = load_adapter(path)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["image_encoder"] == "openai/clip-vit-large-patch14" and meta["base_model"] == "sd15"
    assert meta["steps"] == "500" and json.loads(meta["training_config"]) == config
    assert meta["variant"] == "base"  # derived from the tensors, not the caller
    assert meta["ipadapter_train.version"]
    assert inspect_adapter(path)["metadata"]["training_config"] == config


def test_dtype_none_keeps_float32(tmp_path, sd15_layers):
    state = make_adapter("base", 768, sd15_layers).state_dict()
    loaded, _ = load_adapter(save_adapter(state, tmp_path / "a.safetensors", dtype=None))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_bin_round_trip_is_tencent_layout(tmp_path, sd15_layers):
    state = make_adapter("plus", 1280, sd15_layers).state_dict()
    path = save_adapter(state, tmp_path / "ip-adapter.bin", metadata={"steps": 1})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"image_proj", "ip_adapter"}
    assert set(raw["ip_adapter"]) == {f"{n}.to_{kv}_ip.weight" for n in range(1, 32, 2) for kv in "kv"}
    assert "latents" in raw["image_proj"]
    loaded, meta = load_adapter(path)
    assert meta == {} and set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v.half()) for k, v in state.items())
    assert inspect_adapter(path)["format"] == "bin"


# ---------------------------------------------------------------- diffusers loads the file

def _tiny_pipeline():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=1, vocab_size=49408))
    tokenizer = CLIPTokenizer.from_pretrained(ASSETS / "tokenizer")
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)


@pytest.mark.parametrize("variant,suffix", [("base", ".safetensors"), ("plus", ".safetensors"), ("base", ".bin")])
def test_diffusers_load_ip_adapter_accepts_the_file(tmp_path, variant, suffix):
    pipe = _tiny_pipeline()
    layers = adapter_layers(pipe.unet.config)
    assert [layer.index for layer in layers] == [1, 3, 5, 7]
    state = make_adapter(variant, 48, layers, cross_dim=32).state_dict()
    path = save_adapter(state, tmp_path / f"tiny{suffix}")
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder=None)

    procs = pipe.unet.attn_processors
    for layer in layers:
        proc = procs[layer.name + ".processor"]
        assert torch.equal(proc.to_k_ip[0].weight, state[f"ip_adapter.{layer.index}.to_k_ip.weight"].half().float())
        assert torch.equal(proc.to_v_ip[0].weight, state[f"ip_adapter.{layer.index}.to_v_ip.weight"].half().float())
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    if variant == "base":
        assert torch.equal(proj.image_embeds.weight, state["image_proj.proj.weight"].half().float())
    else:
        assert torch.equal(proj.latents, state["image_proj.latents"].half().float())
        assert proj.proj_in.weight.shape == state["image_proj.proj_in.weight"].shape


# ---------------------------------------------------------------- failing safely

def test_failed_write_leaves_existing_file_untouched(tmp_path, sd15_layers, monkeypatch):
    state = make_adapter("base", 768, sd15_layers).state_dict()
    path = save_adapter(state, tmp_path / "adapter.safetensors")
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(weights_io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_adapter({k: v * 2 for k, v in state.items()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]


def test_failed_bin_write_leaves_no_temp_file(tmp_path, sd15_layers, monkeypatch):
    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        save_adapter(make_adapter("base", 768, sd15_layers).state_dict(), tmp_path / "a.bin")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_helpers(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, '{"ok": true}')
    assert json.loads(target.read_text()) == {"ok": True}
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["report.json"]
    with pytest.raises(IPAdapterError, match="folder"):
        atomic_write_bytes(tmp_path, b"x")


@pytest.mark.parametrize("keep", [3, 20, 0.5])
def test_truncated_safetensors_is_refused_with_its_name(tmp_path, sd15_layers, keep):
    path = save_adapter(make_adapter("base", 768, sd15_layers).state_dict(), tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(IPAdapterError, match="cut.safetensors") as err:
        load_adapter(path)
    assert "truncated" in str(err.value)


class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.skipif(os.name != "posix", reason="the payload uses touch")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    obj = {"image_proj": {"proj.weight": _Payload(marker)}, "ip_adapter": {}}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    for read in (load_adapter, safe_torch_load, inspect_adapter):
        with pytest.raises(IPAdapterError, match="evil.bin") as err:
            read(path)
        assert "pickled code" in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()
    # Control: the payload is live, so the refusal above is what kept it from running.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_stable_diffusion_checkpoint_is_named_as_such(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(2)}, str(path))
    with pytest.raises(IPAdapterError, match="v1-5-pruned.safetensors.*Stable Diffusion checkpoint"):
        load_adapter(path)


def test_clip_vision_file_is_named_as_such(tmp_path):
    path = tmp_path / "clip.bin"
    torch.save({"vision_model.embeddings.patch_embedding.weight": torch.zeros(2)}, path)
    with pytest.raises(IPAdapterError, match="clip.bin.*CLIP vision encoder"):
        load_adapter(path)


def test_missing_file_folder_and_bad_extension(tmp_path, sd15_layers):
    with pytest.raises(IPAdapterError, match="nothing.safetensors.*does not exist"):
        load_adapter(tmp_path / "nothing.safetensors")
    with pytest.raises(IPAdapterError, match="folder"):
        load_adapter(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(IPAdapterError, match="a.txt"):
        load_adapter(tmp_path / "a.txt")
    state = make_adapter("base", 768, sd15_layers).state_dict()
    with pytest.raises(IPAdapterError, match=r"\.safetensors \(recommended\) or \.bin"):
        save_adapter(state, tmp_path / "a.ckpt")
    with pytest.raises(IPAdapterError, match="unet.x"):
        save_adapter({**state, "unet.x": torch.zeros(1)}, tmp_path / "a.safetensors")
    with pytest.raises(IPAdapterError):
        save_adapter({k: v for k, v in state.items() if k.startswith("ip_adapter.")}, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


# ---------------------------------------------------------------- damaged files (issue 12, item 5)

def _without(*keys):
    return lambda sd: {k: v for k, v in sd.items() if k not in keys}


def _with(key, value):
    return lambda sd: {**sd, key: value(sd[key]) if callable(value) else value}


def _poisoned(key, bad):
    def damage(sd):
        t = sd[key].clone()
        t.view(-1)[5] = bad
        return {**sd, key: t}
    return damage


# (name, variant, damage of the flat state dict, fragment of the one-sentence refusal). SD1.5 layers,
# base reading 1024-d embeddings, plus reading 1280-d hidden states (the public files' encoders).
DAMAGES = [
    ("to_v_ip missing", "base", _without("ip_adapter.3.to_v_ip.weight"),
     "ip_adapter.3.to_v_ip.weight is missing; the file has 31 of the 32 layer weights of an SD1.5 base adapter"),
    ("to_k_ip missing", "base", _without("ip_adapter.3.to_k_ip.weight"),
     "ip_adapter.3.to_k_ip.weight is missing; the file has 31 of the 32 layer weights"),
    ("a whole layer missing", "base", _without("ip_adapter.5.to_k_ip.weight", "ip_adapter.5.to_v_ip.weight"),
     "ip_adapter.5.to_k_ip.weight and 1 more are missing; the file has 30 of the 32 layer weights"),
    ("the last layer missing", "base", _without("ip_adapter.31.to_k_ip.weight", "ip_adapter.31.to_v_ip.weight"),
     "its metadata says 16 layers but the file has weights for 15"),
    ("image_proj.norm missing", "base", _without("image_proj.norm.bias"),
     "image_proj.norm.bias is missing; the file has 3 of the 4 image_proj weights of an SD1.5 base adapter"),
    ("image_proj.proj for another encoder", "base", _with("image_proj.proj.weight", torch.zeros(3072, 768)),
     r"image_proj.proj.weight is [3072, 768] but an SD1.5 base adapter (4 tokens of 768-d, 1024-d image "
     r"features, 16 layers), as its metadata says, needs [3072, 1024]"),
    ("image_proj.proj rows", "base", _with("image_proj.proj.weight", torch.zeros(3000, 1024)),
     "image_proj.proj.weight is [3000, 1024] but image_proj.proj.bias is [3072]"),
    ("image_proj.norm width", "base", _with("image_proj.norm.weight", torch.ones(700)),
     "image_proj.norm.weight is [700] but an SD1.5 base adapter (4 tokens of 768-d"),
    ("to_k_ip rows", "base", _with("ip_adapter.3.to_k_ip.weight", torch.zeros(330, 768)),
     "ip_adapter.3.to_k_ip.weight is [330, 768] but ip_adapter.3.to_v_ip.weight is [320, 768]"),
    ("to_k_ip reads another width", "base", _with("ip_adapter.3.to_k_ip.weight", torch.zeros(320, 700)),
     "ip_adapter.3.to_k_ip.weight is [320, 700] but ip_adapter.3.to_v_ip.weight is [320, 768]"),
    ("a layer reads another width", "base",
     lambda sd: {**sd, "ip_adapter.3.to_k_ip.weight": torch.zeros(320, 700),
                 "ip_adapter.3.to_v_ip.weight": torch.zeros(320, 700)},
     "ip_adapter.3.to_k_ip.weight is [320, 700] but an SD1.5 base adapter (4 tokens of 768-d, 1024-d image "
     "features, 16 layers) needs [320, 768]"),
    ("a layer number beyond any UNet", "base", _with("ip_adapter.999999999.to_k_ip.weight", torch.zeros(320, 768)),
     "has weights for ip_adapter.999999999, beyond any UNet's layer numbering"),
    ("a key of another kind", "base", _with("ip_adapter.3.to_q_ip.weight", torch.zeros(320, 768)),
     "ip_adapter.3.to_q_ip.weight, which is not part of an SD1.5 base adapter"),
    ("integer weights", "base", _with("image_proj.norm.bias", torch.zeros(768, dtype=torch.int64)),
     "image_proj.norm.bias holds int64 values, not floating-point weights"),
    ("NaN weights", "base", _poisoned("ip_adapter.7.to_v_ip.weight", float("nan")),
     "non-finite weights (NaN or infinity) in ip_adapter.7.to_v_ip.weight"),
    ("infinite weights", "plus", _poisoned("image_proj.proj_out.weight", float("inf")),
     "non-finite weights (NaN or infinity) in image_proj.proj_out.weight"),
    ("Resampler latents width", "plus", _with("image_proj.latents", torch.zeros(1, 16, 700)),
     "image_proj.latents is [1, 16, 700] but an SD1.5 plus adapter (16 tokens of 768-d, 1280-d image features, "
     "16 layers) needs [1, 16, 768]"),
    ("Resampler layer missing", "plus", _without("image_proj.layers.2.0.to_kv.weight"),
     "image_proj.layers.2.0.to_kv.weight is missing; the file has 50 of the 51 image_proj weights of an SD1.5 plus"),
    ("Resampler proj_in for another encoder", "plus", _with("image_proj.proj_in.weight", torch.zeros(768, 1024)),
     "image_proj.proj_in.weight is [768, 1024] but an SD1.5 plus adapter (16 tokens of 768-d, 1280-d image "
     "features, 16 layers), as its metadata says, needs [768, 1280]"),
]


def damaged_adapter(folder: Path, layers, variant: str, damage, name: str = "damaged.safetensors") -> Path:
    """An adapter saved by this package (so with its metadata), then damaged as `damage` says."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    clean = save_adapter(make_adapter(variant, 1024 if variant == "base" else 1280, layers).state_dict(),
                         folder / f"clean-{variant}.safetensors", dtype=torch.float32)
    with safe_open(str(clean), framework="pt") as handle:
        metadata = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    path = folder / name
    save_file({k: v.contiguous() for k, v in damage(state).items()}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("variant,damage,fragment", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_damaged_adapter_is_refused_naming_what_is_wrong(tmp_path, sd15_layers, variant, damage, fragment):
    path = damaged_adapter(tmp_path, sd15_layers, variant, damage)
    for read in (load_adapter, inspect_adapter):
        with pytest.raises(IPAdapterError) as err:
            read(path)
        message = str(err.value)
        assert fragment in message and str(path) in message, message
        assert "\n" not in message


def test_damage_is_found_without_metadata_too(tmp_path, sd15_layers):
    # a public file has no metadata of this package: the tensors alone must show the damage
    from safetensors.torch import load_file, save_file

    path = damaged_adapter(tmp_path, sd15_layers, "base", _without("ip_adapter.3.to_v_ip.weight"))
    save_file(load_file(path), str(path))
    with pytest.raises(IPAdapterError, match=r"ip_adapter\.3\.to_v_ip\.weight is missing"):
        load_adapter(path)
    clean = tmp_path / "clean-base.safetensors"
    save_file(load_file(clean), str(clean))
    assert inspect_adapter(clean)["num_layers"] == 16  # and a sound file without metadata still loads


def test_damaged_tencent_bin_is_refused(tmp_path, sd15_layers):
    state = make_adapter("base", 1024, sd15_layers).state_dict()
    state["ip_adapter.9.to_k_ip.weight"] = torch.full_like(state["ip_adapter.9.to_k_ip.weight"], float("nan"))
    path = save_adapter(state, tmp_path / "a.bin", dtype=None)
    with pytest.raises(IPAdapterError, match=r"non-finite weights .* ip_adapter\.9\.to_k_ip\.weight"):
        load_adapter(path)
