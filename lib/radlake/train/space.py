"""A sweep's search space: a YAML file → Optuna suggestions → a training configuration.

The file (default ``conf/sweep/<detector>.yml``) holds::

    direction: maximize            # of the metric; a resumed study keeps its own
    metric: map_50                 # optional; default the detector's primary metric
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1}
    sampler: {type: tpe, seed: 0}
    params:                        # keys of train.<detector>, dotted below it, or augment_strength
      learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      backbone: {type: categorical, choices: [tiny]}
      image_size: {type: int, low: 128, high: 256, step: 64}
      augment_strength: {type: float, low: 0.0, high: 1.5}
    enqueue:                       # optional: trials run first, when the study is created
      - {learning_rate: 2.0e-3, augment_strength: 1.0}

``pruner.type`` names an Optuna pruner (``median``, ``percentile``, ``successive_halving``,
``hyperband``, ``threshold``, ``none``) and ``sampler.type`` a sampler (``tpe``, ``random``);
their other keys are passed to the Optuna class as keyword arguments.

``augment_strength`` (s ≥ 0) scales the configured augmentation: zoom and shift ranges,
noise, bias field and blur by s, the gamma and contrast ranges as ``value ** s``, the bits
lost to quantisation by s; s = 0 turns augmentation off, s = 1 is the configured
augmentation. A wrong key anywhere is a :class:`~radlake.errors.ConfigError`
that names it.
"""

from __future__ import annotations

import inspect
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from radlake.config import CONF_DIR_ENV, AugmentConfig, DetectorConfig, RadlakeConfig
from radlake.errors import ConfigError

if TYPE_CHECKING:
    import optuna

#: The one search parameter that is not a key of ``train.<detector>``.
AUGMENT_STRENGTH = "augment_strength"
#: Keys of ``train.<detector>`` a trial may not change: they shape the shared cache or the process layout.
FIXED_KEYS = frozenset({"experiment", "negatives_per_positive", "num_processes", "local_mode", "use_gpu", "seed"})


class Direction(str, Enum):
    """Which way the sweep's metric is better."""

    #: Higher is better (AP, AUC, rates).
    MAXIMIZE = "maximize"
    #: Lower is better (losses, false positives).
    MINIMIZE = "minimize"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One searched setting: an Optuna distribution."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} parameter needs 'low' <= 'high', got low={self.low}, high={self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Draw (or take the enqueued) value of ``name`` through ``trial.suggest_*``."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


class _Named(BaseModel):
    """``type`` plus keyword arguments for the Optuna class (checked against its signature)."""

    model_config = ConfigDict(extra="allow")


class PrunerSpec(_Named):
    type: Literal["median", "percentile", "successive_halving", "hyperband", "threshold", "none"] = "median"


class SamplerSpec(_Named):
    type: Literal["tpe", "random"] = "tpe"


class SearchSpace(_Strict):
    """A parsed search-space file (see the module docstring)."""

    direction: Direction = Direction.MAXIMIZE
    metric: str | None = Field(None, description="Base metric name (map_50, ap_30, ...); val_/test_ are added.")
    pruner: PrunerSpec = Field(default_factory=lambda: PrunerSpec(type="median", n_startup_trials=2))
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    params: dict[str, ParamSpec] = Field(min_length=1)
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known(self) -> SearchSpace:
        for name in self.params:
            _check_param_name(name)
        for i, fixed in enumerate(self.enqueue):
            unknown = sorted(set(fixed) - set(self.params))
            if unknown:
                raise ValueError(f"enqueue[{i}] names {unknown}, which are not in params ({', '.join(self.params)})")
        return self

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner this space names."""
        import optuna

        classes = {
            "median": optuna.pruners.MedianPruner,
            "percentile": optuna.pruners.PercentilePruner,
            "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner,
            "threshold": optuna.pruners.ThresholdPruner,
            "none": optuna.pruners.NopPruner,
        }
        return _construct("pruner", classes[self.pruner.type], self.pruner.model_extra or {})

    def make_sampler(self, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The Optuna sampler this space names; a ``seed`` is moved by ``seed_offset``.

        Parallel workers get different offsets: identically seeded samplers would all
        suggest the same parameters.
        """
        import optuna

        classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
        kwargs = dict(self.sampler.model_extra or {})
        if kwargs.get("seed") is not None:
            kwargs["seed"] = int(kwargs["seed"]) + seed_offset
        return _construct("sampler", classes[self.sampler.type], kwargs)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One value per parameter, in file order."""
        return {name: spec.suggest(trial, name) for name, spec in self.params.items()}


def _construct(section: str, cls: type, kwargs: dict[str, Any]) -> Any:
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"Search space: unknown {section} option {unknown[0]!r} for {cls.__name__}; accepted: {', '.join(accepted)}."
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Search space: invalid {section} options {kwargs} for {cls.__name__}: {exc}") from exc


def _check_param_name(name: str) -> None:
    if name == AUGMENT_STRENGTH:
        return
    head, _, rest = name.partition(".")
    fields = set(DetectorConfig.model_fields)
    if head in FIXED_KEYS:
        raise ValueError(f"parameter {name!r} cannot vary between trials (it shapes the shared cache or processes)")
    if head not in fields or (rest and (head != "augment" or rest not in AugmentConfig.model_fields)):
        known = sorted(
            (fields - FIXED_KEYS) | {f"augment.{k}" for k in AugmentConfig.model_fields} | {AUGMENT_STRENGTH}
        )
        raise ValueError(f"unknown parameter {name!r}: not a key of train.<detector>; known: {', '.join(known)}")


def default_space_path(detector: str) -> Path:
    """``$RADLAKE_CONF_DIR/sweep/<detector>.yml``, else ``conf/sweep/<detector>.yml``.

    Raises
    ------
    ConfigError
        If neither exists (pass ``--space`` then).
    """
    folders = [Path(os.environ[CONF_DIR_ENV])] if os.environ.get(CONF_DIR_ENV) else []
    folders.append(Path("conf"))
    for folder in folders:
        path = folder / "sweep" / f"{detector}.yml"
        if path.is_file():
            return path
    searched = ", ".join(str(f / "sweep" / f"{detector}.yml") for f in folders)
    raise ConfigError(f"No search space for {detector!r} (looked for {searched}); give one with --space FILE.")


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and check a search-space file.

    Raises
    ------
    ConfigError
        If the file is missing or not YAML, or names an unknown key, parameter or option;
        the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Search space file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Search space file '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Search space file '{path}' must hold a mapping, got {type(data).__name__}.")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as exc:
        lines = [f"Invalid search space ({path}):"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"  unknown key '{key}'")
            else:
                lines.append(f"  '{key}': {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc
    space.make_pruner(), space.make_sampler()  # unknown options fail here, before any work
    return space


def apply_params(config: RadlakeConfig, detector: str, values: dict[str, Any]) -> RadlakeConfig:
    """``config`` with ``train.<detector>`` changed by one trial's ``values``.

    Raises
    ------
    ConfigError
        If a value is out of the configuration's range (e.g. ``image_size`` < 32); names the key.
    """
    data = config.model_dump(mode="json", by_alias=True)
    section = data["train"][detector]
    for name, value in values.items():
        if name == AUGMENT_STRENGTH:
            section["augment"] = scaled_augment(AugmentConfig(**section["augment"]), float(value)).model_dump(
                mode="json"
            )
            continue
        head, _, rest = name.partition(".")
        if rest:
            section[head][rest] = value
        else:
            section[head] = value
    try:
        return RadlakeConfig.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"train.{detector}.{'.'.join(str(p) for p in e['loc'][2:])}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        raise ConfigError(f"Trial parameters {values} give an invalid configuration: {details}") from exc


def scaled_augment(base: AugmentConfig, strength: float) -> AugmentConfig:
    """``base`` scaled by ``strength`` (0 = off, 1 = ``base``); see the module docstring."""
    if strength < 0:
        raise ConfigError(f"Argument 'augment_strength' must be >= 0, got {strength}.")
    if strength == 0:
        return base.model_copy(update={"enabled": False})
    lo, hi = base.scale_range
    g_lo, g_hi = base.gamma_range
    c_lo, c_hi = base.contrast_range
    return AugmentConfig(
        enabled=base.enabled,
        scale_range=(max(0.05, 1 - (1 - lo) * strength), 1 + (hi - 1) * strength),
        translate_fraction=min(0.5, base.translate_fraction * strength),
        gamma_range=(g_lo**strength, g_hi**strength),
        contrast_range=(c_lo**strength, c_hi**strength),
        noise_std=base.noise_std * strength,
        bias_strength=base.bias_strength * strength,
        blur_sigma_px=base.blur_sigma_px * strength,
        min_bits=min(8, max(1, round(8 - (8 - base.min_bits) * strength))),
    )
