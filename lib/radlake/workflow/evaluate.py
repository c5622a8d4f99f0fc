"""``radlake evaluate``: external validation of registered models on any labelled archive.

What a site does before it trusts a model: run the pair of models, exactly as the
scoring job runs them, over an archive with labels they were never trained or tuned
on, and measure what a radiologist would read.

Order of work:

1. both model URIs are resolved to concrete versions and their signatures checked
   before anything is read (a URI that names nothing fails at once);
2. the archive gets tables of its own (``<root>/warehouse``, by default under
   ``<storage.root>/evaluation/<archive name>-<hash of its path>``), never the
   training tables: it is ingested, its labels are imported into its own
   ``annotations``, and :func:`radlake.score.job.score_archive` scores it, with stage 2
   at the Schmorl's model's own score floor so that the FROC curve reaches 4 false
   positives per image (``evaluate.schmorl_threshold``);
3. every labelled frame's ``predictions`` are compared with its labels
   (:func:`radlake.train.metrics.archive_metrics`) over the whole archive and per study:

   - vertebrae: AP at IoU 0.5, detection rate, false positives per frame;
   - levels (stack decoding, as scored): level identification of the found vertebrae,
     the share marked uncertain (counted as not identified), the share of series with
     every found level right, and with every labelled vertebra also found;
   - Schmorl's nodes end to end: FROC sensitivity at 0.25-4 false positives per frame
     (nodes in vertebrae the first stage missed count as missed), AP at IoU 0.3, and
     sensitivity / false positives per frame at ``score.schmorl_threshold``;

4. it is logged as an MLflow run in ``<mlflow.experiment>-evaluation`` (the scoring
   run nested under it): the metrics, also linked to each model's logged model (MLflow
   3 ``model_id``), tags naming both model versions, the archive's ``annotations`` as an
   evaluation dataset, ``evaluation/per_study.csv`` and PNG plots; each model version
   gets a tag ``radlake.evaluation.<archive name>`` with the run id and its headline figure.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radlake.config import RadlakeConfig
from radlake.errors import ConfigError, RadlakeError
from radlake.score.schema import model_pair_filter
from radlake.summary import Summary

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from radlake.train.metrics import ImageResult

#: The headline figures and the bars a model pair is held to (``radlake evaluate`` prints them).
BARS: dict[str, tuple[str, float]] = {
    "vertebra_ap_50": (">=", 0.95),
    "level_id_rate": (">=", 0.95),
    "series_all_levels_right": (">=", 0.85),
    "level_uncertain_rate": ("<=", 0.10),
    "schmorl_froc_sens_at_1fp": (">=", 0.8),
}


class EvaluationInputError(RadlakeError):
    """The archive, labels file or root of an evaluation is missing or not usable."""


@dataclass(frozen=True)
class EvaluationSummary(Summary):
    """What one ``radlake evaluate`` run measured."""

    run_id: str
    experiment_id: str
    archive: str
    labels_file: str
    root: str
    vertebra_model: dict
    schmorl_model: dict
    metrics: dict[str, float]
    per_study: list[dict] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_root(config: RadlakeConfig, archive: str | Path) -> Path:
    """``<storage.root>/evaluation/<archive name>-<8 hex of its absolute path>``: one set of tables per archive."""
    path = str(Path(archive).expanduser().resolve()) if "://" not in str(archive) else str(archive)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path.rstrip("/")).name)[:40] or "archive"
    return config.storage.root_dir / "evaluation" / f"{name}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def _check_inputs(config: RadlakeConfig, archive: str, labels_file: str, root: Path) -> None:
    if "://" not in archive and not Path(archive).exists():
        raise EvaluationInputError(f"Archive {archive!r} does not exist.")
    if not Path(labels_file).is_file():
        raise EvaluationInputError(f"Labels file {labels_file!r} does not exist.")
    own = {config.storage.root_dir.resolve(), config.storage.warehouse_dir.resolve()}
    if not config.storage.catalog and root.resolve() in own:
        raise EvaluationInputError(
            f"Evaluation root {str(root)!r} is the training storage: an evaluation needs tables of its own."
        )


def evaluation_config(config: RadlakeConfig, root: Path, schmorl_threshold: float) -> RadlakeConfig:
    """``config`` with tables of its own, MLflow still at ``config``'s stores, stage 2 at ``schmorl_threshold``.

    Locally the tables go under ``root``. On Unity Catalog (``storage.catalog`` set) they
    go to the schema ``evaluate.schema`` (default ``<storage.schema>_evaluation``), each
    name prefixed with ``root``'s last part (the archive's name and hash), and caches to a
    sub-folder of the Volume. The registered models are ``config``'s: only the tables move.
    """
    tracking = config.mlflow.resolved_tracking_uri(config.storage)
    artifacts = config.mlflow.artifact_location or (config.storage.root_dir / "mlartifacts").as_uri()
    storage_update: dict[str, Any] = {"root": Path(root), "warehouse": None}
    tables = config.tables
    if config.storage.catalog:
        prefix = re.sub(r"[^A-Za-z0-9_]", "_", Path(root).name).lower()
        storage_update["schema_"] = config.evaluate.schema_ or f"{config.storage.schema_}_evaluation"
        if config.storage.volume:
            storage_update["volume"] = f"{config.storage.volume.rstrip('/')}/evaluation/{Path(root).name}"
        tables = tables.model_copy(update={name: f"{prefix}_{value}" for name, value in tables.model_dump().items()})
    return config.model_copy(
        update={
            "storage": config.storage.model_copy(update=storage_update),
            "tables": tables,
            "mlflow": config.mlflow.model_copy(
                update={
                    "tracking_uri": tracking,
                    "registry_uri": config.mlflow.registry_uri or tracking,
                    "artifact_location": artifacts,
                }
            ),
            "score": config.score.model_copy(update={"schmorl_threshold": schmorl_threshold}),
        }
    )


def evaluate_models(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    archive: str | Path,
    labels_file: str | Path,
    vertebra_model: str | None = None,
    schmorl_model: str | None = None,
    root: str | Path | None = None,
    run_name: str | None = None,
) -> EvaluationSummary:
    """Evaluate a registered pair of models on a labelled archive (see the module docstring).

    Raises
    ------
    EvaluationInputError
        If the archive or labels file does not exist, or ``root`` is the training storage.
    radlake.models.resolve.ModelNotFoundError, radlake.models.pyfunc.ModelSignatureError
        Before anything is read, for a model URI that names nothing or no detector.
    """
    import mlflow

    import radlake
    from radlake.data.labels import import_labels
    from radlake.ingest.job import run_ingest
    from radlake.score.job import score_archive
    from radlake.score.pair import check_models
    from radlake.tracking import configure_mlflow, describe_run, run_scope

    started = time.perf_counter()
    check_evaluate_config(config)
    archive, labels_file = str(archive), str(labels_file)
    root_dir = Path(root) if root else default_root(config, archive)
    _check_inputs(config, archive, labels_file, root_dir)
    configure_mlflow(config)
    default_vertebra, default_schmorl = config.score.model_uris(config.models)
    checked = check_models(vertebra_model or default_vertebra, schmorl_model or default_schmorl)
    vertebra, schmorl = checked[0].model, checked[1].model
    floor = config.evaluate.schmorl_threshold
    held = evaluation_config(config, root_dir, floor)
    experiment_id = configure_mlflow(config, f"{config.mlflow.experiment}-evaluation")
    name = run_name or f"evaluate-{root_dir.name}"
    with run_scope(run_name=name, experiment_id=experiment_id, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags(
            {
                "radlake.step": "evaluate",
                "radlake.version": radlake.__version__,
                **{f"radlake.{stage}_model_{k}": v or "" for stage, m in (("vertebra", vertebra), ("schmorl", schmorl))
                   for k, v in (("uri", m.uri), ("name", m.name), ("version", m.version), ("run_id", m.run_id))},
            }
        )  # fmt: skip
        describe_run(f"External validation of {vertebra.uri} + {schmorl.uri} on {archive}.")
        mlflow.log_params(
            {
                "archive": archive,
                "labels_file": labels_file,
                "root": str(root_dir),
                "vertebra_threshold": held.score.vertebra_threshold,
                "schmorl_threshold_scored": floor,
                "schmorl_threshold_operating": config.score.schmorl_threshold,
                "level_min_probability": held.score.level_min_probability,
            }
        )
        ingest = run_ingest(spark, held, archive=archive)
        labels = import_labels(spark, held, labels_file)
        score = score_archive(spark, held, vertebra_model=vertebra.uri, schmorl_model=schmorl.uri)
        frames = labelled_frames(spark, held, vertebra.uri, schmorl.uri)
        metrics, per_study = _measure(frames, schmorl_threshold=config.score.schmorl_threshold)
        mlflow.log_metrics(metrics)
        _link_to_models(metrics, vertebra, schmorl)
        _log_dataset(spark, held)
        artifacts = _log_artifacts(per_study, frames, metrics, config.score.schmorl_threshold)
        mlflow.log_dict(
            {"ingest": ingest.as_dict(), "labels": labels.as_dict(), "score_run_id": score.run_id},
            "evaluation/steps.json",
        )
        _tag_versions(vertebra, schmorl, root_dir.name, run.info.run_id, metrics)
        describe_run(evaluation_note(vertebra.uri, schmorl.uri, archive, metrics, studies=len(per_study)))
    return EvaluationSummary(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        archive=archive,
        labels_file=labels_file,
        root=str(root_dir),
        vertebra_model=_model_dict(vertebra),
        schmorl_model=_model_dict(schmorl),
        metrics=metrics,
        per_study=per_study.to_dict("records"),
        artifacts=artifacts,
        seconds=round(time.perf_counter() - started, 1),
    )


def _model_dict(model) -> dict[str, Any]:
    return {"uri": model.uri, "name": model.name, "version": model.version, "run_id": model.run_id}


def labelled_frames(spark: SparkSession, config: RadlakeConfig, vertebra_uri: str, schmorl_uri: str) -> pd.DataFrame:
    """Every scored frame of the labelled studies with its predicted and labelled boxes (boxes only, no pixels).

    Columns: ``study_instance_uid``, ``series_key``, ``sop_instance_uid``, ``frame_index``,
    ``vertebrae`` and ``schmorl_nodes`` (as in ``predictions``), ``true_vertebrae``
    (``box``, ``level``) and ``true_nodes`` (``box``).
    """
    from pyspark.sql import functions as F

    from radlake.tables import Table, table_ref

    annotations = table_ref(config, Table.ANNOTATIONS).read(spark)
    studies = annotations.where("label_class = 'vertebra'").select("study_instance_uid").distinct()
    truth = annotations.groupBy("sop_instance_uid", "frame_index").agg(
        F.collect_list(
            F.when(F.col("label_class") == "vertebra", F.struct(F.col("box_xyxy_px").alias("box"), F.col("level")))
        ).alias("true_vertebrae"),
        F.collect_list(
            F.when(F.col("label_class") == "schmorl_node", F.struct(F.col("box_xyxy_px").alias("box")))
        ).alias("true_nodes"),
    )
    predictions = (
        table_ref(config, Table.PREDICTIONS)
        .read(spark)
        .where(model_pair_filter(vertebra_uri, schmorl_uri))
        .join(studies, "study_instance_uid", "left_semi")
        .select(
            "study_instance_uid",
            "series_key",
            "sop_instance_uid",
            "frame_index",
            F.expr("transform(vertebrae, v -> struct(v.box_xyxy_px AS box, v.score, v.level, v.level_status))").alias(
                "vertebrae"
            ),
            F.expr("transform(schmorl_nodes, n -> struct(n.box_xyxy_px AS box, n.score))").alias("schmorl_nodes"),
        )
    )
    return predictions.join(truth, ["sop_instance_uid", "frame_index"], "left").toPandas()


def _boxes(items, key: str = "box") -> np.ndarray:
    return np.array([list(i[key]) for i in items], dtype=np.float32).reshape(-1, 4)


def frame_results(frames: pd.DataFrame) -> tuple[list[ImageResult], list[ImageResult]]:
    """Per frame, the vertebra and the Schmorl's-node :class:`ImageResult` of :func:`labelled_frames` rows."""
    from radlake.models.levels import level_to_class
    from radlake.train.metrics import ImageResult

    vertebrae, nodes = [], []
    for row in frames.to_dict("records"):
        pred_v = list(row["vertebrae"] if row["vertebrae"] is not None else [])
        true_v = [t for t in (row.get("true_vertebrae") if row.get("true_vertebrae") is not None else []) if t]
        pred_n = list(row["schmorl_nodes"] if row["schmorl_nodes"] is not None else [])
        true_n = [t for t in (row.get("true_nodes") if row.get("true_nodes") is not None else []) if t]
        keys = {
            "study_uid": row["study_instance_uid"],
            "sop_instance_uid": row["sop_instance_uid"],
            "frame_index": int(row["frame_index"]),
        }
        vertebrae.append(
            ImageResult(
                **keys,
                pred_boxes=_boxes(pred_v),
                pred_scores=np.array([v["score"] for v in pred_v], np.float32),
                pred_classes=np.array([level_to_class(v["level"]) if v["level"] else 0 for v in pred_v], np.int64),
                true_boxes=_boxes(true_v),
                true_classes=np.array([level_to_class(t["level"]) for t in true_v], np.int64),
                extra={
                    "series_key": row["series_key"],
                    "uncertain": np.array([v["level_status"] == "uncertain" for v in pred_v], bool),
                },
            )
        )
        nodes.append(
            ImageResult(
                **keys,
                pred_boxes=_boxes(pred_n),
                pred_scores=np.array([n["score"] for n in pred_n], np.float32),
                pred_classes=np.ones(len(pred_n), np.int64),
                true_boxes=_boxes(true_n),
                true_classes=np.ones(len(true_n), np.int64),
            )
        )
    return vertebrae, nodes


def _measure(frames: pd.DataFrame, *, schmorl_threshold: float) -> tuple[dict[str, float], pd.DataFrame]:
    """The archive's metrics and one row of them per study."""
    import pandas as pd

    from radlake.train.metrics import archive_metrics

    if frames.empty:
        raise EvaluationInputError("No scored frame belongs to a study with vertebra labels: nothing to evaluate.")
    vertebrae, nodes = frame_results(frames)
    metrics = archive_metrics(vertebrae, nodes, schmorl_threshold=schmorl_threshold)
    rows = []
    for study in sorted({r.study_uid for r in vertebrae}):
        picked = [i for i, r in enumerate(vertebrae) if r.study_uid == study]
        study_metrics = archive_metrics(
            [vertebrae[i] for i in picked], [nodes[i] for i in picked], schmorl_threshold=schmorl_threshold
        )
        rows.append({"study_instance_uid": study, **study_metrics})
    return metrics, pd.DataFrame(rows)


def _link_to_models(metrics: dict[str, float], vertebra, schmorl) -> None:
    """Log each model's own metrics against its logged model (MLflow 3 ``model_id``), when it has one."""
    import mlflow

    client = mlflow.MlflowClient()
    for model, prefixes in ((vertebra, ("vertebra_", "level_", "series_")), (schmorl, ("schmorl_",))):
        if not model.name or not model.version:
            continue
        model_id = getattr(client.get_model_version(model.name, model.version), "model_id", None)
        if model_id:
            mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith(prefixes)}, model_id=model_id)


def _log_dataset(spark: SparkSession, config: RadlakeConfig) -> None:
    """The evaluation archive's ``annotations`` table, at its current version, as the run's evaluation dataset."""
    from radlake.tables import Table, table_ref
    from radlake.tracking import log_table_input

    log_table_input(
        config, Table.ANNOTATIONS, table_ref(config, Table.ANNOTATIONS).version(spark), context="evaluation"
    )


def _log_artifacts(
    per_study: pd.DataFrame, frames: pd.DataFrame, metrics: dict[str, float], threshold: float
) -> list[str]:
    import mlflow

    from radlake.workflow import evaluation_plots as plots

    mlflow.log_text(per_study.to_csv(index=False), "evaluation/per_study.csv")
    mlflow.log_dict(metrics, "evaluation/metrics.json")
    vertebrae, nodes = frame_results(frames)
    figures = {
        "plots/froc.png": plots.froc_curve(nodes),
        "plots/levels.png": plots.level_confusion(vertebrae),
        "plots/per_study.png": plots.per_study(per_study, BARS),
    }
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plots.close(figure)
    return ["evaluation/per_study.csv", "evaluation/metrics.json", *figures]


def _tag_versions(vertebra, schmorl, archive_name: str, run_id: str, metrics: dict[str, float]) -> None:
    """A tag on each registered model version: this evaluation's run and headline figure."""
    import mlflow

    client = mlflow.MlflowClient()
    key = f"radlake.evaluation.{archive_name}"[:250]
    for model, figure in ((vertebra, "level_id_rate"), (schmorl, "schmorl_froc_sens_at_1fp")):
        if model.name and model.version:
            value = metrics.get(figure)
            text = json.dumps({"run_id": run_id, figure: None if value is None else round(float(value), 4)})
            client.set_model_version_tag(model.name, model.version, key, text)


#: Plain names of the headline figures an evaluation run's description quotes.
_NOTE_FIGURES = {
    "vertebra_ap_50": "vertebra AP@0.5",
    "level_id_rate": "level identification",
    "schmorl_froc_sens_at_1fp": "Schmorl's-node sensitivity at 1 FP per frame",
}


def evaluation_note(
    vertebra_uri: str, schmorl_uri: str, archive: str, metrics: dict[str, float], *, studies: int
) -> str:
    """An evaluation run's one-line description once it is done: the models, the archive and the headline figures.

    Examples
    --------
    >>> evaluation_note("models:/v/3", "models:/s/2", "/data/heldout", {"vertebra_ap_50": 0.9712}, studies=12)
    'External validation of models:/v/3 + models:/s/2 on /data/heldout (12 studies): vertebra AP@0.5 0.971.'
    """
    figures = ", ".join(f"{words} {metrics[key]:.3f}" for key, words in _NOTE_FIGURES.items() if key in metrics)
    return f"External validation of {vertebra_uri} + {schmorl_uri} on {archive} ({studies} studies): {figures or 'no figures'}."


def bar_lines(metrics: dict[str, float]) -> list[str]:
    """One line per headline figure: its value, its bar and whether it is met."""
    lines = []
    for key, (op, bar) in BARS.items():
        value = metrics.get(key)
        met = value is not None and (value >= bar if op == ">=" else value <= bar)
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"{key:<26} {shown:>7}  (bar {op} {bar}: {'met' if met else 'MISSED'})")
    return lines


def format_summary(summary: EvaluationSummary) -> str:
    """The evaluation for a terminal: the headline figures against their bars, then the other metrics."""
    m = summary.metrics
    lines = [
        f"Evaluated {summary.vertebra_model['uri']} + {summary.schmorl_model['uri']} on {summary.archive}: "
        f"{int(m.get('n_frames', 0))} labelled frames, {int(m.get('n_series', 0))} series, "
        f"{len(summary.per_study)} studies, {int(m.get('n_true_vertebrae', 0))} labelled vertebrae, "
        f"{int(m.get('n_true_nodes', 0))} labelled Schmorl's nodes (MLflow run {summary.run_id}).",
        *bar_lines(m),
        "others: " + json.dumps({k: round(v, 4) for k, v in m.items() if k not in BARS and not k.startswith("n_")}),
        f"per study: {summary.root} and the run's evaluation/per_study.csv",
    ]
    return "\n".join(lines)


def check_evaluate_config(config: RadlakeConfig) -> None:
    """Raise ConfigError if the evaluation threshold is above the operating one (the FROC would be cut)."""
    if config.evaluate.schmorl_threshold > config.score.schmorl_threshold:
        raise ConfigError(
            f"evaluate.schmorl_threshold ({config.evaluate.schmorl_threshold}) must not be above "
            f"score.schmorl_threshold ({config.score.schmorl_threshold})"
        )
