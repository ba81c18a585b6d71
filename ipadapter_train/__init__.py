"""ipadapter-train: train IP-Adapters for Stable Diffusion (SD1.5 and SDXL) from a handful of images.

The core never imports ComfyUI; the node pack and the CLI both call it through its front door, `api`.
Where things live: `cli/` (the command), `training/` (the loop, its plan and files), `previews/` (what a run
shows while it trains), `scoring/` (judging adapters), `diffusion/` (the frozen model running with an adapter),
`adapter/` (the adapter, its checks and file), `models/` (reading and building the frozen models), `storage/`
(files on disk, safely), over a ground of `config`, `families`, `layout`, `seeds` and `errors` that every wing
reads. A wing imports only wings below it in that list (tests/test_layout.py checks it).
"""
__version__ = "0.1.0"
