"""The pack's ComfyUI nodes (V3 schema). Each node is one class in its own `node_*.py` module; the
ComfyUI back end of the training core is in `comfy_backend.py`, the attention patches in `attn_patch.py`."""
