"""The adapter itself: what it is (`spec.py`), the module (`module.py`, the Resampler in `resampler.py`), the
decoupled attention term it adds (`ip_attention.py`), its checks (`check.py`), and its file in the official layout
(`fileformat.py`) with conversion from other containers (`convert.py`)."""
