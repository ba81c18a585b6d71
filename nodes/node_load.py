"""Load IP-Adapter: an adapter file from models/ipadapter, this pack's or a public one."""
from __future__ import annotations

import os

from comfy_api.latest import io

from .folders import adapter_files, adapter_path
from .io_types import CATEGORY, IPAdapterTrain
from ..ipadapter_train.api import load_adapter_module


class LoadIPAdapter(io.ComfyNode):
    """Reads .safetensors or tencent .bin files through the core's safe loader (pickles weights-only).

    Public ip-adapter_sd15 / ip-adapter-plus_sd15 (and SDXL) files load too. A damaged file (a missing or wrongly
    shaped key, NaN weights, a cut header) is refused in one sentence by the core's check; whether a
    sound file fits the CLIP_VISION and MODEL is checked by Apply (or Train) before anything samples.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_Load",
            display_name="Load IP-Adapter",
            category=CATEGORY,
            description="Load an IP-Adapter (base or plus, SD1.5 or SDXL) from models/ipadapter.",
            inputs=[io.Combo.Input("adapter_name", options=adapter_files(),
                                   tooltip="An adapter file in models/ipadapter (.safetensors or .bin).")],
            outputs=[IPAdapterTrain.Output(display_name="adapter", tooltip="The adapter, fp32, with its metadata.")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name) -> str:
        """Reload when the file changes on disk (e.g. saved again with overwrite)."""
        try:
            stat = os.stat(adapter_path(adapter_name))
        except Exception:  # noqa: BLE001 - a missing file is reported by execute
            return adapter_name
        return f"{adapter_name}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        return io.NodeOutput(load_adapter_module(adapter_path(adapter_name)).eval().requires_grad_(False))
