"""The training loop's two seams over what a ComfyUI graph already loaded.

`ComfyBackend` is a `DiffusionBackend` over MODEL (a ModelPatcher), CLIP and VAE; `ComfyImageEncoder`
is an `ImageFeatureEncoder` over CLIP_VISION. With them the core's `ipadapter_train.api.train` runs unchanged
on the graph's own model: no second copy of the checkpoint, LoRAs already patched into MODEL stay
applied (the model is loaded through `load_models_gpu`, which applies them), and the adapter enters
through attn2 replace patches passed in `transformer_options`, so the ModelPatcher itself is never
modified. Construct and use both inside `torch.inference_mode(False)`.

Any family of the core's (`ipadapter_train.api.FAMILIES`) trains this way; nothing here names one. A family whose UNet takes a
pooled text embedding (SDXL) gets ComfyUI's own pooled CLIP output, and the UNet's `y` is built per sample by
the ComfyUI model's own `encode_adm` from that embedding and the sample's size/crop conditioning, as ComfyUI's
sampler builds it, never by hand.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

import comfy.model_management
import comfy.model_sampling
from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer

from ..ipadapter_train.api import (FAMILIES, AdapterLayer, IPAdapter, IPAdapterError, IPState, TrainingCancelled,
                                   family_of_comfy_unet)
from . import checkpointing
from .attn_patch import ATTN2, TrainingPatch, existing_patch
from .comfy_layers import attn2_module, comfy_adapter_layers, context_width
from .images import pils_to_tensor

log = logging.getLogger(__name__)
TEXT_TOKENS = 77  # one CLIP chunk: what SD1.5 and SDXL were trained with and what the diffusers back end uses
# diffusers' time_ids order (original height, width, crop top, left, target height, width) as the keywords of
# ComfyUI's SDXL `encode_adm` (which embeds them in that same order: height, width, crop_h, crop_w, target...).
SIZE_KEYS = ("height", "width", "crop_h", "crop_w", "target_height", "target_width")


def make_autograd_safe(module: torch.nn.Module) -> int:
    """Swap parameters and buffers created under `torch.inference_mode` for ordinary tensors.

    ComfyUI loads models inside inference mode, and autograd refuses to save such tensors for the
    backward pass. Each one is replaced by a copy with the same values, device and dtype, one tensor at
    a time, so memory never holds two copies of the model. Returns how many tensors were swapped.
    """
    swapped = 0
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_inference():
                sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                swapped += 1
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_inference():
                sub._buffers[name] = buf.clone()
                swapped += 1
    return swapped


class ComfyBackend:
    """A frozen MODEL/CLIP/VAE of any known family (`families.FAMILIES`) from a ComfyUI graph, seen as the
    trainer's `DiffusionBackend`."""

    def __init__(self, model: Any, clip: Any, vae: Any) -> None:
        self.patcher, self.clip, self.vae = model, clip, vae
        base = self.base = model.model
        self.unet = base.diffusion_model
        kind = type(base.model_config).__name__
        family = family_of_comfy_unet(base.model_config.unet_config)
        if family is None:
            config = base.model_config.unet_config
            known = "; ".join(f"{f.label}: {f.cross_dim}-d, extra conditioning {f.adm_channels or 'none'}"
                              for f in FAMILIES.values() if f.comfyui)
            raise IPAdapterError(f"This MODEL ({kind}, {config.get('context_dim')}-d cross-attention, extra "
                                 f"conditioning {config.get('adm_in_channels') or 'none'}) is of no model family this "
                                 f"pack trains for ({known}): load such a checkpoint with Load Checkpoint.")
        self.sampling = model.get_model_object("model_sampling")
        if not isinstance(self.sampling, comfy.model_sampling.ModelSamplingDiscrete) or \
                isinstance(self.sampling, (comfy.model_sampling.V_PREDICTION, comfy.model_sampling.X0)) or \
                not isinstance(self.sampling, comfy.model_sampling.EPS):
            raise IPAdapterError(f"This {family.label} MODEL samples with {type(self.sampling).__name__}: training "
                                 "needs a discrete-time epsilon-prediction model, as the base checkpoints of "
                                 f"{' and '.join(f.label for f in FAMILIES.values() if f.comfyui)} are.")
        self.name = f"ComfyUI MODEL ({kind})"
        self.family = family
        self.device = torch.device(model.load_device)
        self.dtype = base.manual_cast_dtype or base.get_dtype()
        self.cross_dim = context_width(model)
        self.latent_format = base.latent_format
        sigmas = self.sampling.sigmas.detach().double().cpu()
        self.alphas_cumprod = (1.0 / (1.0 + sigmas ** 2)).float()  # sigma^2 = (1 - a) / a
        self.state = IPState()
        self._layers = comfy_adapter_layers(model)
        self._options: dict | None = None
        self._grad_flags: dict[str, bool] | None = None
        self._checkpointing = False
        self._restore_forwards = None  # set while checkpointing wraps the UNet's layers
        self._loaded_weights = 0  # bytes of UNet weights on the device after `_load`

    def adapter_layers(self) -> list[AdapterLayer]:
        """The UNet's cross-attention layers in file order, each with its attn2 patch key."""
        return self._layers

    def _load(self) -> None:
        # The same call ComfyUI's own LoRA trainer makes: the whole UNet on the device, patches applied.
        comfy.model_management.load_models_gpu([self.patcher], memory_required=1e20, force_full_load=True)
        self._loaded_weights = self.patcher.loaded_size()
        swapped = make_autograd_safe(self.unet)
        if swapped:
            log.info("Made %d inference-mode tensors of the UNet usable by autograd (same values).", swapped)

    def base_kv(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """to_k / to_v of every cross-attention layer (with any LoRA applied), float32 on the CPU."""
        self._load()
        out = {}
        for layer in self._layers:
            attn = attn2_module(self.unet, layer.comfy_key)
            out[layer.index] = (attn.to_k.weight.detach().float().cpu().clone(),
                                attn.to_v.weight.detach().float().cpu().clone())
        return out

    def attach(self, adapter: IPAdapter) -> None:
        """Build the transformer options that route every attn2 through the adapter; freeze the UNet."""
        adapter.spec.check_layers(self._layers, "this MODEL")
        self._load()
        if self._grad_flags is None:
            self._grad_flags = {n: p.requires_grad for n, p in self.unet.named_parameters()}
            self.unet.requires_grad_(False)
        base = self.patcher.model_options.get("transformer_options", {})
        options = dict(base)
        replace = dict(options.get("patches_replace", {}))
        table = dict(replace.get(ATTN2, {}))
        for layer in self._layers:
            table[layer.comfy_key] = TrainingPatch(adapter.layer(layer.index), self.state,
                                                   existing_patch(base, layer.comfy_key))
        replace[ATTN2] = table
        options["patches_replace"] = replace
        self._options = options
        if self._checkpointing and self._restore_forwards is None:
            self._restore_forwards = checkpointing.enable(self.unet)

    def detach(self) -> None:
        """Drop the adapter's patches (and checkpointing) and give the UNet back its requires_grad flags."""
        self._options = None
        self.state.tokens = None
        if self._restore_forwards is not None:
            self._restore_forwards()  # the graph's MODEL goes on without checkpointing
            self._restore_forwards = None
        if self._grad_flags is not None:
            for name, param in self.unet.named_parameters():
                param.requires_grad_(self._grad_flags.get(name, False))
            self._grad_flags = None

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B,3,H,W] in [-1,1] -> the VAE posterior's mean and std, scaled as the MODEL expects."""
        vae = self.vae
        comfy.model_management.load_models_gpu([vae.patcher])
        stage = vae.first_stage_model
        if isinstance(getattr(stage, "regularization", None), DiagonalGaussianRegularizer) \
                and getattr(stage, "bn", None) is None and hasattr(stage, "quant_conv"):
            moments = stage.quant_conv(stage.encoder(pixels.to(vae.device, vae.vae_dtype))).float()
            mean, logvar = moments.chunk(2, dim=1)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # as the posterior of the SD VAE defines it
        else:  # another autoencoder: its own encode (the posterior mode), no sampling noise
            mean = vae.encode(((pixels + 1.0) / 2.0).movedim(1, -1)).float()
            std = torch.zeros_like(mean)
        scale = float(self.latent_format.scale_factor)
        return self.latent_format.process_in(mean).float().cpu(), (std * scale).cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B,4,h,w] (as `encode_latents` gives them) -> pixels [B,3,H,W] in [-1,1], float32 on the
        CPU, through the graph's own VAE (for previews).

        ComfyUI's `vae.decode` loads the VAE with `load_models_gpu`, which may offload other models to make room
        on a GPU; while the adapter is attached the UNet is loaded back whole, as `attach` loaded it, so the steps
        after a preview round run on the same weights.
        """
        try:
            pixels = self.vae.decode(self.latent_format.process_out(latents.float()))  # [B,H,W,C] in [0,1]
        except comfy.model_management.InterruptProcessingException as exc:
            raise TrainingCancelled() from exc  # a cancel that lands in the decoder: the core's cancel, as in the UNet
        if self._options is not None:
            self._ensure_loaded()
        return (pixels[..., :3].movedim(-1, 1).float().clamp(0, 1) * 2.0 - 1.0).cpu()

    def _ensure_loaded(self) -> None:
        """Load the UNet whole (as `attach` does) unless it still is: not yet loaded, or loading another model (the
        VAE) offloaded some of it."""
        if self.patcher not in comfy.model_management.loaded_models() or \
                self.patcher.loaded_size() < self._loaded_weights:
            log.debug("Loading the MODEL whole onto %s.", self.device)
            self._load()

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions -> {"context": [B, 77, cross_dim]}, and "pooled" [B, P] for a family whose UNet takes a pooled
        text embedding (SDXL), from the graph's CLIP (clip skip and LoRAs included; ComfyUI's own pooled output)."""
        pooled_width = self.family.pooled_width
        rows, pooled = [], []
        for caption in captions:
            cond, pool = self.clip.encode_from_tokens(self.clip.tokenize(caption), return_pooled=True)
            if cond.shape[-1] != self.cross_dim:
                raise IPAdapterError(f"The CLIP gives {cond.shape[-1]}-d text embeddings but this {self.family.label} "
                                     f"MODEL's cross-attention is {self.cross_dim}-d: connect the CLIP of the same "
                                     "checkpoint.")
            if cond.shape[1] > TEXT_TOKENS:
                log.warning("Caption %r is longer than 75 tokens; training uses its first 75, as the diffusers "
                            "back end does.", caption[:60])
            rows.append(cond[:, :TEXT_TOKENS].float().cpu())
            if pooled_width:
                if pool is None or pool.shape[-1] != pooled_width:
                    got = "none" if pool is None else f"a {pool.shape[-1]}-d one"
                    raise IPAdapterError(f"A {self.family.label} MODEL needs a {pooled_width}-d pooled text embedding "
                                         f"but the CLIP gives {got}: connect the CLIP of the same checkpoint.")
                pooled.append(pool[:1].float().cpu())
        out = {"context": torch.cat(rows)}
        if pooled_width:
            out["pooled"] = torch.cat(pooled)
        return out

    def extra_conditioning(self, added: Mapping[str, torch.Tensor] | None, batch: int) -> torch.Tensor:
        """The UNet's `y` [batch, adm_channels] from the pooled text embedding and, for a family with size
        conditioning, each row's time_ids, built by the ComfyUI model's own `encode_adm` (as its sampler does)."""
        family = self.family
        added = added or {}
        missing = [k for k in ("pooled", "time_ids") if k not in added and (k == "pooled" or family.size_conditioning)]
        if missing:
            raise IPAdapterError(f"A {family.label} UNet needs {' and '.join(missing)} with every call (its pooled "
                                 "text embedding and size/crop conditioning); this is a bug in the caller.")
        pooled = added["pooled"].float().cpu().expand(batch, -1)
        sizes = added["time_ids"].float().cpu().expand(batch, -1) if family.size_conditioning else None
        rows = []
        for i in range(batch):
            kwargs: dict[str, Any] = {"pooled_output": pooled[i:i + 1], "device": self.device}
            if sizes is not None:
                kwargs.update(zip(SIZE_KEYS, (int(round(v)) for v in sizes[i].tolist())))
            rows.append(self.base.encode_adm(**kwargs))
        y = torch.cat(rows)
        if y.shape[-1] != family.adm_channels:
            raise IPAdapterError(f"This MODEL's extra conditioning is {y.shape[-1]}-d where a {family.label} UNet "
                                 f"takes {family.adm_channels}: the MODEL is not supported.")
        return y.to(self.device, self.dtype)

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                      ip_tokens: torch.Tensor | None, scale: float = 1.0,
                      added: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The UNet's epsilon prediction, with the image tokens added at `scale` by the attached patches.

        `added` ("pooled", "time_ids") is read by families with extra conditioning (`extra_conditioning`).
        """
        # Tokens stay set after the call, as in the diffusers back end; every call sets them anew.
        self.state.tokens, self.state.scale = ip_tokens, scale
        if self._options is None:  # no adapter attached (the previews' weight-0 images): load it as attach does
            self._ensure_loaded()
        options = dict(self._options if self._options is not None
                       else self.patcher.model_options.get("transformer_options", {}))
        t = timesteps.to(self.device)
        options["cond_or_uncond"] = [0]
        options["sigmas"] = self.sampling.sigmas.to(self.device)[t.long()]
        kwargs = {}
        if self.family.adm_channels:
            kwargs["y"] = self.extra_conditioning(added, noisy.shape[0])
        try:
            return self.unet(noisy.to(self.device, self.dtype), t.float(),
                             context=text.to(self.device, self.dtype), transformer_options=options, **kwargs)
        except comfy.model_management.InterruptProcessingException as exc:
            # ComfyUI's layers check the cancel flag on every op, so a cancel usually lands inside this
            # forward: it is the core's cancel, which saves and returns the adapter trained so far.
            raise TrainingCancelled() from exc

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's block activations during backward instead of keeping them, while the adapter
        is attached (`checkpointing.py`); the MODEL is left as it was on `detach`."""
        self._checkpointing = True


class ComfyImageEncoder:
    """A graph's CLIP_VISION seen as the trainer's `ImageFeatureEncoder` (ComfyUI's own preprocessing)."""

    def __init__(self, clip_vision: Any) -> None:
        self.clip_vision = clip_vision
        model = clip_vision.model
        vision = getattr(model, "vision_model", None)
        projection = getattr(model, "visual_projection", None)
        weight = getattr(projection, "weight", None)
        if vision is None or weight is None:
            raise IPAdapterError(f"The CLIP_VISION given is a {type(model).__name__} without an image projection: "
                                 "IP-Adapters need a CLIP vision model (ViT-L/14, ViT-H/14, ...).")
        self.hidden, self.embedding = int(weight.shape[1]), int(weight.shape[0])
        self.name = f"ComfyUI CLIP_VISION ({self.embedding}-d embedding, {self.hidden}-d hidden states)"

    def feature_width(self, variant: str) -> int:
        """Embedding width (base) or hidden width (plus)."""
        return self.embedding if variant == "base" else self.hidden

    @torch.no_grad()
    def encode_tensor(self, images: torch.Tensor, variant: str) -> torch.Tensor:
        """IMAGE [B,H,W,C] in 0..1 -> [B, D] image embeddings (base) or [B, N, D] penultimate states (plus)."""
        out = self.clip_vision.encode_image(images[..., :3])
        feats = out["image_embeds"] if variant == "base" else out["penultimate_hidden_states"]
        return feats.float().cpu()

    def encode(self, images: Sequence[Image.Image], variant: str) -> torch.Tensor:
        """RGB PIL images -> features, float32 on the CPU (one image at a time: sizes may differ)."""
        return torch.cat([self.encode_tensor(pils_to_tensor([im]), variant) for im in images])

    @torch.no_grad()
    def dropped(self, variant: str) -> torch.Tensor:
        """A dropped image as the core defines it: a zero embedding (base), or the hidden states of an
        all-zero pixel tensor after CLIP normalisation (plus)."""
        if variant == "base":
            return torch.zeros(1, self.embedding)
        cv = self.clip_vision
        comfy.model_management.load_model_gpu(cv.patcher)
        pixels = torch.zeros(1, 3, cv.image_size, cv.image_size, device=cv.load_device)
        return cv.model(pixel_values=pixels, intermediate_output=-2)[1].float().cpu()
