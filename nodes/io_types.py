"""The pack's custom ComfyUI type and category, defined once for every node.

IPADAPTER_TRAIN travels between nodes as an opaque value: an `ipadapter_train.api.IPAdapter` module
(fp32, on the CPU) with a `.metadata: dict[str, str]` attribute. It is deliberately not IPAdapter_plus's
IPADAPTER type, whose nodes expect their own dictionary.
"""
from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "ipadapter_train"
IPAdapterTrain = io.Custom("IPADAPTER_TRAIN")
