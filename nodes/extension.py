"""The pack's ComfyExtension: registers its model folders and its route once, and lists its nodes."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .folders import ensure_model_folders
from .node_apply import ApplyIPAdapter
from .node_load import LoadIPAdapter
from .node_load_images import LoadTrainingImages
from .node_save import SaveIPAdapter
from .node_score import ScoreWithCLIP
from .node_search import SearchIPAdapterSettings
from .node_train import TrainIPAdapter
from .queue_checks import register_gate
from .runs import register_routes

NODES: list[type[io.ComfyNode]] = [LoadTrainingImages, TrainIPAdapter, SaveIPAdapter, LoadIPAdapter,
                                   ApplyIPAdapter, ScoreWithCLIP, SearchIPAdapterSettings]


class IPAdapterTrainExtension(ComfyExtension):
    """Lists the seven nodes of CONTRACT.md."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        ensure_model_folders()
        register_routes()
        register_gate()  # any refusal of these nodes refuses the whole prompt (queue_checks.py)
        return list(NODES)
