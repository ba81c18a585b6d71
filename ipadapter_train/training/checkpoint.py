"""Resumable training state as plain files: no pickle anywhere.

    <run_dir>/checkpoint/adapter.safetensors    fp32 adapter weights (official key layout)
    <run_dir>/checkpoint/optimizer.safetensors  AdamW moments, flattened as state.<param>.<name>
    <run_dir>/checkpoint/state.json             step, config, losses, param groups, dataset fingerprint
    <run_dir>/checkpoint/<name>.safetensors     extra weights a run keeps with its state (the best preview
                                                step's adapter: `previews/runner.py`), listed in state.json

Every random draw of step s is a function of (seed, s, rank) (see training/batches.py), so the step number
*is* the RNG state: a resumed run draws exactly what an uninterrupted one would have drawn.
The folder is written beside the old one and swapped in (`storage.weights_io.atomic_write_dir`), so a crash
leaves the previous checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import IPAdapterError
from ..storage.weights_io import atomic_write_dir, atomic_write_text, save_safetensors_atomic

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainingState:
    """What `load_checkpoint` returns."""

    step: int
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    info: dict[str, Any]  # state.json: config, losses, fingerprint, ...
    extra: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)  # by name


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: Path, step: int, adapter: dict[str, torch.Tensor], optimizer: dict[str, Any],
                    info: dict[str, Any], extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write the checkpoint folder atomically (new folder, then swap) and return its path; `extra` weights go
    beside the adapter as `<name>.safetensors`."""
    tensors, groups = _flatten_optimizer(optimizer)
    extra = {name: weights for name, weights in (extra or {}).items() if weights}

    def write(folder: Path) -> None:
        save_safetensors_atomic({k: v.detach().float().cpu() for k, v in adapter.items()},
                                folder / "adapter.safetensors")
        save_safetensors_atomic(tensors, folder / "optimizer.safetensors")
        for name, weights in extra.items():
            save_safetensors_atomic({k: v.detach().float().cpu().contiguous() for k, v in weights.items()},
                                    folder / f"{name}.safetensors")
        atomic_write_text(folder / "state.json", json.dumps({**info, "step": step, "param_groups": groups,
                                                             "extra_weights": sorted(extra)}, indent=1))

    final = atomic_write_dir(Path(run_dir) / CHECKPOINT_DIR, write)
    log.debug("saved the step-%d checkpoint to %s", step, final)
    return final


def find_checkpoint(path: Path) -> Path:
    """Accept a run folder or its checkpoint folder; raise IPAdapterError if neither holds one."""
    path = Path(path)
    for candidate in (path / CHECKPOINT_DIR, path):
        if (candidate / "state.json").is_file():
            return candidate
    raise IPAdapterError(f"No training checkpoint in {path}: give the run folder of an earlier run "
                         f"(it holds {CHECKPOINT_DIR}/state.json).")


def _damaged(folder: Path, exc: Exception) -> IPAdapterError:
    return IPAdapterError(f"The checkpoint in {folder} is damaged ({exc}): resume from another run or start anew.")


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint found on disk: its folder and its state.json (step, config, data set, losses), read once."""

    folder: Path
    info: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        """The training settings the checkpoint was written with, as `TrainConfig.to_dict` gives them."""
        return self.info["config"]


def open_checkpoint(path: Path | SavedCheckpoint) -> SavedCheckpoint:
    """Find the checkpoint in a run folder (or its checkpoint folder) and read its state.json, not its tensors."""
    if isinstance(path, SavedCheckpoint):
        return path
    folder = find_checkpoint(path)
    try:
        info = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise _damaged(folder, exc) from exc
    problem = state_problem(info)
    if problem:
        raise _damaged(folder, problem)
    return SavedCheckpoint(folder, info)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _config_problem(config: Any) -> str | None:
    """What is wrong with state.json's "config", by the types of `TrainConfig`'s defaults; None if nothing."""
    from ..config import TrainConfig

    if not isinstance(config, dict):
        return f"its config is {_JSON_KINDS.get(type(config), type(config).__name__)}, not an object"
    defaults = TrainConfig().to_dict()
    for name, value in config.items():
        if name not in defaults:
            return f"its config has an unknown setting {name!r}"
        default = defaults[name]
        if name in _OPTIONAL_INTS:
            ok = value is None or _is_int(value)
        elif name == "preview_every":
            ok = value == "auto" or _is_int(value)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value)
        elif isinstance(default, float):
            ok = _is_number(value)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(_is_number(v) for v in value)
        else:  # strings and the free-form `extra` dict
            ok = isinstance(value, type(default))
        if not ok:
            return f"its config has {name} = {json.dumps(value)[:40]}"
    return None  # values of the right types but out of bounds are the settings check's (`TrainConfig.validate`)


_OPTIONAL_INTS = ("resolution", "max_steps", "preview_size")
_JSON_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def state_problem(info: Any) -> str | None:
    """Why a state.json's content cannot be a checkpoint's (the wrong JSON types), or None if it can.

    Checked when the checkpoint is opened, so a damaged or hand-edited file is one sentence before any work,
    never a traceback halfway through a resume."""
    if not isinstance(info, dict):
        return f"state.json holds {_JSON_KINDS.get(type(info), type(info).__name__)}, not an object"
    for name, check, what in (("step", lambda v: _is_int(v) and v >= 0, "a step count"),
                              ("config", lambda v: True, ""),
                              ("param_groups", lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v),
                               "a list of objects")):
        if name not in info:
            return f"state.json has no {name}"
        if not check(info[name]):
            return f"state.json's {name} is not {what}"
    problem = _config_problem(info["config"])
    if problem:
        return problem
    for name, check, what in (("losses", lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
                               "a list of numbers"),
                              ("dataset", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                               "a list of names"),
                              ("extra_weights", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                               "a list of names"),
                              ("previews", lambda v: v is None or isinstance(v, dict), "an object"),
                              ("trained_on", lambda v: isinstance(v, dict), "an object")):
        if name in info and not check(info[name]):
            return f"state.json's {name} is not {what}"
    return None


def load_checkpoint(path: Path | SavedCheckpoint) -> TrainingState:
    """Read a checkpoint written by `save_checkpoint`; an opened one's state.json is not read again."""
    saved = open_checkpoint(path)
    try:
        adapter = load_file(str(saved.folder / "adapter.safetensors"))
        tensors = load_file(str(saved.folder / "optimizer.safetensors"))
        # plain names only: a state.json never leads a load out of its own folder
        extra = {name: load_file(str(saved.folder / f"{name}.safetensors"))
                 for name in saved.info.get("extra_weights", []) if str(name).isidentifier()}
    except (OSError, ValueError, SafetensorError) as exc:
        raise _damaged(saved.folder, exc) from exc
    info = dict(saved.info)
    groups = info.pop("param_groups")
    return TrainingState(int(info["step"]), adapter, _unflatten_optimizer(tensors, groups), info, extra)
