"""SDXL adapter files: the 70-layer key table, the public files' shapes, plus adapters' 1280-wide Resampler,
the family in metadata and `inspect`, and adapters of one family refused for a model of the other.

The public files (ip-adapter_sdxl, ip-adapter_sdxl_vit-h, ip-adapter-plus_sdxl_vit-h) hold 340M weights,
so their exact key sets and shapes are checked on the meta device (no memory); files written to disk
keep SDXL's 70 layers and 2048-d tokens with narrow layer widths.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run_cli
from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.adapter.spec import AdapterSpec
from ipadapter_train.adapter.check import check_adapter_state, describe, expected_shapes
from ipadapter_train.training.adapter_init import load_adapter_module
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.families import SD15, SDXL
from ipadapter_train.adapter.fileformat import inspect_adapter, load_adapter, save_adapter
from ipadapter_train.layout import AdapterLayer
from ipadapter_train.adapter.resampler import Resampler

pytestmark = pytest.mark.unit

# The facts: the cross-attention layers in diffusers' attn_processors order (mid block last), per block:
# (block, layers, width). File indices are the odd numbers 1 ... 139 in this order.
SDXL_BLOCKS = [("down_blocks.1", 4, 640), ("down_blocks.2", 20, 1280), ("up_blocks.0", 30, 1280),
               ("up_blocks.1", 6, 640), ("mid_block", 10, 1280)]
GOLDEN_SDXL = [(2 * i + 1, block, width) for i, (block, width) in
               enumerate((block, width) for block, count, width in SDXL_BLOCKS for _ in range(count))]
CROSS = 2048


# ---------------------------------------------------------------- the key table

def test_sdxl_key_table_is_the_facts_one():
    layers = SDXL.adapter_layers()
    assert [(layer.index, layer.name.split(".attentions")[0], layer.hidden) for layer in layers] == GOLDEN_SDXL
    assert [layer.index for layer in layers] == list(range(1, 140, 2))


def test_sdxl_key_table_matches_diffusers_processor_order():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():  # the full SDXL UNet, no memory
        unet = UNet2DConditionModel.from_config(SDXL.config("unet/config.json"))
    names = list(unet.attn_processors)
    assert len(names) == 140
    for layer in SDXL.adapter_layers():
        assert names[layer.index] == layer.name + ".processor"
        assert unet.get_submodule(layer.name).to_q.out_features == layer.hidden
        assert unet.get_submodule(layer.name).to_k.in_features == CROSS


# ---------------------------------------------------------------- the public files' shapes

def public_shapes(variant: str, encoder_width: int) -> dict[str, tuple[int, ...]]:
    """Every key of a public SDXL file with its shape, written from the facts (not from our module)."""
    shapes = {f"ip_adapter.{n}.to_{kv}_ip.weight": (width, CROSS) for n, _, width in GOLDEN_SDXL for kv in "kv"}
    if variant == "base":  # Linear(encoder -> 4 x 2048) + LayerNorm(2048)
        shapes |= {"image_proj.proj.weight": (4 * CROSS, encoder_width), "image_proj.proj.bias": (4 * CROSS,),
                   "image_proj.norm.weight": (CROSS,), "image_proj.norm.bias": (CROSS,)}
        return shapes
    dim, ff = 1280, 4 * 1280  # Resampler: dim 1280, 20 heads of 64, 16 queries, depth 4, ff_mult 4
    shapes |= {"image_proj.latents": (1, 16, dim), "image_proj.proj_in.weight": (dim, encoder_width),
               "image_proj.proj_in.bias": (dim,), "image_proj.proj_out.weight": (CROSS, dim),
               "image_proj.proj_out.bias": (CROSS,), "image_proj.norm_out.weight": (CROSS,),
               "image_proj.norm_out.bias": (CROSS,)}
    for i in range(4):
        p = f"image_proj.layers.{i}"
        shapes |= {f"{p}.0.norm1.weight": (dim,), f"{p}.0.norm1.bias": (dim,), f"{p}.0.norm2.weight": (dim,),
                   f"{p}.0.norm2.bias": (dim,), f"{p}.0.to_q.weight": (dim, dim), f"{p}.0.to_kv.weight": (2 * dim, dim),
                   f"{p}.0.to_out.weight": (dim, dim), f"{p}.1.0.weight": (dim,), f"{p}.1.0.bias": (dim,),
                   f"{p}.1.1.weight": (ff, dim), f"{p}.1.3.weight": (dim, ff)}
    return shapes


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, shape in shapes.items()}


PUBLIC = [  # (file, variant, encoder width the adapter reads)
    ("ip-adapter_sdxl", "base", 1280),  # OpenCLIP ViT-bigG image embedding
    ("ip-adapter_sdxl_vit-h", "base", 1024),  # ViT-H image embedding
    ("ip-adapter-plus_sdxl_vit-h", "plus", 1280),  # ViT-H hidden states
    ("plus with a ViT-bigG encoder", "plus", 1664),  # bigG hidden states
]


@pytest.mark.parametrize("name,variant,width", PUBLIC, ids=[p[0] for p in PUBLIC])
def test_public_sdxl_file_shapes_are_accepted(name, variant, width):
    shapes = public_shapes(variant, width)
    state = meta_state(shapes)
    spec = check_adapter_state(state, name, values=False)
    layers = tuple((n, hidden) for n, _, hidden in GOLDEN_SDXL)
    assert spec == AdapterSpec(variant, width, CROSS, 4 if variant == "base" else 16, layers,
                               1280 if variant == "plus" else None)
    assert spec.family is SDXL
    assert describe(spec).startswith(f"an SDXL {variant} adapter (")
    assert expected_shapes(spec) == shapes  # our module has exactly the public keys and shapes
    with torch.device("meta"):
        module = IPAdapter(spec)
    assert module.load_state_dict(state, strict=True, assign=True)  # no missing, no unexpected keys
    if variant == "plus":
        attention = module.image_proj.layers[0][0]
        assert (attention.heads, attention.dim_head) == (20, 64)
    # The SDXL key table is the one such an adapter fits, SD1.5's is not.
    spec.check_layers(SDXL.adapter_layers(), "SDXL")
    with pytest.raises(IPAdapterError, match="70 layers that do not fit SD1.5"):
        spec.check_layers(SD15.adapter_layers(), "SD1.5")


def test_damaged_sdxl_file_names_the_family():
    state = meta_state(public_shapes("plus", 1280))
    del state["ip_adapter.121.to_v_ip.weight"]
    with pytest.raises(IPAdapterError, match=r"ip_adapter\.121\.to_v_ip\.weight is missing; the file has 139 of "
                                             r"the 140 layer weights of an SDXL plus adapter"):
        check_adapter_state(state, "x.safetensors", values=False)
    state = meta_state(public_shapes("base", 1024))
    state["image_proj.norm.bias"] = torch.empty(700, device="meta")
    with pytest.raises(IPAdapterError, match=r"image_proj\.norm\.bias is \[700\] but an SDXL base adapter \(4 tokens "
                                             r"of 2048-d, 1024-d image features, 70 layers\) needs \[2048\]"):
        check_adapter_state(state, "x.safetensors", values=False)
    # SSD-1B-like: SDXL's width, fewer layers: the family is still named, with the count
    few = {k: v for k, v in meta_state(public_shapes("base", 1024)).items()
           if not k.startswith("ip_adapter.") or int(k.split(".")[1]) < 88}
    assert describe(check_adapter_state(few, "x", values=False)).startswith("a 44-layer SDXL base adapter (")


# ---------------------------------------------------------------- the Resampler

def test_new_plus_adapter_takes_its_family_resampler_width():
    sdxl = IPAdapter.new("plus", 1280, CROSS, [])
    assert sdxl.spec.resampler_dim == 1280 and sdxl.image_proj.latents.shape == (1, 16, 1280)
    assert sdxl.image_proj.layers[0][0].heads == 20 and sdxl.image_proj.norm_out.weight.shape == (CROSS,)
    sd15 = IPAdapter.new("plus", 1280, 768, [])
    assert sd15.spec.resampler_dim == 768 and sd15.image_proj.layers[0][0].heads == 12
    assert IPAdapter.new("plus", 32, 48, []).spec.resampler_dim == 768  # no family of that width: as before
    assert IPAdapter.new("plus", 64, 32, []).spec.resampler_dim == 64  # the learned world's (32-d context)
    narrow = IPAdapter.new("plus", 32, CROSS, [], resampler_dim=128)
    assert narrow.image_proj.layers[0][0].heads == 2 and narrow.image_proj.latents.shape == (1, 16, 128)
    assert IPAdapter.new("base", 1024, CROSS, []).spec.resampler_dim is None
    with pytest.raises(IPAdapterError, match="positive multiple of 64"):
        IPAdapter.new("plus", 32, CROSS, [], resampler_dim=100)
    with pytest.raises(IPAdapterError, match="base adapter has no Resampler"):
        AdapterSpec("base", 1024, CROSS, 4, (), 1280)


def test_sd15_plus_adapter_is_unchanged():
    # the same keys, shapes and numbers as the Resampler's SD1.5 defaults always gave
    torch.manual_seed(3)
    adapter = IPAdapter.new("plus", 1280, 768, SD15.adapter_layers())
    torch.manual_seed(3)
    before = Resampler(embedding_dim=1280, output_dim=768, num_queries=16).state_dict()
    ours = {k[len("image_proj."):]: v for k, v in adapter.state_dict().items() if k.startswith("image_proj.")}
    assert ours.keys() == before.keys() and all(torch.equal(ours[k], before[k]) for k in before)
    assert ours["latents"].shape == (1, 16, 768) and ours["layers.0.0.to_kv.weight"].shape == (1536, 768)


def test_sdxl_resampler_equals_diffusers_plus_projection():
    """Our SDXL Resampler, loaded through diffusers' own conversion, gives diffusers' output."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(0)
    ours = IPAdapter(AdapterSpec("plus", 1280, CROSS, 16, ())).image_proj.eval()  # the SDXL default width
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                cross_attention_dim=8, attention_head_dim=2, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    theirs = unet._convert_ip_adapter_image_proj_to_diffusers(state, low_cpu_mem_usage=False).eval()
    assert isinstance(theirs, IPAdapterPlusImageProjection)
    assert theirs.layers[0].attn.heads == 20
    hidden = torch.randn(2, 257, 1280)  # ViT-H/14 at 224 px: 256 patches and the class token
    with torch.no_grad():
        want, got = theirs(hidden), ours(hidden)
    assert got.shape == (2, 16, CROSS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- files on disk

def narrow_sdxl_layers() -> list[AdapterLayer]:
    """SDXL's 70 layers and indices with 1/80 of their widths (8 and 16): a file of megabytes, not gigabytes."""
    return [AdapterLayer(layer.index, layer.name, layer.hidden // 80, layer.comfy_key)
            for layer in SDXL.adapter_layers()]


def sdxl_file(folder: Path, variant: str, suffix: str = ".safetensors") -> tuple[Path, IPAdapter]:
    torch.manual_seed(2)
    adapter = IPAdapter.new(variant, 64, CROSS, narrow_sdxl_layers(),
                            resampler_dim=128 if variant == "plus" else None)
    return save_adapter(adapter.state_dict(), folder / f"sdxl-{variant}{suffix}", dtype=None), adapter


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_sdxl_file_round_trip_records_the_family(tmp_path, variant):
    path, adapter = sdxl_file(tmp_path, variant)
    _, meta = load_adapter(path)
    assert meta["family"] == "sdxl" and meta["cross_dim"] == "2048" and meta["num_layers"] == "70"
    assert meta.get("resampler_dim") == ("128" if variant == "plus" else None)

    loaded = load_adapter_module(path)  # what --init-adapter does
    assert loaded.spec == adapter.spec and loaded.spec.family is SDXL
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in adapter.state_dict().items())

    info = inspect_adapter(path)
    assert (info["family"], info["num_layers"], info["tokens"], info["clip_dim"], info["cross_dim"]) == (
        "sdxl", 70, 4 if variant == "base" else 16, 64, CROSS)
    assert info["layer_indices"] == list(range(1, 140, 2))
    assert info["summary"].startswith(f"an SDXL {variant} adapter (")
    assert info["resampler_dim"] == (128 if variant == "plus" else None)

    r = run_cli("inspect", str(path))
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["family"] == "sdxl" and shown["summary"] == info["summary"]


def test_public_file_without_metadata_gets_its_family_from_shapes(tmp_path):
    path, _ = sdxl_file(tmp_path, "plus")
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(path), str(bare))  # as the public files come: no metadata of ours
    assert load_adapter(bare)[1] == {}
    info = inspect_adapter(bare)
    assert info["family"] == "sdxl" and info["resampler_dim"] == 128 and info["metadata"] == {}
    bin_path, _ = sdxl_file(tmp_path, "base", ".bin")  # tencent's nested .bin has no metadata at all
    assert inspect_adapter(bin_path)["family"] == "sdxl"


def test_metadata_resampler_width_must_match_the_tensors(tmp_path):
    path, _ = sdxl_file(tmp_path, "plus")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    save_file(load_file(path), str(path), metadata={**meta, "resampler_dim": "192"})
    with pytest.raises(IPAdapterError, match=r"image_proj\.latents is \[1, 16, 128\] but an SDXL plus adapter \(16 "
                                             r"tokens of 2048-d, 64-d image features, 70 layers\), as its metadata "
                                             r"says, needs \[1, 16, 192\]"):
        load_adapter(path)


def test_resampler_width_that_is_no_whole_number_of_heads_is_refused(tmp_path):
    path, adapter = sdxl_file(tmp_path, "plus")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    save_file(load_file(path), str(path), metadata={**meta, "resampler_dim": "100"})
    with pytest.raises(IPAdapterError, match=r"damaged: its metadata says a Resampler 100 wide, which is not a "
                                             r"whole number of 64-d heads"):
        load_adapter(path)
    # every Resampler tensor 96 wide (one head of 96): not the official Resampler
    odd = Resampler(embedding_dim=64, output_dim=CROSS, dim=96, heads=1, dim_head=96).state_dict()
    state = {k: v for k, v in adapter.state_dict().items() if k.startswith("ip_adapter.")}
    state |= {f"image_proj.{k}": v for k, v in odd.items()}
    with pytest.raises(IPAdapterError, match=r"x has a Resampler \(image_proj\) 96 wide, which is not a whole "
                                             r"number of 64-d heads"):
        check_adapter_state(state, "x")


# ---------------------------------------------------------------- an adapter for another family

def spec_for(family, variant: str, clip_dim: int) -> AdapterSpec:
    return AdapterSpec(variant, clip_dim, family.cross_dim, 4 if variant == "base" else 16,
                       tuple((layer.index, layer.hidden) for layer in family.adapter_layers()))


@pytest.mark.parametrize("variant,clip_dim", [("base", 1024), ("plus", 1280)])
def test_sd15_adapter_for_an_sdxl_model_is_refused_naming_both(variant, clip_dim):
    spec = spec_for(SD15, variant, clip_dim)
    with pytest.raises(IPAdapterError) as err:
        spec.check_fits(clip_dim, "clip", SDXL.cross_dim, SDXL.adapter_layers(), "the UNet of sdxl.safetensors",
                        "my.safetensors")
    assert str(err.value) == (
        f"my.safetensors is an SD1.5 {variant} adapter (16 cross-attention layers) and is for a 768-d "
        "cross-attention model, but the UNet of sdxl.safetensors is SDXL (70 cross-attention layers, 2048-d): "
        "use an adapter trained for SDXL, or an SD1.5 model.")


@pytest.mark.parametrize("variant,clip_dim", [("base", 1280), ("plus", 1280)])
def test_sdxl_adapter_for_an_sd15_model_is_refused_naming_both(variant, clip_dim):
    spec = spec_for(SDXL, variant, clip_dim)
    with pytest.raises(IPAdapterError) as err:  # the encoder is wrong too: the family is what to fix first
        spec.check_fits(768, "clip", SD15.cross_dim, SD15.adapter_layers(), "the UNet of v1-5.safetensors",
                        "sdxl.safetensors")
    assert str(err.value) == (
        f"sdxl.safetensors is an SDXL {variant} adapter (70 cross-attention layers) and is for a 2048-d "
        "cross-attention model, but the UNet of v1-5.safetensors is SD1.5 (16 cross-attention layers, 768-d): "
        "use an adapter trained for SD1.5, or an SDXL model.")
    # a caller that knows the model's family says so; the sentence is the same
    with pytest.raises(IPAdapterError, match="is SD1.5 \\(16 cross-attention layers, 768-d\\)"):
        spec.check_fits(clip_dim, "clip", 768, [], "the UNet of v1-5.safetensors", "x", model_family=SD15)


def test_same_family_mismatches_keep_their_messages():
    spec = spec_for(SDXL, "base", 1024)
    spec.check_fits(1024, "clip", CROSS, SDXL.adapter_layers(), "the UNet")  # fits
    with pytest.raises(IPAdapterError, match=r"trained with OpenCLIP ViT-H/14 image features \(1024-d image embedding\) but bigG gives "
                                               r"OpenCLIP ViT-bigG/14 image features \(1280-d image embedding\)"):
        spec.check_fits(1280, "bigG", CROSS, SDXL.adapter_layers(), "the UNet")
    with pytest.raises(IPAdapterError, match=r"has 70 layers that do not fit the UNet \(44 cross-attention layers"):
        spec.check_fits(1024, "clip", CROSS, SDXL.adapter_layers()[:44], "the UNet")
    tiny = AdapterSpec("base", 32, 48, 4, ((1, 48),))  # no family has 48-d cross-attention
    with pytest.raises(IPAdapterError, match=r"is for a 48-d cross-attention model, but the UNet has 768-d "
                                             r"cross-attention \(SD1.5 is 768, SDXL is 2048, learned world is 32\)"):
        tiny.check_fits(32, "clip", 768, SD15.adapter_layers(), "the UNet")
    world = AdapterSpec("base", 64, 32, 4, tuple((layer.index, 32) for layer in SD15.adapter_layers()))
    with pytest.raises(IPAdapterError, match=r"is a learned world base adapter .* but the UNet is SD1.5"):
        world.check_fits(64, "clip", 768, SD15.adapter_layers(), "the UNet")
