"""`DiffusionBackend` over diffusers components of any family (a UNet, a VAE, the family's text encoders).

How the text encoders' outputs become the UNet's inputs is the family's (`families.TextEncoder`): which hidden
state each gives, side by side as the context, and which one's pooled embedding joins SDXL's size and crop
conditioning (`time_ids`) as `added_cond_kwargs`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..adapter.ip_attention import IPState
from ..adapter.module import IPAdapter
from ..errors import IPAdapterError
from ..layout import AdapterLayer, adapter_layers
from ..models.diffusion_model import DiffusionModel
from .attention import IPAttnProcessor
from .backend import TextEmbeddings


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()


class DiffusersBackend:
    """Trains against a diffusers UNet; the frozen weights may be bf16/fp16, the adapter stays fp32."""

    def __init__(self, sd: DiffusionModel, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.sd = sd
        self.family = sd.family
        self.name = sd.source
        self.device = torch.device(device)
        self.dtype = dtype
        for module in sd.frozen_parts():
            first = next(module.parameters())
            if first.device != self.device or first.dtype != dtype:  # diffusers warns on every .to(dtype)
                module.to(self.device, dtype)
            module.requires_grad_(False)
            module.eval()
        self.cross_dim = int(sd.unet.config.cross_attention_dim)
        self.alphas_cumprod = _alphas_cumprod(sd.scheduler_config)
        self.state = IPState()
        self._layers = adapter_layers(sd.unet.config)
        self._saved_processors: dict | None = None

    def adapter_layers(self) -> list[AdapterLayer]:
        """The UNet's cross-attention layers in file order."""
        return self._layers

    def base_kv(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """to_k / to_v of every cross-attention layer, float32 on CPU."""
        out = {}
        for layer in self._layers:
            attn = self.sd.unet.get_submodule(layer.name)
            out[layer.index] = (attn.to_k.weight.detach().float().cpu(), attn.to_v.weight.detach().float().cpu())
        return out

    def attach(self, adapter: IPAdapter) -> None:
        """Install an `IPAttnProcessor` on every attn2 layer; the adapter must fit the layers."""
        adapter.spec.check_layers(self._layers, f"the UNet of {self.name}")
        if self._saved_processors is None:
            self._saved_processors = dict(self.sd.unet.attn_processors)
        processors = dict(self._saved_processors)
        for layer in self._layers:
            processors[layer.name + ".processor"] = IPAttnProcessor(adapter.layer(layer.index), self.state)
        self.sd.unet.set_attn_processor(processors)

    def detach(self) -> None:
        """Restore the processors the UNet had before `attach`."""
        if self._saved_processors is not None:
            self.sd.unet.set_attn_processor(self._saved_processors)
            self._saved_processors = None
        self.state.tokens = None

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior mean and std, times the scaling factor, so a sample is mean + std * noise."""
        vae = self.sd.vae
        # SDXL's VAE overflows in fp16 (its config says force_upcast): encode in fp32 then, as diffusers does.
        upcast = self.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if upcast:
            vae.to(torch.float32)
        try:
            dist = vae.encode(pixels.to(self.device, torch.float32 if upcast else self.dtype)).latent_dist
        finally:
            if upcast:
                vae.to(self.dtype)
        factor = vae.config.scaling_factor
        return (dist.mean.float() * factor).cpu(), (dist.std.float() * factor).cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B,4,h,w] -> pixels [B,3,H,W] in [-1,1] (float32, CPU), one image at a time (the
        decoder's memory grows with the batch)."""
        vae = self.sd.vae
        if vae is None:
            raise IPAdapterError("The VAE was released after encoding: keep it (release_encoders(keep_vae=True)) "
                                 "to decode previews.")
        upcast = self.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        dtype = torch.float32 if upcast else next(vae.parameters()).dtype
        if upcast:
            vae.to(torch.float32)
        try:
            images = [vae.decode(z[None].to(self.device, dtype) / vae.config.scaling_factor).sample.float().cpu()
                      for z in latents]
        finally:
            if upcast:
                vae.to(self.dtype)
        return torch.cat(images)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> TextEmbeddings:
        """The family's text conditioning: each encoder's chosen hidden state, side by side, and the pooled
        embedding where the family's UNet takes one."""
        contexts, out = [], {}
        for spec, encoder, tokenizer in zip(self.family.text_encoders, self.sd.text_encoders, self.sd.tokenizers):
            if encoder is None:
                raise IPAdapterError("The text encoders were released after encoding: encode text before training.")
            ids = tokenizer(list(captions), padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(self.device)
            result = encoder(ids, output_hidden_states=spec.hidden_state is not None)
            hidden = result.last_hidden_state if spec.hidden_state is None else result.hidden_states[spec.hidden_state]
            contexts.append(hidden.float().cpu())
            if spec.pooled:
                out["pooled"] = result.text_embeds.float().cpu()
        out["context"] = torch.cat(contexts, dim=-1)
        return out

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                      ip_tokens: torch.Tensor | None, scale: float = 1.0,
                      added: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """UNet epsilon prediction with the image tokens routed through the patched layers."""
        # The tokens stay set after the call: gradient checkpointing re-runs the layers during backward
        # and must see the same tokens. Every call sets them anew, so nothing leaks into the next one.
        self.state.tokens, self.state.scale = ip_tokens, scale
        kwargs = {}
        if self.family.addition_embed_type is not None:
            kwargs["added_cond_kwargs"] = added_conditioning(self.family, added, noisy.shape[0], self.device,
                                                             self.dtype)
        return self.sd.unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=text.to(self.dtype),
                            **kwargs).sample

    def enable_gradient_checkpointing(self) -> None:
        """diffusers checkpoints each block; it only applies while the UNet is in train mode."""
        self.sd.unet.enable_gradient_checkpointing()
        self.sd.unet.train()  # neither SD1.5's nor SDXL's UNet has dropout, so train mode changes nothing else


def added_conditioning(family, added: Mapping[str, torch.Tensor] | None, batch: int, device: torch.device,
                       dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """diffusers' `added_cond_kwargs` for a family with extra conditioning: the pooled text embedding as
    `text_embeds` and the size/crop conditioning as `time_ids`, each [batch, ...]."""
    added = added or {}
    missing = [k for k in ("pooled", "time_ids") if k not in added]
    if missing:
        raise IPAdapterError(f"A {family.label} UNet needs {' and '.join(missing)} with every call "
                             "(its pooled text embedding and size/crop conditioning); this is a bug in the caller.")
    return {"text_embeds": added["pooled"].to(device, dtype).expand(batch, -1),
            "time_ids": added["time_ids"].to(device, dtype).expand(batch, -1)}
