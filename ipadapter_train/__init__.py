"""ipadapter-train: train IP-Adapters for Stable Diffusion 1.5 from a handful of images.

The core never imports ComfyUI; the node pack and the CLI both call this package.
"""
__version__ = "0.1.0"
