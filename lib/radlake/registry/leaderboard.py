"""Leaderboards of MLflow runs: ``radlake runs`` in the terminal and a sweep's ``leaderboard.csv``.

One row per run: name, status, the sweep trial number (if any), key params (a sweep's
searched params, else backbone / image size / learning rate / epochs of the detector),
headline metrics (``val_*`` / ``test_*``: AP, mAP, AUC, rates, all in [0, 1]), the
registered model versions made from it with their aliases, and why a run was pruned or
failed (tags ``radlake.pruned_reason`` and ``radlake.error``).

Example
-------
>>> board = experiment_leaderboard(config, "radlake-vertebra", top=5)   # doctest: +SKIP
>>> print(format_leaderboard(board, "test_map_50"))                     # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import mlflow
import pandas as pd

from radlake.errors import ConfigError
from radlake.models.resolve import version_aliases

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run

    from radlake.config import RadlakeConfig

#: Settings of ``train.<detector>`` shown for plain training runs (short name → param suffix).
KEY_CONFIG_PARAMS = ("backbone", "image_size", "learning_rate", "epochs")
#: Metric suffixes shown besides the ranking metric, when a run has them.
HEADLINE = ("map_50", "map", "ap_30", "crop_auc", "level_id_rate")
#: Tags that say why a run did not finish.
REASON_TAGS = ("radlake.pruned_reason", "radlake.error")


def _key_params(run: Run) -> dict[str, str]:
    params = run.data.params
    searched = {k: v for k, v in params.items() if not k.startswith(("config.", "data."))}
    if searched:
        return searched
    detector = run.data.tags.get("radlake.detector")
    if not detector:
        return {}
    prefix = f"config.train.{detector}."
    return {k: params[prefix + k] for k in KEY_CONFIG_PARAMS if prefix + k in params}


def _registered(client: mlflow.MlflowClient, run_id: str) -> str:
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return ""
    out = []
    by_name: dict[str, dict[str, list[str]]] = {}
    for found in sorted(versions, key=lambda v: int(v.version)):
        if found.name not in by_name:
            try:
                by_name[found.name] = version_aliases(client, found.name)
            except mlflow.exceptions.MlflowException:
                by_name[found.name] = {}
        names = by_name[found.name].get(str(found.version))
        out.append(f"{found.name} v{found.version}" + (f" ({', '.join(names)})" if names else ""))
    return "; ".join(out)


def runs_frame(runs: Sequence[Run], *, metric: str, client: mlflow.MlflowClient | None = None) -> pd.DataFrame:
    """The leaderboard rows of ``runs``, best ``metric`` first (runs without it last).

    Parameters
    ----------
    runs
        MLflow runs (``MlflowClient.search_runs``).
    metric
        Full MLflow metric name to rank by, e.g. ``test_map_50`` (higher is better). FINISHED runs
        come first, then the others; ties go to the lower trial number.

    Returns
    -------
    pandas.DataFrame
        Columns ``rank``, ``run_name``, ``status``, ``trial``, ``metric`` (the ranking metric's
        value), the other headline metrics, ``param.<name>`` per key param, ``registered``,
        ``reason``, ``run_id``.
    """
    client = client or mlflow.MlflowClient()
    rows = []
    for run in runs:
        m = run.data.metrics
        trial = run.data.tags.get("radlake.trial_number")
        row = {
            "run_name": run.info.run_name,
            "status": run.info.status,
            "trial": int(trial) if trial is not None else None,
            metric: m.get(metric, math.nan),
        }
        for prefix in ("val_", "test_"):
            row.update({prefix + h: m[prefix + h] for h in HEADLINE if prefix + h in m and prefix + h != metric})
        row.update({f"param.{k}": v for k, v in sorted(_key_params(run).items())})
        row["registered"] = _registered(client, run.info.run_id)
        row["reason"] = next((run.data.tags[t] for t in REASON_TAGS if t in run.data.tags), "")
        row["run_id"] = run.info.run_id
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # Finished runs first (a pruned run's value is from an earlier epoch), then by the metric, then trial number.
    order = frame.assign(_unfinished=frame["status"] != "FINISHED")
    frame = frame.loc[
        order.sort_values(
            ["_unfinished", metric, "trial"], ascending=[True, False, True], na_position="last", kind="stable"
        ).index
    ].reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def experiment_leaderboard(
    config: RadlakeConfig, experiment: str, *, metric: str | None = None, top: int | None = None
) -> tuple[pd.DataFrame, str]:
    """The leaderboard of every run in ``experiment`` (a name) and the metric it is ranked by.

    ``metric`` defaults to ``test_<primary metric>`` of the detector the runs are tagged with
    (``radlake.detector``), else ``test_map_50``.

    Raises
    ------
    ConfigError
        If the experiment does not exist, or ``top`` < 1.
    """
    from radlake.train.run import STAGES

    if top is not None and top < 1:
        raise ConfigError(f"Argument 'top' must be >= 1, got {top}.")
    mc = config.mlflow
    mlflow.set_tracking_uri(mc.resolved_tracking_uri(config.storage))
    mlflow.set_registry_uri(mc.registry_uri or mc.resolved_tracking_uri(config.storage))
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments()))
        raise ConfigError(f"No MLflow experiment named {experiment!r}; experiments: {names or 'none'}.")
    runs = client.search_runs([found.experiment_id], max_results=5000)
    if metric is None:
        detector = next((r.data.tags["radlake.detector"] for r in runs if "radlake.detector" in r.data.tags), None)
        metric = f"test_{STAGES[detector].primary_metric}" if detector in STAGES else "test_map_50"
    frame = runs_frame(runs, metric=metric, client=client)
    return (frame.head(top) if top else frame), metric


def format_leaderboard(frame: pd.DataFrame, metric: str, *, max_width: int = 64) -> str:
    """``frame`` as a fixed-width text table (floats with 4 decimals, long cells cut to ``max_width``)."""
    if frame.empty:
        return "(no runs)"
    shown = frame.copy()
    shown["run_id"] = shown["run_id"].str.slice(0, 8)
    shown = shown.drop(columns=[c for c in ("trial",) if c in shown and shown[c].isna().all()])
    if "trial" in shown:  # trial numbers: whole numbers (NaN for runs that are not trials made the column float)
        shown["trial"] = shown["trial"].map(lambda t: None if t is None or t != t else str(int(t)))

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        text = str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    headers = [c.removeprefix("param.") for c in shown.columns]
    cells = [[cell(v) for v in row] for row in shown.itertuples(index=False)]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return f"ranked by {metric} (higher is better)\n" + "\n".join(lines)


#: Colours of trial states in the leaderboard plot.
STATUS_COLOURS = {"FINISHED": "tab:green", "KILLED": "tab:orange", "FAILED": "tab:red", "RUNNING": "tab:blue"}


def plot_leaderboard(frame: pd.DataFrame, metric: str, *, title: str = "") -> Figure:
    """Bar chart of ``metric`` per sweep trial (x = trial number), coloured by run status.

    Pruned (KILLED) trials show their last reported value; failed ones a marker at zero.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(frame) + 2), 3.2))
    ordered = frame.sort_values("trial") if "trial" in frame else frame
    xs = ordered["trial"] if "trial" in ordered else range(len(ordered))
    for x, value, status in zip(xs, ordered[metric], ordered["status"], strict=True):
        colour = STATUS_COLOURS.get(status, "tab:gray")
        if isinstance(value, float) and math.isnan(value):
            ax.plot([x], [0.0], marker="x", color=colour, linestyle="none")
        else:
            ax.bar([x], [value], color=colour)
    for status, colour in STATUS_COLOURS.items():
        if status in set(ordered["status"]):
            ax.bar([], [], color=colour, label=status)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per trial")
    if len(ordered):
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig
