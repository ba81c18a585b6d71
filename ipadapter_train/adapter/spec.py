"""What an adapter is, without its weights: `AdapterSpec` (variant, encoder width, tokens, layer widths), the
variants and their token counts, and the words that name an adapter's kind in sentences.

A spec is read back from any official-layout state dict by `adapter.check.check_adapter_state`;
`adapter.module.IPAdapter` builds the module a spec describes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from ..errors import IPAdapterError
from ..families import FAMILIES, ModelFamily, family_of_width
from ..layout import AdapterLayer
from .resampler import DEFAULT_DIM

Variant = Literal["base", "plus"]
VARIANTS = ("base", "plus")
DEFAULT_TOKENS = {"base": 4, "plus": 16}


def default_resampler_dim(cross_dim: int) -> int:
    """The Resampler width of a new plus adapter: the family's for that cross width, else `DEFAULT_DIM`."""
    family = family_of_width(cross_dim)
    return family.resampler_dim if family is not None else DEFAULT_DIM


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter file needs: variant, its image-encoder width, token count and layer widths."""

    variant: Variant
    clip_dim: int  # base: CLIP image-embedding width (after projection); plus: CLIP hidden width
    cross_dim: int  # the UNet's cross-attention width (768 for SD1.5)
    tokens: int
    layers: tuple[tuple[int, int], ...]  # (n, hidden) for each ip_adapter.<n>
    # plus: the Resampler's width (its heads are 64-d: width / 64 heads); None means the default for
    # cross_dim (`default_resampler_dim`), filled in on construction. base: always None.
    resampler_dim: int | None = None

    def __post_init__(self) -> None:
        if self.variant == "plus" and self.resampler_dim is None:
            # Filled in so that a spec built here equals the one read back from its file.
            object.__setattr__(self, "resampler_dim", default_resampler_dim(self.cross_dim))
        elif self.variant == "base" and self.resampler_dim is not None:
            raise IPAdapterError("A base adapter has no Resampler: leave resampler_dim unset.")

    @property
    def family(self) -> ModelFamily | None:
        """The family the adapter was made for, read from its shapes (context width, then layer count), or None.

        The context width is what IPAdapter_plus reads (2048 = SDXL); a file with a known width but another
        layer count (an SSD-1B adapter, say) still belongs to that family's conditioning.
        """
        return family_of_width(self.cross_dim, len(self.layers))

    def check_fits(self, feature_width: int, encoder_name: str, cross_dim: int, layers: Sequence[AdapterLayer],
                   model_name: str, source: str = "The adapter", model_family: ModelFamily | None = None,
                   metadata: Mapping[str, str] | None = None, fix: str = "use {file} as the image encoder") -> None:
        """Raise IPAdapterError unless the adapter reads the encoder's features and fits the UNet.

        `feature_width` is what the encoder gives for this adapter's variant (`encoder_name` says which
        encoder), `cross_dim` and `layers` describe the UNet (`model_name`), `model_family` its family when
        the caller knows it (else it is read from `cross_dim` and the layer count). An adapter of another
        family is refused first, naming both families. A wrong image encoder is named, with the one the
        adapter was trained with (its `metadata` records it, else its width tells it) and `fix` (where to
        load `{file}`, the encoder that fits; `models.image_encoders.mismatch_sentence`). The CLI, generation and
        the nodes all check with this, before any work is spent.
        """
        from ..models.image_encoders import mismatch_sentence

        self.check_family(model_family or family_of_width(cross_dim, len(layers)), model_name, source)
        if self.clip_dim != feature_width:
            raise IPAdapterError(mismatch_sentence(self.variant, self.clip_dim, metadata, feature_width,
                                                   encoder_name, source, fix))
        if self.cross_dim != cross_dim:
            widths = ", ".join(f"{f.label} is {f.cross_dim}" for f in FAMILIES.values())
            raise IPAdapterError(f"{source} is for a {self.cross_dim}-d cross-attention model, but {model_name} has "
                                 f"{cross_dim}-d cross-attention ({widths}): use the base model family the "
                                 "adapter was trained for.")
        self.check_layers(layers, model_name, source)

    def check_family(self, model_family: ModelFamily | None, model_name: str, source: str = "The adapter") -> None:
        """Raise IPAdapterError, naming both families, when the adapter is for another family than the model's
        (nothing is said when either family is unknown). Cheap: callers run it before loading a model."""
        ours = self.family
        if ours is None or model_family is None or ours == model_family:
            return
        what = family_phrase(self.variant, len(self.layers), self.cross_dim)
        if len(self.layers) == ours.adapter_layer_count:  # else the phrase already gives the count
            what += f" ({len(self.layers)} cross-attention layers)"
        raise IPAdapterError(
            f"{source} is {what} and is for a {self.cross_dim}-d cross-attention model, but {model_name} is "
            f"{model_family.describe()}: use an adapter trained for {model_family.label}, or "
            f"{article(ours.label)} {ours.label} model.")

    def check_layers(self, layers: Sequence[AdapterLayer], model_name: str = "the model",
                     source: str = "The adapter") -> None:
        """Raise IPAdapterError unless the adapter has weights of the right width for every layer."""
        have = dict(self.layers)
        want = {layer.index: layer.hidden for layer in layers}
        if have != want:
            missing = sorted(set(want) - set(have))
            wrong = sorted(n for n in set(want) & set(have) if want[n] != have[n])
            raise IPAdapterError(
                f"{source} has {len(have)} layers that do not fit {model_name} ({len(want)} cross-attention layers; "
                f"missing indices {missing}, wrong widths at {wrong}): it was trained for another UNet.")


def article(word: str) -> str:
    """'a' or 'an' before a label or number read aloud ('an SDXL', 'an SD1.5', 'an 8-layer', 'a 16-layer')."""
    digits = word[:len(word) - len(word.lstrip("0123456789"))]
    if digits:  # eight..., eleven, eighteen (and their thousands): the sounds that start with a vowel
        return "an" if digits[0] == "8" or (len(digits) % 3 == 2 and digits[:2] in ("11", "18")) else "a"
    if word[:1].islower():  # a word read as a word: 'a learned world', 'an image'
        return "an" if word[:1] in "aeiou" else "a"
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"  # letters read aloud: 'an SDXL', 'an SD1.5'



def family_phrase(variant: str, n_layers: int, cross_dim: int | None) -> str:
    """The adapter in words, its model family named where the shapes tell it: 'an SDXL plus adapter'.

    A family's own layer count (and width, when known) names the family alone; a family's width with
    another count gives 'a 44-layer SDXL base adapter'; no family: 'a 4-layer base adapter'.
    """
    for family in FAMILIES.values():
        if n_layers == family.adapter_layer_count and cross_dim in (None, family.cross_dim):
            return f"{article(family.label)} {family.label} {variant} adapter"
    family = family_of_width(cross_dim, n_layers) if cross_dim is not None else None
    count = f"{n_layers}-layer"
    return f"{article(count)} {count} {family.label + ' ' if family else ''}{variant} adapter"
