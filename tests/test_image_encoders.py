"""Which image encoder an adapter reads: recorded when the package writes an adapter, inferred from the width
otherwise, and named (with the file that fits) when an adapter meets another encoder."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, train_args
from ipadapter_train.errors import IPAdapterError
from ipadapter_train.models.image_encoders import (ENCODER_KEY, adapter_encoder, check_encoder, encoder_metadata,
                                            encoder_widths_of_file, mismatch_sentence)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("variant, width, label", [
    ("base", 768, "OpenAI CLIP ViT-L/14"), ("base", 1024, "OpenCLIP ViT-H/14"), ("base", 1280, "OpenCLIP ViT-bigG/14"),
    ("plus", 1024, "OpenAI CLIP ViT-L/14"), ("plus", 1280, "OpenCLIP ViT-H/14"), ("plus", 1664, "OpenCLIP ViT-bigG/14"),
])
def test_the_width_names_the_encoder_for_each_variant(variant, width, label):
    # 1024 is ViT-H's embedding but ViT-L's hidden width: the variant decides
    assert adapter_encoder(variant, width).label == label


def test_a_mismatch_names_both_encoders_and_the_file_that_fits():
    said = mismatch_sentence("base", 1024, None, 768, "the CLIP vision model", "The adapter",
                             "load {file} in Load CLIP Vision")
    assert said == ("The adapter was trained with OpenCLIP ViT-H/14 image features (1024-d image embedding) but the "
                    "CLIP vision model gives OpenAI CLIP ViT-L/14 image features (768-d image embedding): load "
                    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in Load CLIP Vision.")
    with pytest.raises(IPAdapterError, match=r"trained with OpenAI CLIP ViT-L/14 image features \(1024-d hidden "
                                             r"states\) but h.safetensors gives OpenCLIP ViT-H/14 image features "
                                             r"\(1280-d hidden states\): use the image encoder of "
                                             r"openai/clip-vit-large-patch14 as the image encoder"):
        check_encoder("plus", 1024, None, (1024, 1280), "h.safetensors")
    check_encoder("plus", 1280, None, (1024, 1280), "h.safetensors")  # fits: nothing said


def test_a_recorded_encoder_is_used_only_when_the_tensors_agree():
    assert adapter_encoder("base", 32, {ENCODER_KEY: "OpenCLIP ViT-H/14"}) is None  # the tensors decide
    assert encoder_metadata(1024, 1280)[ENCODER_KEY] == "OpenCLIP ViT-H/14"
    assert ENCODER_KEY not in encoder_metadata(32, 64)  # the tiny test encoder has no public name


def test_a_trained_adapter_records_its_encoder_and_inspect_shows_it(models, tmp_path):
    out = tmp_path / "a.safetensors"
    r = run_cli(*train_args(models, out, "--max-steps", "1"))
    assert r.returncode == 0, r.stderr
    from ipadapter_train.adapter.fileformat import inspect_adapter

    info = inspect_adapter(out)
    assert info["metadata"]["image_embedding_dim"] == "32" and info["metadata"]["image_hidden_dim"] == "64"
    assert encoder_widths_of_file(models["clip"]) == (32, 64)
    assert info["image_encoder"] is None  # no public encoder is 32-d
    shown = json.loads(run_cli("inspect", str(out)).stdout)
    assert "image_encoder" in shown and "image_encoder_from" in shown


def test_inspect_names_the_encoder_of_a_public_file_from_its_width(tmp_path):
    from ipadapter_train.adapter.module import IPAdapter
    from ipadapter_train.adapter.convert import default_unet_config
    from ipadapter_train.adapter.fileformat import inspect_adapter, save_adapter
    from ipadapter_train.layout import adapter_layers

    path = tmp_path / "public.safetensors"
    save_adapter(IPAdapter.new("base", 1024, 768, adapter_layers(default_unet_config())).state_dict(), path)
    info = inspect_adapter(path)
    assert (info["image_encoder"], info["image_encoder_from"]) == ("OpenCLIP ViT-H/14", "width")
