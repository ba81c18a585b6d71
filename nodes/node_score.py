"""Score with CLIP: CLIP-I against reference images and/or CLIP-T against a prompt, with the core's Scorer."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from comfy_api.latest import io

from ..ipadapter_train.api import Scorer, format_report
from .folders import scorer_choices, scorer_path
from .images import pils_to_tensor, table_image, tensor_to_pils
from .io_types import CATEGORY


@functools.lru_cache(maxsize=1)
def _scorer(path: str, stamp: int) -> Scorer:  # noqa: ARG001 - the stamp only invalidates the cache
    return Scorer.load(Path(path))


def _load(path: Path) -> Scorer:
    """The scorer at `path`, kept loaded between runs until another one (or a changed file) is asked for."""
    return _scorer(str(path), os.stat(path).st_mtime_ns)


def _rows(report) -> list[tuple[str, str]]:
    rows = []
    if report.clip_i_mean is not None:
        rows.append(("CLIP-I (image vs reference)", f"{report.clip_i_mean:.4f}"))
    if report.clip_t_mean is not None:
        rows.append(("CLIP-T cosine (image vs prompt)", f"{report.clip_t_mean:.4f}"))
        rows.append(("CLIPScore (2.5 x max(cos, 0))", f"{report.clip_score_mean:.4f}"))
    rows.append(("combined", f"{report.percent:.1f}%"))
    rows.append(("grade", report.grade))
    rows.append(("images / references", f"{report.num_images} / {report.num_references}"))
    if report.random_weights:
        rows.append(("note", "random-weight scorer"))
    return rows


class ScoreWithCLIP(io.ComfyNode):
    """Scores generated images with a full CLIP model (vision and text towers), as in the IP-Adapter paper."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IPAdapterTrain_Score",
            display_name="Score with CLIP",
            category=CATEGORY,
            description="CLIP-I, CLIP-T / CLIPScore, a combined percent and a grade for generated images.",
            inputs=[
                io.Image.Input("images", tooltip="The generated images to score."),
                io.Combo.Input("scorer", options=scorer_choices(),
                               tooltip="A full CLIP model (e.g. openai/clip-vit-large-patch14) in "
                                       "models/clip_scorers (folder or .safetensors) or models/clip."),
                io.Image.Input("reference", optional=True,
                               tooltip="Reference image(s) for CLIP-I; several are averaged."),
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="The prompt for CLIP-T; leave empty to score CLIP-I only."),
            ],
            outputs=[io.String.Output(display_name="scores", tooltip="The scores, grade and scale as text."),
                     io.Image.Output(display_name="table", tooltip="The scores as a small table image.")],
        )

    @classmethod
    def execute(cls, images, scorer, prompt, reference=None) -> io.NodeOutput:
        model = _load(scorer_path(scorer))
        text = prompt.strip() if prompt and prompt.strip() else None
        refs = tensor_to_pils(reference) if reference is not None else None
        report = model.score(tensor_to_pils(images), refs, text)
        table = table_image(f"Scored by {report.scorer}", _rows(report))
        return io.NodeOutput(format_report(report), pils_to_tensor([table]))
