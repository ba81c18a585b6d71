"""Converting tencent's reference checkpoints (tutorial_train.py, tutorial_train_sdxl.py) to the official file."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_train.adapter.module import IPAdapter
from ipadapter_train.adapter.convert import convert_checkpoint, default_unet_config, read_reference_state
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.adapter.fileformat import load_adapter
from ipadapter_train.layout import adapter_layers

pytestmark = pytest.mark.unit

TINY_CONFIG = {"block_out_channels": [32, 64], "layers_per_block": 1,
               "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
               "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


@pytest.fixture(scope="module")
def sd15_layers():
    return adapter_layers(default_unet_config())


def make_adapter(variant: str, layers, clip_dim: int = 1024, cross_dim: int = 768) -> IPAdapter:
    torch.manual_seed(1)
    return IPAdapter.new(variant, clip_dim, cross_dim, layers)


def reference_state(adapter: IPAdapter, layers, with_list: bool = True, with_unet: bool = True) -> OrderedDict:
    """The reference module's state_dict: unet (frozen + processors), image_proj_model, adapter_modules.

    The processors in `unet` and in `adapter_modules` are the same modules, so their tensors share
    storage, which is what makes accelerate's safetensors writer drop one copy.
    """
    ip = adapter.state_dict()
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["unet.conv_in.weight"] = torch.randn(8, 4, 3, 3)
    sd[f"unet.{layers[0].name}.to_k.weight"] = torch.randn(layers[0].hidden, adapter.spec.cross_dim)
    if with_unet:
        for layer in layers:
            for kv in "kv":
                sd[f"unet.{layer.name}.processor.to_{kv}_ip.weight"] = ip[f"ip_adapter.{layer.index}.to_{kv}_ip.weight"]
    for key, value in ip.items():
        if key.startswith("image_proj."):
            sd["image_proj_model." + key[len("image_proj."):]] = value
    if with_list:
        for key, value in ip.items():
            if key.startswith("ip_adapter."):
                sd["adapter_modules." + key[len("ip_adapter."):]] = value
    return sd


def clean_state_dict_for_safetensors(sd: OrderedDict) -> OrderedDict:
    """What accelerate's safetensors writer does to shared tensors: keep the first name, drop the rest.

    (accelerate.utils.other.clean_state_dict_for_safetensors itself needs an initialised
    PartialState for its warning, which a test should not create globally.)
    """
    seen: set[int] = set()
    kept: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        ptr = value.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            kept[key] = value
    return kept


def expected(adapter: IPAdapter) -> dict[str, torch.Tensor]:
    return {k: v.half() for k, v in adapter.state_dict().items()}


def assert_same(path: Path, want: dict[str, torch.Tensor]) -> dict[str, str]:
    got, meta = load_adapter(path)
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    return meta


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def save_state_folder(folder: Path, sd: OrderedDict, container: str) -> Path:
    """Write what accelerate's save_state leaves: the model file plus pickles convert must never open."""
    folder.mkdir()
    if container == "safetensors":
        save_file(clean_state_dict_for_safetensors(OrderedDict(sd)), str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    for name in ("optimizer.bin", "random_states_0.pkl"):
        torch.save({"state": _Payload(folder.parent / "pwned")}, folder / name)
    return folder


# ---------------------------------------------------------------- accelerate save_state folders

@pytest.mark.parametrize("form,container", [
    ("both", "safetensors"),  # accelerate drops adapter_modules: only unet.*.processor survives
    ("both", "bin"),
    ("adapter_modules", "safetensors"),
    ("unet", "bin"),
])
def test_save_state_folder(tmp_path, sd15_layers, form, container):
    adapter = make_adapter("base", sd15_layers)
    sd = reference_state(adapter, sd15_layers, with_list=form != "unet", with_unet=form != "adapter_modules")
    folder = save_state_folder(tmp_path / "checkpoint-500", sd, container)
    if form == "both" and container == "safetensors":
        assert not any(k.startswith("adapter_modules.") for k in read_reference_state(folder))  # the trap
    out = convert_checkpoint(folder, tmp_path / "out" / "adapter.safetensors")
    meta = assert_same(out, expected(adapter))
    assert meta["converted_from"] == "checkpoint-500" and meta["variant"] == "base"
    assert not (tmp_path / "pwned").exists()


def test_plus_folder(tmp_path, sd15_layers):
    adapter = make_adapter("plus", sd15_layers, clip_dim=1280)
    folder = save_state_folder(tmp_path / "ckpt", reference_state(adapter, sd15_layers), "safetensors")
    meta = assert_same(convert_checkpoint(folder, tmp_path / "plus.safetensors"), expected(adapter))
    assert (meta["variant"], meta["tokens"], meta["clip_dim"]) == ("plus", "16", "1280")


@pytest.mark.parametrize("indexed", [True, False])
def test_sharded_safetensors_folder(tmp_path, sd15_layers, indexed):
    adapter = make_adapter("base", sd15_layers)
    sd = clean_state_dict_for_safetensors(reference_state(adapter, sd15_layers))
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(folder / name))
    if indexed:
        weight_map = {k: name for name, part in shards.items() for k in part}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same(convert_checkpoint(folder, tmp_path / "a.safetensors"), expected(adapter))


# ---------------------------------------------------------------- single files

@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_single_flat_reference_file(tmp_path, sd15_layers, suffix):
    adapter = make_adapter("base", sd15_layers)
    sd = reference_state(adapter, sd15_layers)
    src = tmp_path / f"pytorch_model{suffix}"
    if suffix == ".bin":
        torch.save(sd, src)
    else:
        save_file(clean_state_dict_for_safetensors(sd), str(src))
    assert_same(convert_checkpoint(src, tmp_path / "a.safetensors"), expected(adapter))


def test_tencent_bin_is_resaved(tmp_path, sd15_layers):
    adapter = make_adapter("plus", sd15_layers, clip_dim=1280)
    ip = adapter.state_dict()
    nested = {"image_proj": {k[len("image_proj."):]: v for k, v in ip.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[len("ip_adapter."):]: v for k, v in ip.items() if k.startswith("ip_adapter.")}}
    src = tmp_path / "ip_adapter.bin"
    torch.save(nested, src)
    meta = assert_same(convert_checkpoint(src, tmp_path / "ip_adapter.safetensors"), expected(adapter))
    assert meta["converted_from"] == "ip_adapter.bin"


def test_official_safetensors_converts_to_bin(tmp_path, sd15_layers):
    adapter = make_adapter("base", sd15_layers)
    src = tmp_path / "official.safetensors"
    save_file(adapter.state_dict(), str(src))
    out = convert_checkpoint(src, tmp_path / "official.bin")
    assert set(torch.load(out, map_location="cpu", weights_only=True)) == {"image_proj", "ip_adapter"}
    assert_same(out, expected(adapter))


def test_tiny_unet_config_maps_processor_paths(tmp_path):
    layers = adapter_layers(TINY_CONFIG)
    assert [(layer.index, layer.name.split(".attentions")[0]) for layer in layers] == [
        (1, "down_blocks.0"), (3, "up_blocks.1"), (5, "up_blocks.1"), (7, "mid_block")]
    adapter = make_adapter("base", layers, clip_dim=48, cross_dim=32)
    src = tmp_path / "model.safetensors"
    save_file(dict(reference_state(adapter, layers, with_list=False)), str(src))
    assert_same(convert_checkpoint(src, tmp_path / "a.safetensors", unet_config=TINY_CONFIG), expected(adapter))


# ---------------------------------------------------------------- errors

def test_missing_layers_are_listed(tmp_path, sd15_layers):
    adapter = make_adapter("base", sd15_layers)
    sd = reference_state(adapter, sd15_layers)
    for key in list(sd):
        if any(f"{part}." in key for part in ("adapter_modules.5", "adapter_modules.31", sd15_layers[2].name,
                                                sd15_layers[15].name)) and "_ip." in key:
            del sd[key]
    src = tmp_path / "pytorch_model.bin"
    torch.save(sd, src)
    with pytest.raises(IPAdapterError, match=r"missing indices \[5, 31\]"):
        convert_checkpoint(src, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


def test_disagreeing_copies_are_refused(tmp_path, sd15_layers):
    sd = reference_state(make_adapter("base", sd15_layers), sd15_layers)
    sd["adapter_modules.9.to_v_ip.weight"] = sd["adapter_modules.9.to_v_ip.weight"] + 1
    src = tmp_path / "pytorch_model.bin"
    torch.save(sd, src)
    with pytest.raises(IPAdapterError, match="ip_adapter.9.to_v_ip.weight"):
        convert_checkpoint(src, tmp_path / "a.safetensors")


def test_wrong_unet_config(tmp_path, sd15_layers):
    adapter = make_adapter("base", sd15_layers)
    unet_only = tmp_path / "unet.bin"
    torch.save(reference_state(adapter, sd15_layers, with_list=False), unet_only)
    with pytest.raises(IPAdapterError, match="not a cross-attention layer"):
        convert_checkpoint(unet_only, tmp_path / "a.safetensors", unet_config=TINY_CONFIG)
    list_only = tmp_path / "list.bin"
    torch.save(reference_state(adapter, sd15_layers, with_unet=False), list_only)
    with pytest.raises(IPAdapterError, match=r"unexpected \[9, 11"):
        convert_checkpoint(list_only, tmp_path / "a.safetensors", unet_config=TINY_CONFIG)


def test_image_projection_required(tmp_path, sd15_layers):
    sd = reference_state(make_adapter("base", sd15_layers), sd15_layers)
    src = tmp_path / "pytorch_model.bin"
    torch.save({k: v for k, v in sd.items() if not k.startswith("image_proj_model.")}, src)
    with pytest.raises(IPAdapterError, match="no image projection"):
        convert_checkpoint(src, tmp_path / "a.safetensors")


def test_bad_sources(tmp_path):
    with pytest.raises(IPAdapterError, match="missing-dir.*does not exist"):
        convert_checkpoint(tmp_path / "missing-dir", tmp_path / "a.safetensors")
    run = tmp_path / "output"
    for step in ("checkpoint-100", "checkpoint-2000"):
        (run / step).mkdir(parents=True)
    with pytest.raises(IPAdapterError, match="checkpoint-2000"):
        convert_checkpoint(run, tmp_path / "a.safetensors")
    sd_file = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2)}, str(sd_file))
    with pytest.raises(IPAdapterError, match="v1-5.safetensors.*Stable Diffusion checkpoint"):
        convert_checkpoint(sd_file, tmp_path / "a.safetensors")
    with pytest.raises(IPAdapterError, match=r"\.safetensors \(recommended\)"):
        convert_checkpoint(tmp_path / "missing-dir", tmp_path / "a.pt")


# ---------------------------------------------------------------- SDXL (tencent tutorial_train_sdxl.py)

@pytest.fixture(scope="module")
def sdxl_layers():
    from ipadapter_train.families import SDXL

    return SDXL.adapter_layers()


def sdxl_adapter(layers, variant: str = "base") -> IPAdapter:
    """SDXL's 70 layers at their real widths (640/1280), reading tiny 16-d tokens: small, and no family's width,
    so the key structure alone must tell convert that this is SDXL."""
    torch.manual_seed(4)
    return IPAdapter.new(variant, 48, 16, layers, resampler_dim=64 if variant == "plus" else None)


def load_adapter_spec(path: Path):
    from ipadapter_train.adapter.check import check_adapter_state

    return check_adapter_state(load_adapter(path)[0], values=False)


@pytest.mark.parametrize("form,container", [
    ("both", "safetensors"),  # the trap: only unet.<path>.processor.* survives, found by its SDXL paths
    ("adapter_modules", "safetensors"),  # adapter_modules.<i> only: 70 layers up to 139
    ("both", "bin"),
])
def test_sdxl_save_state_folder(tmp_path, sdxl_layers, form, container):
    adapter = sdxl_adapter(sdxl_layers)
    sd = reference_state(adapter, sdxl_layers, with_unet=form != "adapter_modules")
    folder = save_state_folder(tmp_path / "checkpoint-100", sd, container)
    if form == "both" and container == "safetensors":
        assert not any(k.startswith("adapter_modules.") for k in read_reference_state(folder))
    out = convert_checkpoint(folder, tmp_path / "sdxl.safetensors")
    meta = assert_same(out, expected(adapter))
    assert meta["num_layers"] == "70"
    assert [n for n, _ in load_adapter_spec(out).layers] == list(range(1, 140, 2))
    assert not (tmp_path / "pwned").exists()


def test_sdxl_tencent_bin_and_plus(tmp_path, sdxl_layers):
    adapter = sdxl_adapter(sdxl_layers, "plus")
    ip = adapter.state_dict()
    nested = {"image_proj": {k[len("image_proj."):]: v for k, v in ip.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[len("ip_adapter."):]: v for k, v in ip.items() if k.startswith("ip_adapter.")}}
    torch.save(nested, tmp_path / "ip_adapter.bin")
    meta = assert_same(convert_checkpoint(tmp_path / "ip_adapter.bin", tmp_path / "a.safetensors"), expected(adapter))
    assert (meta["variant"], meta["num_layers"], meta["resampler_dim"]) == ("plus", "70", "64")


@pytest.mark.parametrize("with_list,with_unet", [(False, True), (True, False)])
def test_sdxl_family_from_the_2048_wide_weights(sdxl_layers, with_list, with_unet):
    """Public-size weights (meta tensors, no memory): the 2048-d input width alone names SDXL."""
    from ipadapter_train.adapter.convert import checkpoint_family, reference_to_official
    from ipadapter_train.families import SD15, SDXL

    state = {"image_proj_model.proj.weight": torch.empty(8192, 1024, device="meta"),
             "image_proj_model.proj.bias": torch.empty(8192, device="meta")}
    for layer in sdxl_layers:
        for kv in "kv":
            weight = torch.empty(layer.hidden, 2048, device="meta")
            if with_unet:
                state[f"unet.{layer.name}.processor.to_{kv}_ip.weight"] = weight
            if with_list:
                state[f"adapter_modules.{layer.index}.to_{kv}_ip.weight"] = weight
    assert checkpoint_family(state) is SDXL
    one = {"adapter_modules.1.to_k_ip.weight": torch.empty(640, 2048, device="meta")}  # neither paths nor count tell
    assert checkpoint_family(one) is SDXL
    assert checkpoint_family({"adapter_modules.1.to_k_ip.weight": torch.empty(320, 16, device="meta")}) is SD15
    official = reference_to_official(state)
    assert {k for k in official if k.startswith("ip_adapter.")} == {
        f"ip_adapter.{n}.to_{kv}_ip.weight" for n in range(1, 140, 2) for kv in "kv"}
    assert official["ip_adapter.121.to_k_ip.weight"].shape == (1280, 2048)  # mid block: last in the table
    assert official["ip_adapter.1.to_k_ip.weight"].shape == (640, 2048)


def test_sdxl_checkpoint_with_a_layer_missing_is_refused(tmp_path, sdxl_layers):
    sd = reference_state(sdxl_adapter(sdxl_layers), sdxl_layers, with_list=False)
    for kv in "kv":
        del sd[f"unet.{sdxl_layers[60].name}.processor.to_{kv}_ip.weight"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(IPAdapterError, match=r"does not match the UNet's 70 cross-attention layers \(missing "
                                             r"indices \[121\]"):
        convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "a.safetensors")


def test_cli_convert_says_what_it_wrote(tmp_path, sd15_layers):
    from conftest import run_cli

    folder = save_state_folder(tmp_path / "ckpt", reference_state(make_adapter("base", sd15_layers), sd15_layers),
                               "safetensors")
    r = run_cli("convert", str(folder), str(tmp_path / "a.safetensors"))
    assert r.returncode == 0, r.stderr
    assert "a.safetensors: an SD1.5 base adapter (4 tokens of 768-d, 1024-d image features, 16 layers)" in r.stdout
