"""The search space: what each trial of a search draws, and how a user's space file changes it.

    space = load_space(Path("space.toml"))          # the defaults, with the file's entries in their place
    values = space.suggest(trial)                   # an Optuna trial draws one value per setting
    config = space.config(base, values)             # a TrainConfig for that trial's ordinary training run

A space file is TOML, one table per setting; each entry replaces that setting's default range:

    [learning_rate]              # a range; log = true draws on a log scale
    low = 1e-5
    high = 3e-4
    log = true

    [max_steps]                  # whole numbers, in steps of `step`
    low = 100
    high = 600
    step = 50

    [variant]                    # one of a list
    choices = ["base", "plus"]

    [batch_size]                 # a fixed value: not searched
    value = 2

`drop` is the condition dropout: one value for the recipe's three (text, image, both). Any other TrainConfig field
that holds a number or a word may be fixed or searched too (e.g. `weight_decay`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import IPAdapterError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI, before Python 3.11
    import tomli as tomllib

DROP = "drop"  # one value for drop_text, drop_image and drop_both
DROP_FIELDS = ("drop_text", "drop_image", "drop_both")
# settings a search must not draw: where the run writes, what it previews and how it judges (the objective itself)
NOT_SEARCHED = {"extra", "preview_every", "preview_size", "preview_steps", "preview_guidance", "preview_weights",
                "preview_seed", "keep", "early_stop", "checkpoint_every", "validation", "validation_timesteps",
                "validation_max_images", "mixed_precision", "resolution", "epochs"}


@dataclass(frozen=True)
class Setting:
    """One setting of the space: a float or int range (`log`, `step`), a list of `choices`, or a fixed `value`."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None

    def suggest(self, trial) -> Any:
        """This setting's value for `trial` (an optuna.Trial; a fixed value is not drawn)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.low is None:
            return self.value
        if self.step is not None:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        """In words, for the search's summary and page: "1e-05 to 0.001 (log)", "base | plus", "= 2"."""
        if self.choices is not None:
            return " | ".join(str(c) for c in self.choices)
        if self.low is None:
            return f"= {self.value}"
        return f"{self.low:g} to {self.high:g}" + (" (log)" if self.log else "") + (
            f" in steps of {self.step}" if self.step not in (None, 1) else "")


# The default space, sized for 5-50 images on one GPU (and the learned world on a CPU): the learning rates the
# recipes use and some either side, a few hundred steps, both variants, batches a 24 GB card holds at 512 px.
DEFAULT_SPACE = (
    Setting("learning_rate", 1e-5, 1e-3, log=True),
    Setting("max_steps", 100, 1000, step=50),
    Setting("variant", choices=("base", "plus")),
    Setting("batch_size", choices=(1, 2, 4)),
    Setting(DROP, 0.0, 0.1),
)


@dataclass(frozen=True)
class SearchSpace:
    """The settings a search draws, in order."""

    settings: tuple[Setting, ...] = DEFAULT_SPACE

    def suggest(self, trial) -> dict[str, Any]:
        """One value per setting, drawn by `trial` (fixed ones as they are)."""
        return {s.name: s.suggest(trial) for s in self.settings}

    def searched(self) -> list[str]:
        """The names of the settings that are drawn (not fixed)."""
        return [s.name for s in self.settings if not s.fixed]

    def config(self, base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
        """`base` with a trial's values in place (`drop` sets the three condition dropouts), validated."""
        changes = {k: v for k, v in values.items() if k != DROP}
        if DROP in values:
            changes.update({f: values[DROP] for f in DROP_FIELDS})
        if "max_steps" in changes:
            changes["max_steps"] = int(changes["max_steps"])
        config = dataclasses.replace(base, **changes)
        config.validate()
        return config

    def smallest(self, name: str, default: Any) -> Any:
        """The smallest value the space may give setting `name` (`default` when the space does not have it)."""
        for s in self.settings:
            if s.name == name:
                return min(s.choices) if s.choices is not None else s.value if s.fixed else s.low
        return default

    def values_of(self, config: TrainConfig) -> dict[str, Any]:
        """The searched settings' values in `config` (what a trial of those settings draws): e.g. the defaults."""
        values = {}
        for name in self.searched():
            value = getattr(config, DROP_FIELDS[0] if name == DROP else name, None)
            if value is not None:  # max_steps None: the run goes by epochs, so the search draws it
                values[name] = value
        return values

    def parse_values(self, text: str) -> dict[str, Any]:
        """"learning_rate=1e-4, variant=plus" as values of searched settings; one sentence when a name is not one
        of them or a value is not of its kind."""
        searched = {s.name: s for s in self.settings if not s.fixed}
        values = {}
        for part in [p.strip() for p in text.split(",") if p.strip()]:
            name, sep, raw = (x.strip() for x in part.partition("="))
            if not sep or name not in searched:
                raise IPAdapterError(f"{part!r} is not a searched setting's value: write name=value with one of "
                                     f"{', '.join(searched)}, like learning_rate=1e-4.")
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:  # a bare word: plus, base
                value = raw
            values[name] = _typed(value, _searchable()[name], f"{part!r}")
        if not values:
            raise IPAdapterError(f"{text!r} gives no value: write name=value pairs, like learning_rate=1e-4.")
        return values

    def with_settings(self, settings: list[Setting]) -> SearchSpace:
        """This space with `settings` in place of those of the same names, new names added at the end."""
        given = {s.name: s for s in settings}
        kept = [given.pop(s.name, s) for s in self.settings]
        return SearchSpace(tuple(kept + list(given.values())))


@functools.cache
def _searchable() -> dict[str, type]:
    """TrainConfig's fields a search may draw, with the type of a value: numbers and words."""
    out: dict[str, type] = {DROP: float}
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(defaults, f.name)
        if f.name in NOT_SEARCHED or f.name in DROP_FIELDS:
            continue
        if f.name == "max_steps":
            out[f.name] = int
        elif isinstance(value, bool):
            out[f.name] = bool
        elif isinstance(value, (int, float, str)):
            out[f.name] = type(value)
    return out


def parse_setting(name: str, table: Any, source: str) -> Setting:
    """One table of a space file as a `Setting`; one sentence naming the setting and the fix when it is wrong."""
    searchable = _searchable()
    where = f"{source}: [{name}]"
    if name not in searchable:
        raise IPAdapterError(f"{where} is not a setting a search can draw; use one of {', '.join(sorted(searchable))}.")
    if not isinstance(table, dict):
        raise IPAdapterError(f"{where} must be a table (low/high, choices or value), not {table!r}.")
    kind = searchable[name]
    keys = set(table)
    unknown = keys - {"low", "high", "log", "step", "choices", "value"}
    if unknown:
        raise IPAdapterError(f"{where} has unknown keys ({', '.join(sorted(unknown))}); use low/high (with log or "
                             "step), choices, or value.")
    forms = [form for form, needs in (("range", {"low", "high"}), ("choices", {"choices"}), ("value", {"value"}))
             if keys & needs]
    if len(forms) != 1:
        raise IPAdapterError(f"{where} must give exactly one of low/high, choices or value.")
    if forms[0] == "value":
        return Setting(name, value=_typed(table["value"], kind, where))
    if forms[0] == "choices":
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise IPAdapterError(f"{where} choices must be a non-empty list, like choices = [1, 2].")
        return Setting(name, choices=tuple(_typed(c, kind, where) for c in choices))
    if kind not in (int, float):
        raise IPAdapterError(f"{where} takes choices or a value, not a range: it is not a number.")
    if not {"low", "high"} <= keys:
        raise IPAdapterError(f"{where} gives a range: it needs both low and high.")
    low, high = _typed(table["low"], kind, where), _typed(table["high"], kind, where)
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise IPAdapterError(f"{where} log must be true or false.")
    if not low < high:
        raise IPAdapterError(f"{where} low ({low}) must be below high ({high}); to fix a value, use value = {low}.")
    if log and low <= 0:
        raise IPAdapterError(f"{where} a log range needs low above 0, got {low}.")
    step = table.get("step", 1 if kind is int else None)
    if step is not None and (kind is not int or not isinstance(step, int) or step < 1):
        raise IPAdapterError(f"{where} step must be a whole number of 1 or more, and only on a whole-number setting.")
    if log and step not in (None, 1):
        raise IPAdapterError(f"{where} cannot have both log = true and a step; drop one of them.")
    return Setting(name, low, high, log=log, step=step)


KIND_WORDS = {int: "a whole number", float: "a number", str: "a word", bool: "true or false"}


def _typed(value: Any, kind: type, where: str) -> Any:
    """`value` as the setting's type: an int where a float is wanted is fine, the other way not."""
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise IPAdapterError(f"{where} has {value!r}, which is not {KIND_WORDS[kind]}.")


def load_space(path: Path | None, base: SearchSpace = SearchSpace()) -> SearchSpace:
    """The default space (or `base`) with a space file's settings in their place; None: the defaults."""
    if path is None:
        return base
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IPAdapterError(f"The space file {path} does not exist; give the path of a .toml file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IPAdapterError(f"The space file {path} could not be read ({exc}); give a readable UTF-8 .toml file.") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise IPAdapterError(f"The space file {path} is not valid TOML ({exc}); see `ipadapter-train search "
                             "--help` for the format.") from None
    if not data:
        raise IPAdapterError(f"The space file {path} sets nothing; add a table per setting, like [learning_rate].")
    return base.with_settings([parse_setting(name, table, str(path)) for name, table in data.items()])
