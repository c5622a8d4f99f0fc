"""The registered versions of a detector side by side, and moving an alias by hand.

:func:`model_versions` is what ``notebooks/04_models`` shows: one row per version of
``models.<detector>`` with its aliases, the training run's test metrics and the outcome
of the promotion gate (:mod:`radlake.registry.promote`). :func:`move_alias` is the
manual override of that gate: it points an alias (``champion`` by default) at a chosen
version and records who moved it, from which version, when and why as a tag on the
version (``radlake.alias_history``, a JSON list), so the registry keeps the trail.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException

from radlake.config import RadlakeConfig
from radlake.models.resolve import ModelNotFoundError, version_aliases
from radlake.registry.promote import CHAMPION
from radlake.summary import Summary

if TYPE_CHECKING:
    import pandas as pd

#: Tag on a model version: JSON list of the manual alias moves onto it.
HISTORY_TAG = "radlake.alias_history"


@dataclass(frozen=True)
class AliasMove(Summary):
    """One manual alias move."""

    model_name: str
    alias: str
    version: str
    previous_version: str | None
    reason: str
    moved_by: str
    moved_at: str  # ISO 8601, UTC


def _model_name(config: RadlakeConfig, detector: str) -> str:
    from radlake.train.run import get_stage

    get_stage(detector)  # ConfigError naming the known detectors
    return getattr(config.models, detector)


def model_versions(config: RadlakeConfig, detector: str, *, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every registered version of ``models.<detector>``, newest first.

    Columns: ``version`` (int), ``aliases`` (comma-separated), ``run_id``, ``created``
    (UTC timestamp), ``promoted`` (the gate's verdict, ``true``/``false``/empty for a version
    registered outside it), ``compared_with`` (champion version it was compared with), and
    one column per metric of the training run: those named in ``metrics``, or by default
    every ``test_*`` and ``e2e_*`` metric (NaN where a run has none).

    Raises
    ------
    ConfigError
        For an unknown detector.
    ModelNotFoundError
        If the registry has no model of that name.
    """
    import pandas as pd

    name = _model_name(config, detector)
    client = mlflow.MlflowClient()
    try:
        aliases = version_aliases(client, name)
    except MlflowException:
        raise ModelNotFoundError(
            f"No registered model '{name}' (models.{detector}): train and promote a {detector} detector first"
        ) from None
    wanted = set(metrics) if metrics is not None else None
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        try:
            run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        except MlflowException:  # the run was deleted: the version stays listed without metrics
            run_metrics = {}
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(aliases.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
                "promoted": mv.tags.get("radlake.promoted", ""),
                "compared_with": mv.tags.get("radlake.compared_with", ""),
                **{
                    k: v
                    for k, v in run_metrics.items()
                    if (k in wanted if wanted is not None else k.startswith(("test_", "e2e_")))
                },
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    fixed = ["version", "aliases", "run_id", "created", "promoted", "compared_with"]
    return frame[fixed + sorted(c for c in frame.columns if c not in fixed)].sort_values("version", ascending=False)


def move_alias(
    config: RadlakeConfig, detector: str, version: int | str, *, alias: str = CHAMPION, reason: str
) -> AliasMove:
    """Point ``alias`` of ``models.<detector>`` at ``version``, by hand, and record the move.

    Parameters
    ----------
    config
        Names the registered model (``models.<detector>``) and the registry (through MLflow).
    detector
        ``vertebra`` or ``schmorl``.
    version
        The version to point at.
    alias
        Alias to move (``champion`` by default; ``challenger`` and others work the same).
    reason
        Why (kept on the version; required, since this overrides the promotion gate).

    Raises
    ------
    ValueError
        If ``reason`` or ``alias`` is empty.
    ModelNotFoundError
        If the model or the version does not exist (nothing is changed).
    """
    if not reason.strip():
        raise ValueError("A manual alias move needs a reason (it overrides the promotion gate).")
    if not alias.strip():
        raise ValueError("Argument 'alias' must be a non-empty alias name.")
    name = _model_name(config, detector)
    client = mlflow.MlflowClient()
    try:
        target = client.get_model_version(name, str(version))
    except MlflowException:
        raise ModelNotFoundError(f"Model '{name}' has no version {version}: nothing moved") from None
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    move = AliasMove(
        model_name=name,
        alias=alias,
        version=str(target.version),
        previous_version=str(previous) if previous is not None else None,
        reason=reason.strip(),
        moved_by=getpass.getuser(),
        moved_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    history = json.loads(target.tags.get(HISTORY_TAG, "[]"))
    history.append({k: v for k, v in move.as_dict().items() if k != "model_name"})
    client.set_registered_model_alias(name, alias, target.version)
    client.set_model_version_tag(name, target.version, HISTORY_TAG, json.dumps(history))
    return move
