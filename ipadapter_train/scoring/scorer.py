"""Score generated images with a full CLIP model: CLIP-I, CLIP-T / CLIPScore, a combined percent, a grade.

The figures follow the IP-Adapter paper's Table 1: CLIP-I is the cosine of the CLIP image embeddings
of a generated image and the image prompt, CLIP-T is CLIPScore = 2.5 * max(cos, 0) of the generated
image and the text prompt (Hessel et al. 2021). The paper's SD1.5 IP-Adapter scored CLIP-I 0.828 and
CLIPScore 0.588 with OpenAI CLIP ViT-L/14. No figure is rescaled beyond that published definition.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import IPAdapterError
from ..models.clip_model import load_clip, load_clip_tokenizer
from ..models.clip_vision import image_processor
from ..models.random_init import is_random
from ..models.sd15 import load_tokenizer

log = logging.getLogger(__name__)

CLIPSCORE_WEIGHT = 2.5  # Hessel et al.'s w; the paper's CLIP-T 0.588 is 2.5 x a cosine near 0.235
# (lower bound in percent, grade), best first: the kit's bands
GRADE_BANDS: tuple[tuple[float, str], ...] = ((90.0, "A+"), (80.0, "A"), (70.0, "B"), (60.0, "C"))
SCALE_SENTENCE = (
    "Combined = 100 x the mean of the available figures among max(mean CLIP-I, 0) and min(mean CLIPScore, 1), "
    "read as a percent; CLIP-I is the raw image-image cosine and CLIPScore is 2.5 x max(image-text cosine, 0) "
    "as in the IP-Adapter paper's Table 1, with no other rescaling; the grade bands (A+ >= 90, A >= 80, "
    "B >= 70, C >= 60, F below 60) apply to that percent. For scale: the paper's SD1.5 IP-Adapter "
    "(CLIP-I 0.828, CLIPScore 0.588 with OpenAI ViT-L/14) would be 70.8%, a B.")
_PATCH = "vision_model.embeddings.patch_embedding.weight"
_PROJ = "visual_projection.weight"


def grade(percent: float) -> str:
    """The kit's letter grade of a combined percent: A+ >= 90, A >= 80, B >= 70, C >= 60, else F."""
    if not isinstance(percent, (int, float)) or not math.isfinite(percent):
        raise IPAdapterError(f"A grade needs a finite percent, not {percent!r}.")
    for bound, letter in GRADE_BANDS:
        if percent >= bound:
            return letter
    return "F"


def combined(clip_i: float | None, clip_score: float | None) -> float:
    """The kit's combined figure in [0, 1] (x 100 = the percent it grades): the mean of max(CLIP-I, 0) and
    min(CLIPScore, 1), of those given."""
    parts = [max(clip_i, 0.0)] if clip_i is not None else []
    if clip_score is not None:
        parts.append(min(clip_score, 1.0))
    if not parts:
        raise IPAdapterError("A combined percent needs CLIP-I, CLIPScore or both.")
    return sum(parts) / len(parts)


def vision_fingerprint(model: Any) -> str:
    """A short hash of a vision tower's patch embedding and image projection.

    Works on a `CLIPModel` and on a `CLIPVisionModelWithProjection` (both name those weights the same),
    so the encoder that conditioned an adapter can be compared with the scorer. The weights are hashed
    at float16, so the same encoder loaded at another precision still matches.
    """
    state = model.state_dict() if hasattr(model, "state_dict") else model
    if _PATCH not in state or _PROJ not in state:
        raise IPAdapterError(f"A vision fingerprint needs {_PATCH} and {_PROJ}; this model lacks them.")
    digest = hashlib.sha256()
    for key in (_PATCH, _PROJ):
        t = state[key].detach().to(device="cpu", dtype=torch.float16).contiguous()
        digest.update(f"{key}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.int16).numpy().tobytes())  # raw bits: bfloat16-safe, no numpy fp16 quirks
    return digest.hexdigest()[:16]


@dataclass
class ScoreReport:
    """The figures of one scoring call and everything needed to read them honestly."""

    scorer: str  # the scoring model's name
    scorer_fingerprint: str
    random_weights: bool
    num_images: int
    num_references: int
    prompt: str | None
    clip_i: list[float] | None  # per generated image, raw cosine vs the (mean) reference
    clip_i_mean: float | None
    clip_t: list[float] | None  # per generated image, raw image-text cosine
    clip_t_mean: float | None
    clip_score: list[float] | None  # per generated image, 2.5 * max(cos, 0)
    clip_score_mean: float | None
    combined: float  # in [0, 1]: the mean of the available figures, clamped as the scale says
    percent: float  # 100 * combined
    grade: str
    scale: str  # the sentence saying what `percent` is and what the grade bands grade
    conditioning_fingerprint: str | None = None
    warnings: list[str] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the report."""
        return asdict(self)


def _check_images(images: Any, what: str) -> list[Any]:
    from PIL import Image

    if not isinstance(images, (list, tuple)) or not images:
        raise IPAdapterError(f"{what} must be a non-empty list of PIL images.")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise IPAdapterError(f"{what}[{i}] is a {type(im).__name__}, not a PIL image.")
    return [im.convert("RGB") for im in images]


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class Scorer:
    """A full CLIP model with its tokenizer and image preprocessing, ready to score images."""

    def __init__(self, model: Any, tokenizer: Any = None, name: str | None = None,
                 random_weights: bool | None = None, batch_size: int = 16) -> None:
        """Wrap a `CLIPModel`; `random_weights` defaults to the marker `build_clip`/`save_clip` leave."""
        if not hasattr(model, "get_text_features") or not hasattr(model, "get_image_features"):
            raise IPAdapterError(f"{type(model).__name__} is not a full CLIP model; scoring needs both towers, "
                                 "e.g. openai/clip-vit-large-patch14.")
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self.image_processor = image_processor(model.config.vision_config.image_size)
        self.random_weights = (is_random(model)
                               if random_weights is None else random_weights)
        self.name = name or ("CLIP (random weights)" if self.random_weights else "CLIP")
        self.batch_size = batch_size
        self.fingerprint = vision_fingerprint(model)
        # positions bound the prompt length: 77 for every released CLIP
        self.max_tokens = min(self.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> "Scorer":
        """Load a scorer from a transformers CLIP folder or one full-CLIP `.safetensors` file, offline."""
        model = load_clip(path, dtype=dtype, device=device)
        return cls(model, load_clip_tokenizer(path), name=Path(path).name)

    def _place(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.model.parameters())
        return p.device, p.dtype

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalised projected CLIP image embeddings [N, D] (float32) of PIL images."""
        images = _check_images(images, "images")
        device, dtype = self._place()
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.image_processor(images=images[start:start + self.batch_size],
                                          return_tensors="pt").pixel_values
            emb = _features(self.model.get_image_features(pixel_values=pixels.to(device=device, dtype=dtype)))
            chunks.append(emb.float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def _tokenize(self, prompts: list[str]) -> Any:
        return self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_tokens,
                              return_tensors="pt")

    def token_count(self, prompt: str) -> int:
        """Tokens in `prompt` with BOS and EOS, before truncation (CLIP keeps the first 77)."""
        # an explicit huge max_length counts every token without transformers' over-length warning
        return len(self.tokenizer(prompt, truncation=True, max_length=1 << 30)["input_ids"])

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised projected CLIP text embeddings [N, D] (float32); prompts are truncated to 77 tokens."""
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise IPAdapterError(f"CLIP-T needs a non-empty prompt; prompt {i} is {p!r}.")
        device, _ = self._place()
        tokens = self._tokenize(prompts)
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(device),
                                           attention_mask=tokens.attention_mask.to(device))
        return torch.nn.functional.normalize(_features(out).float(), dim=-1)

    def score(self, generated: Sequence[Any], reference: Sequence[Any] | None = None, prompt: str | None = None,
              conditioning_fingerprint: str | None = None) -> ScoreReport:
        """Score generated images against reference images (CLIP-I) and/or a prompt (CLIP-T)."""
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise IPAdapterError("CLIP-T needs a non-empty prompt; give the prompt the images were generated "
                                 "from, or leave it out to score CLIP-I only.")
        if reference is None and prompt is None:
            raise IPAdapterError("Nothing to score against: give reference images (for CLIP-I), a prompt "
                                 "(for CLIP-T), or both.")
        gen = self.image_embeddings(_check_images(generated, "generated"))
        warnings: list[str] = []
        clip_i = clip_i_mean = clip_t = clip_t_mean = clip_score = clip_score_mean = None
        if reference is not None:
            refs = self.image_embeddings(_check_images(reference, "reference"))
            # several references: compare with the direction of their mean, as the adapter averages them too
            center = torch.nn.functional.normalize(refs.mean(0), dim=-1)
            clip_i = (gen @ center).tolist()
            clip_i_mean = sum(clip_i) / len(clip_i)
        if prompt is not None:
            cos = (gen @ self.text_embeddings([prompt])[0]).tolist()
            clip_t, clip_t_mean = cos, sum(cos) / len(cos)
            clip_score = [CLIPSCORE_WEIGHT * max(c, 0.0) for c in cos]
            clip_score_mean = sum(clip_score) / len(clip_score)
            n_tokens = self.token_count(prompt)
            if n_tokens > self.max_tokens:
                warnings.append(f"The prompt has {n_tokens} tokens; CLIP-T used its first {self.max_tokens}, "
                                "as CLIP and Stable Diffusion's text encoder both do.")
        if conditioning_fingerprint is not None and reference is not None \
                and conditioning_fingerprint == self.fingerprint:
            warnings.append(f"CLIP-I is flattered: the scoring model {self.name} is the same image encoder that "
                            "conditioned the adapter (fingerprint "
                            f"{self.fingerprint}); score with another CLIP for a fair CLIP-I.")
        both = combined(clip_i_mean, clip_score_mean)
        percent = 100.0 * both
        used = ", ".join(n for n, v in (("CLIP-I", clip_i_mean), ("CLIPScore", clip_score_mean)) if v is not None)
        note = None
        if self.random_weights:
            note = (f"The scoring model {self.name} has random weights: these are random-weight figures that say "
                    "nothing about quality.")
        report = ScoreReport(
            scorer=self.name, scorer_fingerprint=self.fingerprint, random_weights=self.random_weights,
            num_images=gen.shape[0], num_references=0 if reference is None else len(reference), prompt=prompt,
            clip_i=clip_i, clip_i_mean=clip_i_mean, clip_t=clip_t, clip_t_mean=clip_t_mean,
            clip_score=clip_score, clip_score_mean=clip_score_mean, combined=both, percent=percent,
            grade=grade(percent), scale=f"{SCALE_SENTENCE} This report averages: {used}.",
            conditioning_fingerprint=conditioning_fingerprint, warnings=warnings, note=note)
        for w in warnings:
            log.warning("%s", w)
        return report


def format_report(report: ScoreReport) -> str:
    """A short text table of a report, with its scale sentence, warnings and note."""
    def row(label: str, mean: float | None, values: list[float] | None) -> str | None:
        if mean is None:
            return None
        per = " ".join(f"{v:.4f}" for v in (values or [])[:8]) + (" ..." if values and len(values) > 8 else "")
        return f"{label:<12}{mean:>9.4f}   {per}"

    lines = [f"Scored by {report.scorer} (vision fingerprint {report.scorer_fingerprint}); "
             f"{report.num_images} image(s), {report.num_references} reference(s)",
             f"{'figure':<12}{'mean':>9}   per image"]
    lines += [r for r in (row("CLIP-I", report.clip_i_mean, report.clip_i),
                          row("CLIP-T cos", report.clip_t_mean, report.clip_t),
                          row("CLIPScore", report.clip_score_mean, report.clip_score)) if r]
    lines.append(f"{'combined':<12}{report.percent:>8.1f}%   grade {report.grade}")
    lines.append(f"Scale: {report.scale}")
    lines += [f"Warning: {w}" for w in report.warnings]
    if report.note:
        lines.append(f"Note: {report.note}")
    return "\n".join(lines)
