"""CLIP vision: files and folders, config read from shapes, encoding, dropped-image features, bad input."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ipadapter_train.models.clip_vision import (build_clip_vision, encode_images, image_processor, infer_clip_vision_config,
                                         load_clip_vision, preset_config, save_clip_vision, zero_image_features)
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.storage.weights_io import WeightFile

pytestmark = pytest.mark.unit

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "ipadapter_train", "assets", "samples")


@pytest.fixture(scope="module")
def tiny():
    return build_clip_vision("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    return save_clip_vision(tiny, tmp_path_factory.mktemp("cv") / "clip-vision-tiny.safetensors")


def _equal(a, b, cast=None):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        x = sa[k] if cast is None or not sa[k].is_floating_point() else sa[k].to(cast).to(sb[k].dtype)
        assert torch.equal(x, sb[k]), k


def _tensors(path):
    with WeightFile(path) as wf:
        return {k: wf.take(k) for k in list(wf.shapes)}


def test_file_round_trip_infers_the_config(tiny, tiny_file):
    tensors = _tensors(tiny_file)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert "visual_projection.weight" in tensors and not any(k.endswith("position_ids") for k in tensors)
    model = load_clip_vision(tiny_file)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "projection_dim",
                "patch_size", "image_size", "hidden_act"):
        assert getattr(model.config, key) == getattr(tiny.config, key), key
    _equal(tiny, model, cast=torch.float16)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    half = load_clip_vision(tiny_file, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_transformers_folder(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "cv")
    model = load_clip_vision(tmp_path / "cv")
    _equal(tiny, model)


def test_full_clip_model_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                vocab_size=100, max_position_embeddings=16)
    vision = preset_config("tiny").to_dict()
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    clip.save_pretrained(tmp_path / "clip")
    model = load_clip_vision(tmp_path / "clip")
    assert model.config.projection_dim == 32 and model.config.hidden_size == 64
    state = model.state_dict()
    for k, v in clip.state_dict().items():
        if k.startswith(("vision_model.", "visual_projection.")):
            assert torch.equal(v, state[k]), k


def _meta_shapes(preset):
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):  # full-size shapes, no memory
        model = CLIPVisionModelWithProjection(preset_config(preset))
    return model.state_dict()


@pytest.mark.parametrize("preset, n, hidden, layers, mlp, proj, heads, act", [
    ("vit-l", 392, 1024, 24, 4096, 768, 16, "quick_gelu"),
    ("vit-h", 520, 1280, 32, 5120, 1024, 16, "gelu"),
])
def test_infer_config_on_full_size_shapes(preset, n, hidden, layers, mlp, proj, heads, act):
    state = _meta_shapes(preset)
    assert len(state) == n and all(v.is_meta for v in state.values())
    for sd in (state, {k: tuple(v.shape) for k, v in state.items()}):  # tensors or bare shapes
        cfg = infer_clip_vision_config(sd)
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.projection_dim) == (hidden, layers, mlp, proj)
        assert (cfg.num_attention_heads, cfg.hidden_act, cfg.patch_size, cfg.image_size) == (heads, act, 14, 224)
        assert cfg.layer_norm_eps == 1e-5


def test_infer_config_heads_and_image_size():
    base = {k: tuple(v.shape) for k, v in _meta_shapes("tiny").items()}

    def with_width(width, positions=257, patch=14):
        sd = dict(base)
        sd["vision_model.embeddings.patch_embedding.weight"] = (width, 3, patch, patch)
        sd["vision_model.embeddings.position_embedding.weight"] = (positions, width)
        return infer_clip_vision_config(sd)

    assert with_width(768).num_attention_heads == 12 and with_width(768).hidden_act == "quick_gelu"
    assert with_width(1664).num_attention_heads == 16 and with_width(1664).hidden_act == "gelu"
    assert with_width(512).num_attention_heads == 8
    assert with_width(1024, positions=577).image_size == 336
    with pytest.raises(IPAdapterError, match="not 1 \\+ a square grid"):
        with_width(1024, positions=300)


def test_comfyui_file_with_position_ids_loads(tiny, tmp_path):
    tensors = _tensors(save_clip_vision(tiny, tmp_path / "a.safetensors"))
    tensors["vision_model.embeddings.position_ids"] = torch.arange(257).unsqueeze(0)
    save_file(tensors, tmp_path / "b.safetensors")
    _equal(tiny, load_clip_vision(tmp_path / "b.safetensors"), cast=torch.float16)


def test_missing_and_unexpected_keys_are_errors(tiny_file, tmp_path):
    tensors = _tensors(tiny_file)
    lacking = {k: v for k, v in tensors.items() if k != "vision_model.post_layernorm.bias"}
    save_file(lacking, tmp_path / "lacking.safetensors")
    with pytest.raises(IPAdapterError, match=r"lacking\.safetensors does not match .* 1 missing"):
        load_clip_vision(tmp_path / "lacking.safetensors")
    extra = dict(tensors, **{"vision_model.extra_head.weight": torch.zeros(2)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(IPAdapterError, match=r"extra\.safetensors does not match .* 1 unexpected"):
        load_clip_vision(tmp_path / "extra.safetensors")
    no_proj = {k: v for k, v in tensors.items() if k != "visual_projection.weight"}
    save_file(no_proj, tmp_path / "noproj.safetensors")
    with pytest.raises(IPAdapterError, match=r"noproj\.safetensors has no visual_projection"):
        load_clip_vision(tmp_path / "noproj.safetensors")


def test_sd_checkpoint_given_as_clip_vision(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)}, path)
    with pytest.raises(IPAdapterError, match=r"sd15\.safetensors is a Stable Diffusion checkpoint"):
        load_clip_vision(path)


def test_bad_files(tmp_path, tiny_file):
    with pytest.raises(IPAdapterError, match=r"absent\.safetensors does not exist"):
        load_clip_vision(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 1000)
    with pytest.raises(IPAdapterError, match=r"junk\.safetensors is not a readable"):
        load_clip_vision(tmp_path / "junk.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(tiny_file.read_bytes()[:5000])
    with pytest.raises(IPAdapterError, match=r"cut\.safetensors"):
        load_clip_vision(tmp_path / "cut.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IPAdapterError, match=r"empty has no config\.json"):
        load_clip_vision(tmp_path / "empty")


def test_pickled_code_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch '{tmp_path / 'pwned'}'",))

    torch.save({"vision_model.x": RunsCode()}, tmp_path / "evil.bin")
    with pytest.raises(IPAdapterError, match=r"evil\.bin contains Python objects"):
        load_clip_vision(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("size", [224, 336])
def test_image_processor_resizes_the_short_side_and_keeps_the_centre(size):
    # a wide picture: blue in the middle square, red bands left and right that the centre crop drops
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (100, 0, 200, 100))
    pixels = image_processor(size)(images=[wide], return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, size, size)
    red, _, blue = pixels[0].mean(dim=(1, 2)).tolist()
    assert blue > 1 > -1 > red  # normalised: blue well above the mean, red well below


def test_encode_images_and_dropped_image_features(tiny):
    images = [Image.open(os.path.join(SAMPLES, name)) for name in ("chelsea.jpg", "coffee.jpg")]
    embeds, hidden = encode_images(tiny, images, device="cpu", dtype=torch.float32)
    assert embeds.shape == (2, 32) and hidden.shape == (2, 257, 64)
    assert torch.isfinite(embeds).all() and not torch.allclose(embeds[0], embeds[1])
    base = zero_image_features(tiny, "base", batch_size=2)
    assert base.shape == (2, 32) and not base.any()
    plus = zero_image_features(tiny, "plus", batch_size=2)
    with torch.no_grad():
        ref = tiny(pixel_values=torch.zeros(1, 3, 224, 224), output_hidden_states=True).hidden_states[-2]
    assert plus.shape == (2, 257, 64) and torch.allclose(plus[1:], ref)
    # zeros after normalisation (tencent/diffusers) are not the encoding of a black image (IPAdapter_plus)
    _, black = encode_images(tiny, Image.new("RGB", (224, 224)))
    assert not torch.allclose(black, ref)
    with pytest.raises(IPAdapterError, match="Unknown adapter kind"):
        zero_image_features(tiny, "full")


def test_unknown_preset():
    with pytest.raises(IPAdapterError, match="Unknown CLIP vision preset"):
        build_clip_vision("vit-g")
