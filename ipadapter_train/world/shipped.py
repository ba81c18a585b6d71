"""Where the shipped learned world lives, and its files by name."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import IPAdapterError
from .build import FILES


def shipped_world() -> Path:
    """The folder of the world that ships with the package (built by `make-learned-world`, recipe in world.json)."""
    return Path(str(resources.files("ipadapter_train") / "assets" / "learned_world"))


def world_files(folder: Path | None = None) -> dict[str, Path]:
    """The world's files in `folder` (default: the shipped one); one sentence when any is missing."""
    folder = Path(folder) if folder is not None else shipped_world()
    files = {name: folder / file for name, file in FILES.items()}
    missing = [p.name for name in ("model", "clip", "reader") if not (p := files[name]).is_file()]
    if missing:
        raise IPAdapterError(f"{folder} has no learned world ({', '.join(missing)} missing): build one with "
                             f"`ipadapter-train make-learned-world DIR` and give --world DIR.")
    return files
