"""Save IP-Adapter: writes models/ipadapter/<name>.safetensors, atomically, never silently overwriting."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from comfy_api.latest import io, ui

from ..ipadapter_train.api import (IPAdapterError, output_lock, remove_stale_temporaries, replace_file, save_adapter,
                                   temp_sibling)
from .folders import adapter_target
from .io_types import CATEGORY, IPAdapterTrain

log = logging.getLogger(__name__)


def _publish(staged, target, overwrite: bool) -> None:
    """Move a finished file into place: replace when allowed, else a link that fails if the name exists."""
    if overwrite:
        replace_file(staged, target)
        return
    try:
        os.link(staged, target)  # atomic and refuses an existing name, even one created meanwhile
    except FileExistsError:
        raise IPAdapterError(f"{target.name} already exists in {target.parent}: choose another name or set "
                             "overwrite to true.") from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise IPAdapterError(f"{target.name} already exists in {target.parent}: choose another name or set "
                                 "overwrite to true.") from None
        replace_file(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def _check_target(name: str, overwrite: bool) -> Path:
    """models/ipadapter/<name>.safetensors, or IPAdapterError for a bad name or an existing file not to replace."""
    target = adapter_target(name)
    if target.exists() and not overwrite:
        raise IPAdapterError(f"{target.name} already exists in {target.parent}: choose another name or set "
                             "overwrite to true.")
    return target


class SaveIPAdapter(io.ComfyNode):
    """Saves an adapter in the official layout (fp16 .safetensors) with the core's metadata."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_Save",
            display_name="Save IP-Adapter",
            category=CATEGORY,
            description="Save an adapter to models/ipadapter (the folder IPAdapter_plus also reads).",
            inputs=[
                IPAdapterTrain.Input("adapter", tooltip="The adapter to save, e.g. from Train IP-Adapter."),
                io.String.Input("name", default="my_adapter",
                                tooltip="File name without folder: any letters, digits and signs except "
                                        "/ \\ < > : \" | ? * and a leading '.'; .safetensors is added."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name (atomically). Off: an existing "
                                         "name is an error."),
            ],
            outputs=[io.String.Output(display_name="path",
                                      tooltip="The full path of the saved file (also in the node's output; connect "
                                              "Preview as Text to see it on the canvas).")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name, overwrite) -> bool | str:
        """Check the name and the overwrite setting when the graph is queued, not after training."""
        if name is None or overwrite is None:  # fed by another node: checked when Save runs
            return True
        try:
            _check_target(name, bool(overwrite))
        except IPAdapterError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, adapter, name, overwrite) -> io.NodeOutput:
        target = _check_target(name, bool(overwrite))  # again: the file may have appeared since queueing
        target.parent.mkdir(parents=True, exist_ok=True)
        # the core's guard: a second server (or CLI run) writing this file now is refused, not raced
        with output_lock(target, "the adapter"):
            remove_stale_temporaries(target, time.time())  # what a save killed mid-write left (we hold the lock)
            # staged in a temp folder named after the target, where the line above finds it after a kill
            holder = temp_sibling(target)
            holder.mkdir()
            try:
                staged = save_adapter(adapter.state_dict(), holder / target.name, getattr(adapter, "metadata", None))
                _publish(staged, target, bool(overwrite))
            finally:
                shutil.rmtree(holder, ignore_errors=True)
        cancelled = (getattr(adapter, "metadata", None) or {}).get("cancelled")
        if cancelled:  # only the cancelled prompt itself gets here with a partial adapter (see runs.py)
            log.warning("Saved a partial IP-Adapter (%s) to %s", cancelled, target)
            return io.NodeOutput(str(target), ui=ui.PreviewText(f"{target}\nPartial adapter: {cancelled}."))
        log.info("Saved IP-Adapter to %s", target)
        return io.NodeOutput(str(target), ui=ui.PreviewText(str(target)))
