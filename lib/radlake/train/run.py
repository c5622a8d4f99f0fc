"""The training driver: pin the data, cache it, launch DDP with TorchDistributor, track it all in MLflow.

:func:`train_detector` is the one training stage behind every detector; what differs
between detectors is a :class:`Detector` (its view of the tables and its
:class:`~radlake.models.detector.DetectorSpec`), chosen by name from :data:`STAGES`.

Order of work:

1. pin the Delta versions of the tables the view reads (or take the given ones, to
   reproduce a run) and materialise the train / val / test views into the Parquet
   cache (reused when unchanged);
2. open an MLflow run in the detector's experiment: the flattened configuration as
   params; tags for the git commit, radlake version, data versions and the test
   split's digest; the resolved configuration as an artifact; each table as a dataset
   input (name, version, split);
3. ``TorchDistributor(num_processes, local_mode, use_gpu).run(train_worker, settings)``;
   rank 0 logs metrics, figures and the pyfunc model into the same run (a stop ends the
   training processes and the run KILLED: :mod:`radlake.stops`);
4. read the run back from MLflow (not from the distributor's return value).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

import radlake
from radlake.config import RadlakeConfig, config_as_yaml
from radlake.console import Progress, polling, say
from radlake.data.view import (
    IMAGE_COLUMNS,
    SPLITS,
    STACK_COLUMNS,
    VIEW_TABLES,
    NoTrainingDataError,
    detection_view,
    pin_versions,
)
from radlake.dicom.pixels import TRANSFORM_COLUMNS
from radlake.errors import ConfigError
from radlake.models.detector import DetectorSpec, schmorl_spec, vertebra_spec
from radlake.models.levels import LEVELS
from radlake.summary import Summary
from radlake.tables import Table
from radlake.tracking import configure_mlflow, describe_run, detector_experiment, log_table_input, run_scope
from radlake.train.schmorl import end_to_end_metrics, pin_vertebra_model, schmorl_view

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: Columns the loader reads from the cache.
CACHE_COLUMNS = (*IMAGE_COLUMNS, "boxes_xyxy_px", "labels")


@dataclass(frozen=True)
class Detector:
    """What makes one detector: its tables, its view and its spec (everything else is shared)."""

    name: str
    tables: tuple[Table, ...]
    view: Callable[[SparkSession, RadlakeConfig, Mapping[str, int]], DataFrame]
    spec: Callable[[RadlakeConfig], DetectorSpec]
    primary_metric: str = "map_50"
    secondary_metric: str | None = None
    #: Pins the run's upstream inputs before anything is read: returns the config to
    #: train with and tags that record those inputs (the Schmorl's stage pins its vertebra model).
    prepare: Callable[[RadlakeConfig], tuple[RadlakeConfig, dict[str, str]]] | None = None
    #: Extra metrics after training, from the logged model (``runs:/<run>/model``): the
    #: Schmorl's stage's end-to-end evaluation.
    evaluate: Callable[[SparkSession, RadlakeConfig, Mapping[str, int], str], dict[str, float]] | None = None
    #: Columns of the Parquet cache (what the loader reads).
    cache_columns: tuple[str, ...] = CACHE_COLUMNS


def _settings(config: RadlakeConfig, name: str) -> dict[str, Any]:
    d = getattr(config.train, name)
    return {
        "backbone": d.backbone,
        "image_size": d.image_size,
        "score_threshold": d.score_threshold,
        "nms_iou": d.nms_iou,
        "detections_per_image": d.detections_per_image,
        "input_spacing_mm": d.input_spacing_mm,
    }


def _vertebra_view(spark, config, versions):
    return detection_view(
        spark, config, label_class="vertebra", classes=LEVELS, class_column="level", versions=versions
    )


def _prepare_schmorl(config: RadlakeConfig) -> tuple[RadlakeConfig, dict[str, str]]:
    pinned = pin_vertebra_model(config)
    return pinned.config, pinned.tags


STAGES: dict[str, Detector] = {
    "vertebra": Detector(
        name="vertebra",
        tables=VIEW_TABLES,
        view=_vertebra_view,
        spec=lambda config: vertebra_spec(**_settings(config, "vertebra")),
        primary_metric="map_50",
        secondary_metric="level_id_rate",
        cache_columns=(*CACHE_COLUMNS, *TRANSFORM_COLUMNS, *STACK_COLUMNS),
    ),
    "schmorl": Detector(
        name="schmorl",
        tables=(Table.VERTEBRA_CROPS, Table.ANNOTATIONS, Table.SPLITS, Table.IMAGES),
        view=schmorl_view,
        spec=lambda config: schmorl_spec(**_settings(config, "schmorl")),
        primary_metric="ap_30",
        secondary_metric="crop_auc",
        prepare=_prepare_schmorl,
        evaluate=end_to_end_metrics,
    ),
}


@dataclass(frozen=True)
class TrainSummary(Summary):
    """What a training run produced (read back from MLflow)."""

    detector: str
    run_id: str
    experiment_id: str
    model_uri: str
    data_versions: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)


def get_stage(name: str) -> Detector:
    """The registered stage ``name``; raises ConfigError naming the known ones."""
    if name not in STAGES:
        raise ConfigError(f"Unknown detector {name!r}; known detectors: {', '.join(sorted(STAGES))}")
    return STAGES[name]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}`` (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = json.dumps(value) if not isinstance(value, str) else value
    return out


def git_commit() -> str | None:
    """The commit of the source tree radlake runs from, if it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(radlake.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def split_digest(view: DataFrame, split: str) -> str:
    """sha256 of the sorted (SOPInstanceUID, frame) keys of one split: equal digests mean the same frozen split."""
    keys = (
        view.where(view.split == split)
        .select("sop_instance_uid", "frame_index")
        .orderBy("sop_instance_uid", "frame_index")
    )
    h = hashlib.sha256()
    for row in keys.toLocalIterator():
        h.update(f"{row[0]}/{row[1]};".encode())
    return h.hexdigest()


def subsample_negatives(rows: DataFrame, per_positive: float, seed: int) -> DataFrame:
    """Every row with a box, and about ``per_positive`` rows without one per row with one.

    Which negatives stay is a hash of the row's frame keys, pixels and ``seed``: the same
    data and seed keep the same rows (the cache key and ``radlake reproduce`` rely on it).
    """
    from pyspark.sql import functions as F

    counts = rows.groupBy((F.size("labels") > 0).alias("positive")).count().collect()
    n = {bool(r["positive"]): int(r["count"]) for r in counts}
    n_pos, n_neg = n.get(True, 0), n.get(False, 0)
    if n_neg == 0 or n_pos == 0:
        return rows
    keep = min(1.0, per_positive * n_pos / n_neg)
    draw = F.pmod(F.xxhash64("sop_instance_uid", "frame_index", "pixels", F.lit(seed)), F.lit(1_000_000)) / 1e6
    return rows.where((F.size("labels") > 0) | (draw < keep))


def cache_dir(config: RadlakeConfig) -> Path:
    """Folder of the Parquet cache: ``loader.cache_dir`` or ``<work_dir>/cache/loader``."""
    return Path(config.loader.cache_dir) if config.loader.cache_dir else config.storage.work_dir / "cache" / "loader"


@dataclass(frozen=True)
class TrainingData:
    """The pinned, cached inputs of a training run (what :func:`prepare_training_data` built)."""

    detector: str
    #: The configuration to train with (after the stage's ``prepare``: pinned upstream models).
    config: RadlakeConfig
    #: Tags that record the stage's upstream inputs (e.g. the vertebra model behind the crops).
    stage_tags: dict[str, str]
    #: Delta version of each table the view reads.
    pinned: dict[str, int]
    #: Split name → Parquet cache folder.
    caches: dict[str, str]
    #: Split name → rows in the cache.
    sizes: dict[str, int]
    #: sha256 of the test split's frame keys (:func:`split_digest`).
    test_digest: str

    def tags(self) -> dict[str, str]:
        """The run tags every training run of these data carries (the promotion gate reads the digest)."""
        return {
            "radlake.detector": self.detector,
            "radlake.version": radlake.__version__,
            "radlake.git_commit": git_commit() or "unknown",
            "radlake.data_versions": json.dumps(self.pinned, sort_keys=True),
            "radlake.test_split_digest": self.test_digest,
            "radlake.test_cache": self.caches["test"],
            **self.stage_tags,
        }


def prepare_training_data(
    spark: SparkSession,
    config: RadlakeConfig,
    detector: str = "vertebra",
    *,
    versions: Mapping[str, int] | None = None,
) -> TrainingData:
    """Pin the table versions, materialise the train / val / test views into the Parquet cache.

    Raises
    ------
    ConfigError
        For an unknown detector.
    NoTrainingDataError
        If a table is missing or a split has no frames.
    """
    from radlake.data.converter import make_spark_converter

    stage = get_stage(detector)
    stage_tags: dict[str, str] = {}
    if stage.prepare is not None:
        config, stage_tags = stage.prepare(config)
    settings = getattr(config.train, detector)
    pinned = pin_versions(spark, config, stage.tables, versions)
    view = stage.view(spark, config, pinned).select(*stage.cache_columns, "split")
    caches = {}
    sizes = {}
    for split in SPLITS:
        rows = view.where(view.split == split).drop("split")
        if split == "train" and settings.negatives_per_positive is not None:
            rows = subsample_negatives(rows, settings.negatives_per_positive, settings.seed)
        converter = make_spark_converter(
            rows,
            cache_dir=cache_dir(config),
            source_versions={**pinned, "split": split, "detector": detector},  # type: ignore[dict-item]
            row_group_bytes=config.loader.row_group_bytes,
        )
        caches[split], sizes[split] = str(converter.path), len(converter)
    for split in ("train", "val", "test"):
        if sizes[split] == 0:
            raise NoTrainingDataError(
                f"The {split} split of the {detector} view is empty (tables at versions {pinned}): "
                "import labels for more studies (`radlake labels import`) or change labels.*_fraction."
            )
    return TrainingData(
        detector=detector,
        config=config,
        stage_tags=stage_tags,
        pinned=dict(pinned),
        caches=caches,
        sizes=sizes,
        test_digest=split_digest(view, "test"),
    )


def worker_settings(config: RadlakeConfig, data: TrainingData, run_id: str) -> dict[str, Any]:
    """The picklable ``settings`` of :func:`radlake.train.worker.train_worker` for one run of ``data``."""
    stage = get_stage(data.detector)
    settings = getattr(config.train, data.detector)
    return {
        "spec": stage.spec(config).as_dict(),
        "caches": data.caches,
        "run_id": run_id,
        "tracking_uri": mlflow.get_tracking_uri(),
        "registry_uri": mlflow.get_registry_uri(),
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "max_train_seconds": settings.max_train_minutes * 60 if settings.max_train_minutes else None,
        "num_workers": config.loader.num_workers,
        "use_gpu": settings.use_gpu,
        "weights": str(settings.weights) if settings.weights else None,
        "augment": settings.augment.model_dump(),
        "val_images_logged": settings.val_images_logged,
        "val_every_epochs": settings.val_every_epochs,
    }


def log_run_config(config: RadlakeConfig, data: TrainingData, tags: Mapping[str, str] | None = None) -> None:
    """Into the active run: the flattened config as params, cache sizes, the data tags, the config file."""
    mlflow.log_params(flatten({"config": config.model_dump(mode="json", by_alias=True)}))
    mlflow.log_params({"data.rows." + k: v for k, v in data.sizes.items()})
    mlflow.set_tags({**data.tags(), **(tags or {})})
    mlflow.log_text(config_as_yaml(config), "config/config.yml")


#: Plain words for a detector and for the rows of its training view.
DETECTOR_WORDS = {"vertebra": ("vertebra detector", "frames"), "schmorl": ("Schmorl's-node detector", "crops")}
#: Plain names of the metrics a training run's description quotes.
_METRIC_WORDS = {
    "test_map_50": "test mAP@0.5",
    "test_level_id_rate": "test level identification",
    "test_ap_30": "test AP@0.3",
    "test_crop_auc": "test crop AUC",
    "e2e_froc_sens_at_1fp": "end-to-end sensitivity at 1 FP per frame",
}


def training_note(
    config: RadlakeConfig,
    data: TrainingData,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """A training run's one-line description: what it trains on, then (given its ``metrics``) how it did.

    ``tags`` are the run's: ``radlake.reproduces`` names the run it reproduces,
    ``radlake.stopped_by`` says whether the time budget stopped it before its last epoch.
    """
    stage = get_stage(data.detector)
    settings = getattr(config.train, data.detector)
    what, unit = DETECTOR_WORDS.get(data.detector, (f"{data.detector} detector", "rows"))
    tags = tags or {}
    prefix = f"Reproduces run {tags['radlake.reproduces']}: " if tags.get("radlake.reproduces") else ""
    sizes = data.sizes
    rows = f"{sizes.get('train', 0)} train, {sizes.get('val', 0)} val and {sizes.get('test', 0)} test {unit}"
    if metrics is None:
        tables = ", ".join(f"{t} v{v}" for t, v in sorted(data.pinned.items()))
        return f"{prefix}Trains the {what} ({settings.backbone} backbone, up to {settings.epochs} epochs) on {rows} ({tables})."
    keys = [f"test_{k}" for k in (stage.primary_metric, stage.secondary_metric) if k] + ["e2e_froc_sens_at_1fp"]
    figures = [f"{_METRIC_WORDS.get(k, k)} {metrics[k]:.3f}" for k in keys if k in metrics]
    epochs = int(metrics.get("epochs_completed", 0))
    stopped = ", stopped by its time budget" if tags.get("radlake.stopped_by") == "time budget" else ""
    return (
        f"{prefix}Trained the {what} ({settings.backbone} backbone, {epochs} epochs{stopped}) on {rows}: "
        f"{', '.join(figures) or 'no test metrics'}."
    )


def train_detector(
    spark: SparkSession,
    config: RadlakeConfig,
    detector: str = "vertebra",
    *,
    versions: Mapping[str, int] | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainSummary:
    """Train ``detector`` (see the module docstring) and return the run read back from MLflow.

    Raises
    ------
    ConfigError
        For an unknown detector.
    NoTrainingDataError
        If a table is missing or the train or validation split has no frames.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    stage = get_stage(detector)
    parent = mlflow.active_run()
    # Under a pipeline's parent run the training run is its child, in the parent's experiment.
    experiment_id = (
        parent.info.experiment_id if parent else configure_mlflow(config, detector_experiment(config, detector))
    )
    say("train %s: pinning the tables and caching the training views", detector)
    data = prepare_training_data(spark, config, detector, versions=versions)
    config, pinned = data.config, data.pinned
    settings = getattr(config.train, detector)
    with run_scope(
        run_name=run_name or f"train-{detector}", nested=parent is not None, experiment_id=experiment_id
    ) as run:
        log_run_config(config, data, tags)
        describe_run(training_note(config, data, tags=tags))
        log_dataset_inputs(spark, config, stage, pinned)
        from radlake.train.worker import train_worker

        distributor = TorchDistributor(
            num_processes=settings.num_processes, local_mode=settings.local_mode, use_gpu=settings.use_gpu
        )
        run_id = run.info.run_id
        say(
            "train %s: run %s, %s frames (train / val / test: %s), up to %d epochs on %d processes",
            detector,
            run_id,
            f"{sum(data.sizes.values()):,}",
            " / ".join(f"{data.sizes.get(s, 0):,}" for s in ("train", "val", "test")),
            settings.epochs,
            settings.num_processes,
        )
        with polling(epoch_progress(f"train {detector}", run_id, settings.epochs), every_s=5):
            distributor.run(train_worker, worker_settings(config, data, run_id))
        if "test_map_50" not in mlflow.MlflowClient().get_run(run_id).data.metrics:
            raise RuntimeError(
                f"Training run {run_id} ended without test metrics: a training process failed (see its log)"
            )
        if stage.evaluate is not None:
            say("train %s: end-to-end evaluation on the test split", detector)
            mlflow.log_metrics(stage.evaluate(spark, config, pinned, f"runs:/{run_id}/model"))
        done = mlflow.MlflowClient().get_run(run_id).data
        describe_run(training_note(config, data, metrics=done.metrics, tags=done.tags))
    finished = mlflow.MlflowClient().get_run(run_id)
    epochs = int(finished.data.metrics.get("epochs_completed", 0))
    say("train %s: %d epochs, stopped by %s", detector, epochs, finished.data.tags.get("radlake.stopped_by", "?"))
    return TrainSummary(
        detector=detector,
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=f"runs:/{run_id}/model",
        data_versions=pinned,
        metrics=dict(finished.data.metrics),
    )


def epoch_progress(what: str, run_id: str, epochs: int) -> Callable[[], None]:
    """A progress report of run ``run_id``'s epochs (its ``train_loss`` history), for :func:`radlake.console.polling`."""
    client = mlflow.MlflowClient()
    progress = Progress(what, total=epochs, unit="epochs")
    shown = {"epochs": 0}

    def report() -> None:
        history = client.get_metric_history(run_id, "train_loss")
        if history and len(history) != shown["epochs"]:
            shown["epochs"] = len(history)
            last = max(history, key=lambda m: m.step)
            progress.update(last.step + 1, detail=f"train loss {last.value:.3f}")

    return report


def log_dataset_inputs(spark: SparkSession, config: RadlakeConfig, stage: Detector, pinned: Mapping[str, int]) -> None:
    """Each table the view reads, at its pinned version, as an MLflow dataset input."""
    for table in stage.tables:
        log_table_input(config, table, pinned[table.value], context="training")
