"""`DiffusionBackend` over diffusers SD1.5 components (a UNet, a VAE, a CLIP text encoder)."""
from __future__ import annotations

from typing import Sequence

import torch

from .adapter import IPAdapter
from .attention import IPAttnProcessor
from .ip_attention import IPState
from .layout import AdapterLayer, adapter_layers
from .sd15 import SD15


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()


class DiffusersBackend:
    """Trains against a diffusers UNet; the frozen weights may be bf16/fp16, the adapter stays fp32."""

    def __init__(self, sd: SD15, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.sd = sd
        self.name = sd.source
        self.device = torch.device(device)
        self.dtype = dtype
        for module in (sd.unet, sd.vae, sd.text_encoder):
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
        dist = self.sd.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        factor = self.sd.vae.config.scaling_factor
        return (dist.mean.float() * factor).cpu(), (dist.std.float() * factor).cpu()

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Last hidden state of the CLIP text encoder, as SD1.5 conditions on it."""
        tok = self.sd.tokenizer(list(captions), padding="max_length", truncation=True,
                                max_length=self.sd.tokenizer.model_max_length, return_tensors="pt")
        return self.sd.text_encoder(tok.input_ids.to(self.device))[0].float().cpu()

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                      ip_tokens: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
        """UNet epsilon prediction with the image tokens routed through the patched layers."""
        # The tokens stay set after the call: gradient checkpointing re-runs the layers during backward
        # and must see the same tokens. Every call sets them anew, so nothing leaks into the next one.
        self.state.tokens, self.state.scale = ip_tokens, scale
        return self.sd.unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=text.to(self.dtype)).sample

    def enable_gradient_checkpointing(self) -> None:
        """diffusers checkpoints each block; it only applies while the UNet is in train mode."""
        self.sd.unet.enable_gradient_checkpointing()
        self.sd.unet.train()  # SD1.5 has no dropout, so train mode changes nothing else
