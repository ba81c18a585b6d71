"""The two back ends agree: on the same small random-weight SD1.5 (`sd15_graph.py`: one seeded state dict, in
ComfyUI's classes and in the core's diffusers modules) and the same adapter weights,
ComfyUI's model (patched by Apply, or driven by the training back end) and the core's diffusers path
predict the same noise. Also: weight 0 is the unpatched model, chained Apply patches add up, start/end
gating, LoRAs on MODEL stay applied, a mismatched adapter is refused before sampling, and gradient
checkpointing in the training back end gives the same gradients and weights while keeping fewer activations."""
from __future__ import annotations

import copy

import pytest
import torch

from test_nodes_support import ROOT, comfy_models, comfy_or_skip, diffusers_sd15, pack, random_adapter

pytestmark = pytest.mark.unit

comfy_or_skip()

import comfy.model_management  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def graph():
    return comfy_models()


@pytest.fixture(scope="module")
def layers(graph):
    return pack("nodes.comfy_layers").comfy_adapter_layers(graph["model"])


@pytest.fixture(scope="module")
def diffusers_backend():
    return pack("ipadapter_train.diffusion.diffusers_backend").DiffusersBackend(diffusers_sd15())


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    return {"noisy": torch.randn(2, 4, 8, 8, generator=gen), "t": torch.tensor([100, 700]),
            "text": torch.randn(2, 77, 768, generator=gen), "image": torch.rand(2, 64, 80, 3, generator=gen)}


def comfy_eps(model, noisy, t, text, cond_or_uncond=(0, 0)):
    """Epsilon from ComfyUI's own apply_model, with transformer_options built as comfy.samplers does."""
    sampling = model.get_model_object("model_sampling")
    sigma = sampling.sigmas[t]
    x = noisy * (sigma ** 2 + 1).sqrt().view(-1, 1, 1, 1)
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigma)
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
        denoised = model.model.apply_model(x, sigma, c_crossattn=text, transformer_options=options)
    return (x - denoised) / sigma.view(-1, 1, 1, 1)


def diffusers_eps(backend, adapter, noisy, t, text, tokens, scale=1.0):
    with torch.no_grad():
        backend.attach(adapter)
        try:
            return backend.predict_noise(noisy, t, text, tokens, scale)
        finally:
            backend.detach()


def apply(graph, adapter, image, weight=1.0, start_at=0.0, end_at=1.0, model=None, negative=None):
    node = pack("nodes.node_apply").ApplyIPAdapter
    with torch.inference_mode():
        return node.execute(model or graph["model"], adapter, graph["clip_vision"], image, weight, start_at, end_at,
                            negative).args[0]


def features(graph, variant, image):
    encoder = pack("nodes.comfy_backend").ComfyImageEncoder(graph["clip_vision"])
    with torch.inference_mode():
        return encoder.encode_tensor(image, variant).mean(0, keepdim=True).clone(), encoder.dropped(variant).clone()


@pytest.mark.parametrize("variant,width", [("base", 768), ("plus", 1024)])
def test_apply_patched_comfyui_model_predicts_the_noise_of_the_diffusers_path(graph, layers, diffusers_backend,
                                                                             inputs, variant, width):
    adapter = random_adapter(variant, width, layers)
    patched = apply(graph, adapter, inputs["image"], weight=0.8)
    feats, dropped = features(graph, variant, inputs["image"])
    with torch.no_grad():
        cond, uncond = adapter.project(feats), adapter.project(dropped)
    noisy, t, text = inputs["noisy"], inputs["t"], inputs["text"]
    # ComfyUI batches [uncond; cond] rows (cond_or_uncond = [1, 0]); diffusers gets the matching tokens
    ours = comfy_eps(patched, noisy, t, text, cond_or_uncond=(1, 0))
    theirs = diffusers_eps(diffusers_backend, adapter, noisy, t, text, torch.cat([uncond, cond]), scale=0.8)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    plain = comfy_eps(graph["model"], noisy, t, text)
    assert (ours - plain).abs().max() > 1e-2  # the adapter really acts


def test_training_backend_predicts_the_noise_of_the_diffusers_backend(graph, layers, diffusers_backend, inputs):
    backend_mod = pack("nodes.comfy_backend")
    adapter = random_adapter("base", 768, layers, seed=3)
    tokens = adapter.project(torch.randn(2, 768, generator=torch.Generator().manual_seed(5)))
    with torch.inference_mode(False), torch.no_grad():
        backend = backend_mod.ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        backend.attach(adapter)
        try:
            ours = backend.predict_noise(inputs["noisy"], inputs["t"], inputs["text"], tokens)
            off = backend.predict_noise(inputs["noisy"], inputs["t"], inputs["text"], None)
        finally:
            backend.detach()
    theirs = diffusers_eps(diffusers_backend, adapter, inputs["noisy"], inputs["t"], inputs["text"], tokens)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(off, comfy_eps(graph["model"], inputs["noisy"], inputs["t"], inputs["text"]),
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(backend.alphas_cumprod, diffusers_backend.alphas_cumprod, atol=1e-6, rtol=1e-5)


def test_training_backend_encoders_match_the_diffusers_backend(graph, diffusers_backend):
    with torch.inference_mode(False):
        backend = pack("nodes.comfy_backend").ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
        for ours, theirs in zip(backend.encode_latents(pixels), diffusers_backend.encode_latents(pixels)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        captions = ["a photo of a cat", "", "word " * 90]
        torch.testing.assert_close(backend.encode_text(captions)["context"], diffusers_backend.encode_text(captions)["context"],
                                   atol=1e-4, rtol=1e-4)


def test_weight_zero_is_exactly_the_unpatched_model(graph, layers, inputs):
    adapter = random_adapter("base", 768, layers)
    patched = apply(graph, adapter, inputs["image"], weight=0.0)
    args = inputs["noisy"], inputs["t"], inputs["text"]
    assert torch.equal(comfy_eps(patched, *args), comfy_eps(graph["model"], *args))


def test_apply_leaves_the_input_model_untouched_and_patches_all_16_layers_with_the_mid_block(graph, layers, inputs):
    before = dict(graph["model"].model_options["transformer_options"])
    patched = apply(graph, random_adapter("base", 768, layers), inputs["image"])
    assert graph["model"].model_options["transformer_options"] == before
    keys = set(patched.model_options["transformer_options"]["patches_replace"]["attn2"])
    assert len(keys) == 16 and ("middle", 0, 0) in keys


def test_chained_apply_nodes_add_up(graph, layers, inputs):
    attention = pack("ipadapter_train.adapter.ip_attention")
    patch_mod = pack("nodes.attn_patch")
    a, b = random_adapter("base", 768, layers, seed=1), random_adapter("plus", 1024, layers, seed=2)
    image = inputs["image"]
    # same adapter twice at 0.4 + 0.6 == once at 1.0, through the whole UNet
    twice = apply(graph, a, image, 0.6, model=apply(graph, a, image, 0.4))
    once = apply(graph, a, image, 1.0)
    args = inputs["noisy"], inputs["t"], inputs["text"]
    torch.testing.assert_close(comfy_eps(twice, *args), comfy_eps(once, *args), atol=ATOL, rtol=RTOL)
    # two different adapters: each layer returns text attention + 0.5 * term_a + 1.5 * term_b
    chained = apply(graph, b, image, 1.5, model=apply(graph, a, image, 0.5))
    layer = next(x for x in layers if x.comfy_key == ("middle", 0, 0))
    patch = chained.model_options["transformer_options"]["patches_replace"]["attn2"][layer.comfy_key]
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, n, layer.hidden, generator=gen) for n in (16, 77, 77))
    extra = {"n_heads": 8, "cond_or_uncond": [0], "sigmas": torch.tensor([1.0])}
    with torch.inference_mode():
        got = patch(q, k, v, extra)
        expected = patch_mod.text_attention(q, k, v, extra, None)
        for adapter, weight in ((a, 0.5), (b, 1.5)):
            feats, _ = features(graph, adapter.spec.variant, image)
            expected = expected + weight * attention.decoupled_term(q, adapter.project(feats),
                                                                    adapter.layer(layer.index), 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_start_and_end_gate_the_adapter_by_sigma(graph, layers, diffusers_backend, inputs):
    adapter = random_adapter("base", 768, layers)
    noisy, text = inputs["noisy"][:1], inputs["text"][:1]
    late_half = apply(graph, adapter, inputs["image"], 1.0, start_at=0.5, end_at=1.0)
    early_half = apply(graph, adapter, inputs["image"], 1.0, start_at=0.0, end_at=0.5)
    plain = {t: comfy_eps(graph["model"], noisy, torch.tensor([t]), text) for t in (100, 900)}
    # t=900 is early in sampling (large sigma): only the early half acts; t=100 is late: only the late half
    assert torch.equal(comfy_eps(late_half, noisy, torch.tensor([900]), text), plain[900])
    assert torch.equal(comfy_eps(early_half, noisy, torch.tensor([100]), text), plain[100])
    feats, _ = features(graph, "base", inputs["image"])
    with torch.no_grad():
        cond = adapter.project(feats)
    for model, t in ((late_half, 100), (early_half, 900)):
        ours = comfy_eps(model, noisy, torch.tensor([t]), text, cond_or_uncond=(0,))
        theirs = diffusers_eps(diffusers_backend, adapter, noisy, torch.tensor([t]), text, cond)
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)


def test_loras_patched_into_model_stay_applied_in_training(graph, inputs):
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    lora = graph["model"].clone()
    weight = lora.model.state_dict()[key]
    lora.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(9)) * 0.5,)})
    args = inputs["noisy"], inputs["t"], inputs["text"]
    with torch.inference_mode(False), torch.no_grad():
        backend = pack("nodes.comfy_backend").ComfyBackend(lora, graph["clip"], graph["vae"])
        kv = backend.base_kv()
        ours = backend.predict_noise(*args, None)
    torch.testing.assert_close(ours, comfy_eps(lora, *args), atol=ATOL, rtol=RTOL)
    assert (ours - comfy_eps(graph["model"], *args)).abs().max() > 1e-3
    assert not torch.equal(kv[1][0], weight.float())  # to_k_ip would start from the LoRA-patched to_k


@pytest.mark.parametrize("variant,width,needs", [
    ("base", 1024, r"trained with OpenCLIP ViT-H/14 image features \(1024-d image embedding\)"),
    ("plus", 1280, r"trained with OpenCLIP ViT-H/14 image features \(1280-d hidden states\)")])
def test_an_adapter_for_another_encoder_is_refused_before_sampling(graph, layers, inputs, variant, width, needs):
    errors = pack("ipadapter_train.errors")
    adapter = random_adapter(variant, width, layers)
    with pytest.raises(errors.IPAdapterError, match=needs):
        apply(graph, adapter, inputs["image"])


def test_an_adapter_for_another_unet_is_refused_before_sampling(graph, inputs):
    errors = pack("ipadapter_train.errors")
    layout = pack("ipadapter_train.layout")
    config = pack("ipadapter_train.families").SD15.config("unet/config.json")  # real SD1.5 widths 320/640/1280
    adapter = random_adapter("base", 768, layout.adapter_layers(config))
    with pytest.raises(errors.IPAdapterError, match="do not fit this MODEL"):
        apply(graph, adapter, inputs["image"])


def test_start_after_end_is_refused(graph, layers, inputs):
    errors = pack("ipadapter_train.errors")
    with pytest.raises(errors.IPAdapterError, match="start_at"):
        apply(graph, random_adapter("base", 768, layers), inputs["image"], start_at=0.8, end_at=0.2)


def test_the_full_sd15_unet_config_gives_the_official_key_table():
    comfy_layers = pack("nodes.comfy_layers")
    layout = pack("ipadapter_train.layout")
    comfy_config = {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
                    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
                    # as ComfyUI's model_detection lists it: by input level (level 0's three output blocks first)
                    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "context_dim": 768}
    ours = layout.adapter_layers(comfy_layers.diffusers_style_config(comfy_config))
    reference = layout.adapter_layers(pack("ipadapter_train.families").SD15.config("unet/config.json"))
    assert ours == reference
    table = {layer.index: (layer.comfy_key[:2], layer.hidden) for layer in ours}
    assert table == {1: (("input", 1), 320), 3: (("input", 2), 320), 5: (("input", 4), 640),
                     7: (("input", 5), 640), 9: (("input", 7), 1280), 11: (("input", 8), 1280),
                     13: (("output", 3), 1280), 15: (("output", 4), 1280), 17: (("output", 5), 1280),
                     19: (("output", 6), 640), 21: (("output", 7), 640), 23: (("output", 8), 640),
                     25: (("output", 9), 320), 27: (("output", 10), 320), 29: (("output", 11), 320),
                     31: (("middle", 0), 1280)}


def backend_step(graph, adapter, inputs, checkpointed, interrupt_before_backward=False):
    """One forward and backward through the training back end: the adapter's gradients, and the bytes autograd
    kept for the backward (tensors saved outside checkpointed layers)."""
    backend_mod = pack("nodes.comfy_backend")
    adapter = copy.deepcopy(adapter).requires_grad_(True)
    saved = []

    def keep(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.inference_mode(False):
        backend = backend_mod.ComfyBackend(graph["model"], graph["clip"], graph["vae"])
        if checkpointed:
            backend.enable_gradient_checkpointing()
        backend.attach(adapter)
        try:
            tokens = adapter.project(torch.randn(2, 768, generator=torch.Generator().manual_seed(5)))
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                eps = backend.predict_noise(inputs["noisy"], inputs["t"], inputs["text"], tokens)
            if interrupt_before_backward:
                comfy.model_management.interrupt_current_processing(True)
            eps.pow(2).mean().backward()
        finally:
            backend.detach()
    return {n: p.grad for n, p in adapter.named_parameters()}, sum(saved)


def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations(graph, layers, inputs):
    checkpointing = pack("nodes.checkpointing")
    adapter = random_adapter("base", 768, layers, seed=3)
    plain, plain_bytes = backend_step(graph, adapter, inputs, checkpointed=False)
    ckpt, ckpt_bytes = backend_step(graph, adapter, inputs, checkpointed=True)
    # every layer's recompute found its own adapter layer (each has other weights), so the gradients agree
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, atol=1e-6, rtol=1e-5)
        assert grad.abs().sum() > 0, name
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    # the graph's MODEL gets its own forwards back
    unet = graph["model"].model.diffusion_model
    assert all("forward" not in layer.__dict__ for layer in checkpointing.checkpointed_layers(unet))


def test_a_cancel_during_the_recompute_is_the_cores_cancel(graph, layers, inputs):
    errors = pack("ipadapter_train.errors")
    with pytest.raises(errors.TrainingCancelled):
        backend_step(graph, random_adapter("base", 768, layers), inputs, checkpointed=True,
                     interrupt_before_backward=True)
    assert not comfy.model_management.processing_interrupted()  # the flag was consumed by the cancel


def test_training_with_gradient_checkpointing_ends_with_the_same_weights(graph, tmp_path):
    backend_mod = pack("nodes.comfy_backend")
    api = pack("ipadapter_train.api")
    samples = api.load_image_folder(ROOT / "ipadapter_train" / "assets" / "samples")[0][:3]
    results = {}
    for checkpointed in (False, True):
        config = api.TrainConfig(resolution=64, max_steps=3, checkpoint_every=0, mixed_precision="no",
                                 validation=False, seed=3, gradient_checkpointing=checkpointed)
        with torch.inference_mode(False):
            backend = backend_mod.ComfyBackend(graph["model"], graph["clip"], graph["vae"])
            encoder = backend_mod.ComfyImageEncoder(graph["clip_vision"])
            plan = api.plan_run(config, samples, backend.family, paths=api.RunPaths(tmp_path / str(checkpointed)))
            results[checkpointed] = api.train(plan, backend, encoder)
    plain, ckpt = results[False].adapter.state_dict(), results[True].adapter.state_dict()
    assert results[False].losses == pytest.approx(results[True].losses, rel=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, float noise in it moves a weight by a fraction of the 1e-4
    # learning rate, so the weights agree to 1e-5 (a tenth of one step), not to the gradients' 1e-6
    for key, value in plain.items():
        torch.testing.assert_close(ckpt[key], value, atol=1e-5, rtol=1e-5)
