"""SDXL in the node pack, in-process: ComfyUI's real SDXL UNet at full size (on the meta device) gives the official
70-layer key table; on a tiny SDXL built from ComfyUI's own SDXL classes (`sdxl_graph.py`) with the weights of a
diffusers one, the training back end (pooled text, size/crop time_ids through the model's `encode_adm`) and Apply's
patch predict the noise of the core's diffusers path, base and plus, and give the same gradients; weight 0 is the
unpatched model, chained Apply nodes add up, and an adapter of the other family is refused in one sentence."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from test_nodes_support import comfy_models, comfy_or_skip, pack, random_adapter

pytestmark = pytest.mark.unit

comfy_or_skip()

import comfy.model_management  # noqa: E402
from sdxl_graph import comfy_sdxl, diffusers_sdxl  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4
PLUS_WIDTH = 128  # a tiny Resampler (the SDXL default is 1280 wide): the test is about the patching, not the size


@pytest.fixture(scope="module")
def graph():
    """The tiny SDXL MODEL and CLIP, with the VAE and CLIP_VISION of the SD1.5 test graph (family-independent)."""
    sd15 = comfy_models()
    return {**comfy_sdxl(), "vae": sd15["vae"], "clip_vision": sd15["clip_vision"]}


@pytest.fixture(scope="module")
def layers(graph):
    return pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])


@pytest.fixture(scope="module")
def diffusers_backend():
    return pack("ipadapter_train.diffusion.diffusers_backend").DiffusersBackend(diffusers_sdxl())


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    # time_ids (original h, w, crop top, left, target h, w): no two alike, so a swapped pair changes the noise
    return {"noisy": torch.randn(2, 4, 8, 8, generator=gen), "t": torch.tensor([100, 700]),
            "text": torch.randn(2, 77, 2048, generator=gen), "image": torch.rand(2, 64, 80, 3, generator=gen),
            "negative": torch.rand(1, 72, 64, 3, generator=gen),
            "added": {"pooled": torch.randn(2, 1280, generator=gen),
                      "time_ids": torch.tensor([[96.0, 64, 16, 0, 64, 64], [64.0, 128, 0, 8, 72, 120]])}}


def sdxl_adapter(variant, layers, seed=1):
    return random_adapter(variant, 768 if variant == "base" else 1024, layers, seed=seed, cross_dim=2048,
                          resampler_dim=PLUS_WIDTH if variant == "plus" else None)


def comfy_eps(model, noisy, t, text, added, cond_or_uncond=(0, 0)):
    """Epsilon from ComfyUI's own apply_model; `y` from the model's extra_conds, fed as ComfyUI's SDXL text-encode
    node feeds it (diffusers' time_ids order spelled out here: height, width, crop_h, crop_w, target h, w)."""
    sampling = model.get_model_object("model_sampling")
    sigma = sampling.sigmas[t]
    x = noisy * (sigma ** 2 + 1).sqrt().view(-1, 1, 1, 1)
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigma)
    rows = []
    for pooled, (h, w, top, left, th, tw) in zip(added["pooled"], added["time_ids"].tolist()):
        rows.append(model.model.extra_conds(pooled_output=pooled[None], height=h, width=w, crop_h=top, crop_w=left,
                                            target_height=th, target_width=tw)["y"].cond)
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
        denoised = model.model.apply_model(x, sigma, c_crossattn=text, y=torch.cat(rows), transformer_options=options)
    return (x - denoised) / sigma.view(-1, 1, 1, 1)


def apply(graph, adapter, image, weight=1.0, start_at=0.0, end_at=1.0, model=None, negative=None):
    node = pack("nodes.node_apply").ApplyIPAdapter
    with torch.inference_mode():
        return node.execute(model or graph["model"], adapter, graph["clip_vision"], image, weight, start_at, end_at,
                            negative).args[0]


def features(graph, variant, images):
    encoder = pack("nodes.comfy_backend").ComfyImageEncoder(graph["clip_vision"])
    with torch.inference_mode():
        return encoder.encode_tensor(images, variant).mean(0, keepdim=True).clone(), encoder.dropped(variant).clone()


def test_the_full_sdxl_unet_of_comfyui_has_the_official_70_layer_table():
    """ComfyUI's own SDXL config (its detection of a diffusers SDXL UNet) and its own UNet class, on the meta device."""
    from diffusers import UNet2DConditionModel

    import comfy.model_detection
    import comfy.ops
    import comfy.supported_models
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sdxl = pack("ipadapter_train.families").SDXL
    comfy_layers = pack("nodes.comfy_layers")
    with torch.device("meta"):
        reference_unet = UNet2DConditionModel.from_config(sdxl.config("unet/config.json"))
    config = comfy.model_detection.unet_config_from_diffusers_unet(reference_unet.state_dict())
    assert comfy.supported_models.SDXL.matches(config)  # what ComfyUI loads as SDXL
    assert config["transformer_depth"] == [0, 0, 2, 2, 10, 10] and config["transformer_depth_middle"] == 10
    unet = UNetModel(**{**config, "dtype": torch.float32}, device="meta", operations=comfy.ops.disable_weight_init)
    official = sdxl.adapter_layers()
    assert len(official) == 70 and [x.index for x in official] == list(range(1, 140, 2))
    # every attn2 of ComfyUI's UNet, by the key ComfyUI looks its patch up with, and its width
    found = {}
    for name, module in unet.named_modules():
        m = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.?(\d*)\.1\.transformer_blocks\.(\d+)\.attn2", name)
        if m:
            kind = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[m.group(1)]
            found[(kind, int(m.group(2) or 0), int(m.group(3)))] = module.to_q.weight.shape[0]
    assert found == {x.comfy_key: x.hidden for x in official}
    # each key reaches the diffusers layer of the same file index, by ComfyUI's own diffusers-to-ComfyUI key map
    names = comfy.utils.unet_to_diffusers(config)
    for layer in official:
        kind, number, index = layer.comfy_key
        block = {"input": f"input_blocks.{number}", "middle": "middle_block", "output": f"output_blocks.{number}"}[kind]
        assert names[f"{layer.name}.to_k.weight"] == f"{block}.1.transformer_blocks.{index}.attn2.to_k.weight"
    # the pack's description of ComfyUI's config, and its table verified against the modules
    layout = pack("ipadapter_train.layout")
    assert layout.adapter_layers(comfy_layers.diffusers_style_config(config)) == official
    detected = comfy.model_detection.detect_unet_config(
        {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}, "model.diffusion_model.")
    model = type("Patcher", (), {"model": type("Base", (), {
        "diffusion_model": unet, "model_config": comfy.supported_models.SDXL(detected)})()})()
    assert comfy_layers.comfy_adapter_layers(model) == official
    assert comfy_layers.model_family(model) is sdxl


def test_training_backend_encodes_text_like_the_diffusers_backend(graph, diffusers_backend):
    with torch.inference_mode(False):
        backend = pack("nodes.comfy_backend").ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        captions = ["a photo of a cat", "", "word " * 90]
        ours, theirs = backend.encode_text(captions), diffusers_backend.encode_text(captions)
    assert ours["context"].shape == (3, 77, 2048) and ours["pooled"].shape == (3, 1280)
    for key in ("context", "pooled"):
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(backend.alphas_cumprod, diffusers_backend.alphas_cumprod, atol=1e-6, rtol=1e-5)


def backend_step(backend, adapter, inputs, feats):
    """One forward and backward with the adapter attached: the noise and the adapter's gradients."""
    adapter = copy.deepcopy(adapter).requires_grad_(True)
    backend.attach(adapter)
    try:
        eps = backend.predict_noise(inputs["noisy"], inputs["t"], inputs["text"], adapter.project(feats),
                                    added=inputs["added"])
        eps.pow(2).mean().backward()
    finally:
        backend.detach()
    return eps.detach(), {n: p.grad for n, p in adapter.named_parameters()}


@pytest.mark.parametrize("variant,checkpointed", [("base", False), ("plus", False), ("base", True)])
def test_training_backend_predicts_the_noise_and_gradients_of_the_diffusers_backend(graph, layers, diffusers_backend,
                                                                                   inputs, variant, checkpointed):
    adapter = sdxl_adapter(variant, layers, seed=3)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 768, generator=gen) if variant == "base" else torch.randn(2, 5, 1024, generator=gen)
    with torch.inference_mode(False):
        backend = pack("nodes.comfy_backend").ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        if checkpointed:
            backend.enable_gradient_checkpointing()
        ours, our_grads = backend_step(backend, adapter, inputs, feats)
        with torch.no_grad():
            off = backend.predict_noise(inputs["noisy"], inputs["t"], inputs["text"], None, added=inputs["added"])
    theirs, their_grads = backend_step(diffusers_backend, adapter, inputs, feats)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    # float32 sums in another order: close relative to each tensor's scale. The plus adapter's Resampler gradients
    # gather the most terms; with one torch thread (the suite under xdist) they differ by up to 1.1e-4 of it.
    for name, grad in their_grads.items():
        scale = grad.abs().max()
        assert scale > 0, name
        assert (our_grads[name] - grad).abs().max() <= 3e-4 * scale, name
    torch.testing.assert_close(off, comfy_eps(graph["model"], inputs["noisy"], inputs["t"], inputs["text"],
                                              inputs["added"]), atol=ATOL, rtol=RTOL)
    assert (ours - off).abs().max() > 1e-2  # the adapter really acts


def test_the_training_backend_needs_the_pooled_text_and_time_ids(graph, inputs):
    errors = pack("ipadapter_train.errors")
    with torch.inference_mode(False):
        backend = pack("nodes.comfy_backend").ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        with pytest.raises(errors.IPAdapterError, match="SDXL UNet needs time_ids"):
            backend.predict_noise(inputs["noisy"], inputs["t"], inputs["text"], None,
                                  added={"pooled": inputs["added"]["pooled"]})


@pytest.mark.parametrize("variant,negative", [("base", False), ("plus", True)])
def test_apply_patched_sdxl_model_predicts_the_noise_of_the_diffusers_path(graph, layers, diffusers_backend, inputs,
                                                                          variant, negative):
    adapter = sdxl_adapter(variant, layers)
    negative_image = inputs["negative"] if negative else None
    patched = apply(graph, adapter, inputs["image"], weight=0.8, negative=negative_image)  # 2 images: averaged
    feats, dropped = features(graph, variant, inputs["image"])
    if negative:
        dropped, _ = features(graph, variant, negative_image)
    with torch.no_grad():
        cond, uncond = adapter.project(feats), adapter.project(dropped)
    args = inputs["noisy"], inputs["t"], inputs["text"], inputs["added"]
    ours = comfy_eps(patched, *args, cond_or_uncond=(1, 0))  # ComfyUI batches [uncond; cond]
    with torch.no_grad():
        diffusers_backend.attach(adapter)
        try:
            theirs = diffusers_backend.predict_noise(*args[:3], torch.cat([uncond, cond]), 0.8, added=args[3])
        finally:
            diffusers_backend.detach()
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    assert (ours - comfy_eps(graph["model"], *args)).abs().max() > 1e-2


def test_apply_patches_every_layer_and_weight_zero_is_exactly_the_unpatched_model(graph, layers, inputs):
    before = dict(graph["model"].model_options["transformer_options"])
    patched = apply(graph, sdxl_adapter("base", layers), inputs["image"], weight=0.0)
    assert graph["model"].model_options["transformer_options"] == before
    keys = set(patched.model_options["transformer_options"]["patches_replace"]["attn2"])
    assert keys == {x.comfy_key for x in layers} and ("middle", 0, 1) in keys and len(keys) == 8
    args = inputs["noisy"], inputs["t"], inputs["text"], inputs["added"]
    assert torch.equal(comfy_eps(patched, *args), comfy_eps(graph["model"], *args))


def test_chained_apply_nodes_add_up_and_start_end_gate_by_sigma(graph, layers, inputs):
    adapter = sdxl_adapter("base", layers)
    image, args = inputs["image"], (inputs["noisy"], inputs["t"], inputs["text"], inputs["added"])
    twice = apply(graph, adapter, image, 0.6, model=apply(graph, adapter, image, 0.4))
    torch.testing.assert_close(comfy_eps(twice, *args), comfy_eps(apply(graph, adapter, image, 1.0), *args),
                               atol=ATOL, rtol=RTOL)
    late_half = apply(graph, adapter, image, 1.0, start_at=0.5, end_at=1.0)
    early = (inputs["noisy"][:1], torch.tensor([900]), inputs["text"][:1],
             {k: v[:1] for k, v in inputs["added"].items()})
    assert torch.equal(comfy_eps(late_half, *early), comfy_eps(graph["model"], *early))


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message


def test_an_adapter_of_the_other_family_is_refused_in_one_sentence_naming_both(graph, layers, inputs):
    errors = pack("ipadapter_train.errors")
    sd15_graph = comfy_models()
    sd15_layers = pack("nodes.comfy_layers").comfy_adapter_layers(sd15_graph["model"])
    with pytest.raises(errors.IPAdapterError) as refused:
        apply(graph, random_adapter("base", 768, sd15_layers), inputs["image"])
    message = str(refused.value)
    assert "SD1.5" in message and "SDXL" in message and one_sentence(message), message
    with pytest.raises(errors.IPAdapterError) as refused:
        apply(sd15_graph, sdxl_adapter("base", layers), inputs["image"])
    message = str(refused.value)
    assert "SD1.5" in message and "SDXL" in message and one_sentence(message), message


def test_an_sdxl_layout_a_diffusers_config_cannot_state_is_refused_in_one_sentence():
    """SSD-1B (ComfyUI's own config for it): its output blocks' depths differ from its input blocks'."""
    errors = pack("ipadapter_train.errors")
    ssd_1b = {"model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
              "transformer_depth": [0, 0, 2, 2, 4, 4], "transformer_depth_output": [0, 0, 0, 1, 1, 2, 10, 4, 4],
              "transformer_depth_middle": -1, "context_dim": 2048, "adm_in_channels": 2816}
    with pytest.raises(errors.IPAdapterError, match="output transformer depths") as refused:
        pack("nodes.comfy_layers").diffusers_style_config(ssd_1b)
    assert one_sentence(str(refused.value))
