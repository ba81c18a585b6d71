"""The frozen diffusion model running with an adapter.

`backend.py` is the seam (`DiffusionBackend`, `ImageFeatureEncoder`) that the trainer, previews and generation
talk to; `diffusers_backend.py` implements it on diffusers, with the decoupled cross-attention processor in
`attention.py`. The ComfyUI node pack implements the same seam on ComfyUI's own model (nodes/comfy_backend.py).
"""
