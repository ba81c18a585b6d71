"""The original (LDM / single-file) checkpoint layout: key names of the UNet, text encoders and VAE
(`keys.py`, `unet.py`, `text.py`, `vae.py`) and whole-checkpoint conversion both ways (`layout.py`)."""
