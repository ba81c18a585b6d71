"""Files on disk, safely: atomic weight writes and reads that never run a pickle (`weights_io.py`), paths kept
inside their folders (`safe_paths.py`), failed writes and their leftovers (`write_failures.py`), one run per
output (`output_lock.py`), and the user's images (`data.py`, `image_ops.py`, `common_size.py`).

Not named `io`: the nodes already import ComfyUI's `comfy_api.latest.io`.
"""
