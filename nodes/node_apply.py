"""Apply IP-Adapter: a clone of MODEL whose cross-attention layers add the reference image's tokens."""
from __future__ import annotations

import torch

from comfy_api.latest import io

from ..ipadapter_train.api import IPAdapterError
from .attn_patch import apply_image_prompt
from .comfy_backend import ComfyImageEncoder
from .comfy_layers import check_adapter_fits
from .io_types import CATEGORY, IPAdapterTrain
from .queue_checks import GIVEN_ENCODER, queued_refusal


class ApplyIPAdapter(io.ComfyNode):
    """Patches every cross-attention layer of a MODEL clone (all 16 of SD1.5, all 70 of SDXL, the mid block
    included). An adapter of another model family than the MODEL's is refused before anything samples.

    The reference images' CLIP features are averaged into one set of image tokens for the conditional
    half of the batch; the negative image's tokens (or a dropped image's, as in training) serve the
    unconditional half. Works with any sampler, scheduler and KSampler(Advanced); Apply nodes chain.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_Apply",
            display_name="Apply IP-Adapter",
            category=CATEGORY,
            description="Condition a MODEL on reference images with an IP-Adapter. The input MODEL is left "
                        "untouched; several Apply nodes can be chained.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to patch (a clone is returned): SD1.5 or SDXL, the "
                                                "family the adapter was trained for."),
                IPAdapterTrain.Input("adapter", tooltip="The adapter, from Load IP-Adapter or Train IP-Adapter."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder the adapter was trained with "
                                                          "(a mismatch is reported before sampling)."),
                io.Image.Input("image", tooltip="Reference image(s); a batch is averaged in CLIP space."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.01,
                               tooltip="Strength of the image prompt; 0 gives exactly the unpatched model."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the adapter starts acting."),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling after which the adapter stops acting."),
                io.Image.Input("negative_image", optional=True,
                               tooltip="Optional image for the negative (uncond) side; without it, a dropped "
                                       "image is used, as in training."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched MODEL clone.")],
        )

    @classmethod
    def validate_inputs(cls, adapter=None) -> bool | str:
        """When queued: refuse an adapter (from Load IP-Adapter) that does not fit the encoder of Load CLIP Vision,
        as found in the whole graph by `queue_checks.gate` (a node sees only its own values)."""
        return queued_refusal() or True

    @classmethod
    def execute(cls, model, adapter, clip_vision, image, weight, start_at, end_at,
                negative_image=None) -> io.NodeOutput:
        if start_at > end_at:
            raise IPAdapterError(f"start_at ({start_at}) is after end_at ({end_at}): the adapter would never act; "
                                 "make start_at <= end_at.")
        encoder = ComfyImageEncoder(clip_vision)
        variant = adapter.spec.variant
        layers = check_adapter_fits(adapter, encoder.feature_width(variant), GIVEN_ENCODER, model)
        feats = encoder.encode_tensor(image, variant).mean(dim=0, keepdim=True)
        if negative_image is not None:
            negative = encoder.encode_tensor(negative_image, variant).mean(dim=0, keepdim=True)
        else:
            negative = encoder.dropped(variant)
        with torch.no_grad():
            cond = adapter.project(feats.to(next(adapter.parameters()).device))
            uncond = adapter.project(negative.to(cond.device))
        return io.NodeOutput(apply_image_prompt(model, adapter, layers, cond, uncond, weight, start_at, end_at))
