"""Typed configuration: one pydantic schema for every setting, YAML files per environment.

A configuration is chosen by name or path (``--conf local``, ``--conf dev``,
``--conf conf/prod.yml``) and any key can be overridden on the command line with
``--set section.key=value`` (the value is parsed as YAML, so ``3`` is an int,
``true`` a bool and ``[1, 2]`` a list). Unknown keys and wrong types raise
:class:`~radlake.errors.ConfigError` naming the key, before any Spark work starts.

Relative paths in ``storage`` are resolved against the current working directory,
so ``make demo`` run from the repository keeps everything under ``./.radlake``.

Examples
--------
>>> cfg = load_config("local", overrides=["storage.root=/tmp/radlake-doc"])
>>> cfg.storage.warehouse_dir
PosixPath('/tmp/radlake-doc/warehouse')
>>> cfg.mlflow.resolved_tracking_uri()
'sqlite:////tmp/radlake-doc/mlflow.db'

"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from radlake.errors import ConfigError
from radlake.synth.params import SynthConfig

#: Environment variable naming the folder that holds ``<name>.yml`` configurations.
CONF_DIR_ENV = "RADLAKE_CONF_DIR"


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    """Where tables, caches and local state live.

    Locally (``catalog`` unset) every table is a path-based Delta table under
    ``warehouse_dir``. On Databricks ``catalog`` and ``schema`` name the Unity
    Catalog schema and tables are ``catalog.schema.table``.
    """

    root: Path = Field(Path(".radlake"), description="Local state folder (relative to the working directory).")
    warehouse: Path | None = Field(None, description="Delta tables folder; default <root>/warehouse.")
    catalog: str | None = Field(None, description="Unity Catalog catalog; unset locally.")
    schema_: str = Field("radlake", alias="schema", description="Schema (database) of the tables.")
    volume: str | None = Field(
        None, description="Unity Catalog Volume path for caches and exports, e.g. /Volumes/main/radlake/work."
    )

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @property
    def root_dir(self) -> Path:
        """Absolute local state folder."""
        return Path(os.path.abspath(self.root))

    @property
    def warehouse_dir(self) -> Path:
        """Absolute folder of the path-based Delta tables (local mode)."""
        return Path(os.path.abspath(self.warehouse)) if self.warehouse else self.root_dir / "warehouse"

    @property
    def work_dir(self) -> Path:
        """Folder for caches and exports: the Volume on Databricks, ``<root>`` locally."""
        return Path(self.volume) if self.volume else self.root_dir


class TablesConfig(_Section):
    """Physical table name of each logical table (see :class:`radlake.tables.Table`)."""

    instances: str = "instances"
    series: str = "series"
    images: str = "images"
    quarantine: str = "quarantine"
    duplicates: str = "duplicates"
    ingest_files: str = "ingest_files"
    annotations: str = "annotations"
    splits: str = "splits"
    vertebra_crops: str = "vertebra_crops"
    predictions: str = "predictions"
    study_findings: str = "study_findings"


class DeidConfig(_Section):
    """De-identification (PS3.15 Basic Profile, UIDs retained); on by default.

    The HMAC key that turns PatientID and AccessionNumber into pseudonyms comes from
    the environment variable ``key_env`` locally, and from the Databricks secret
    ``secret_scope``/``secret_key`` on Databricks.
    """

    enabled: bool = True
    key_env: str = "RADLAKE_DEID_KEY"
    secret_scope: str | None = None
    secret_key: str | None = None


class IngestConfig(_Section):
    """The DICOM → Delta ingestion job."""

    archive: str | None = Field(None, description="Folder, Volume path or URI of the DICOM archive.")
    image_rule: str = Field(
        "modality = 'MR' AND plane = 'SAGITTAL'",
        description="Spark SQL predicate on the instances columns choosing which instances get decoded into images.",
    )
    oblique_tolerance_deg: float = Field(
        30.0, gt=0, lt=90, description="Normal-to-axis angle beyond which a plane is OBLIQUE."
    )
    max_decoded_bytes: int = Field(1 << 30, ge=1, description="A file whose decoded pixels exceed this is quarantined.")
    isolate_decoders: bool = Field(
        True,
        description=(
            "Decode compressed pixel data in a child process of each Python worker, so that a native decoder "
            "that crashes, hangs or exhausts memory on a hostile file quarantines that file instead of ending "
            "the run (radlake.dicom.sandbox)."
        ),
    )
    decode_timeout_s: float = Field(
        300.0, gt=0, description="Seconds a sandboxed decoder may take for one frame before it is killed."
    )
    max_member_bytes: int = Field(2 << 30, ge=1, description="Largest archive member read into memory.")
    max_header_json_bytes: int = Field(65536, ge=1024, description="Cap of the header DICOM JSON per instance.")
    partition_bytes: int = Field(256 << 20, ge=1 << 20, description="Target stored bytes per Spark task.")
    partition_files: int = Field(2000, ge=1, description="Most files per Spark task.")
    images_row_group_frames: int = Field(
        16,
        ge=1,
        description=(
            "Most frames per Parquet row group of the images table (its Delta table property "
            "parquet.block.row.count.limit, used by every later write). Spark splits a scan between row groups, "
            "so small groups spread a table of few large files over every core: 16 frames are 4.7 MB at 384 px, "
            "8.4 MB at 512 px (16-bit)."
        ),
    )
    images_compression: Literal["none", "snappy", "lz4_raw", "zstd"] = Field(
        "none",
        description=(
            "Parquet codec of the images table's files. Noisy 16-bit MR pixels compress little: snappy shrank "
            "the benchmark's frames by 12 % and added 5-7 CPU-s per 2 GB of pixels to the ingest (2.5-3.5 s of a "
            "35 s run on 2 cores); zstd (level 3 in Parquet) shrinks them by ~28 % at several times that cost."
        ),
    )
    deid: DeidConfig = Field(default_factory=DeidConfig)


class MlflowConfig(_Section):
    """MLflow tracking and registry.

    Unset URIs mean the embedded default: a sqlite store ``<root>/mlflow.db`` with
    artifacts under ``<root>/mlartifacts``. On Databricks use ``databricks`` and
    ``databricks-uc``.
    """

    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = "radlake"
    artifact_location: str | None = Field(
        None, description="Artifact root of new experiments; default <root>/mlartifacts locally."
    )

    def resolved_tracking_uri(self, storage: StorageConfig | None = None) -> str:
        """The tracking URI to use: the configured one or the local sqlite default."""
        if self.tracking_uri:
            return self.tracking_uri
        root = (storage or StorageConfig()).root_dir
        return f"sqlite:///{root / 'mlflow.db'}"


class ModelsConfig(_Section):
    """Registered model names (three-level ``catalog.schema.name`` on Unity Catalog)."""

    vertebra: str = "vertebra_detector"
    schmorl: str = "schmorl_detector"


class SparkConfig(_Section):
    """Settings of the local Spark session; ignored on Databricks, where the cluster decides."""

    master: str = "local[*]"
    remote: str | None = Field(
        None,
        pattern=r"^sc://",
        description=(
            "A Spark Connect server (sc://host:port, e.g. Databricks serverless or a standard-access cluster "
            "through Databricks Connect): radlake's session is then a Spark Connect client, and master, "
            "driver_memory and the jars are the server's business."
        ),
    )
    driver_memory: str = Field("4g", pattern=r"^\d+[kmgt]?$")
    shuffle_partitions: int = Field(8, ge=1)
    arrow_batch_size: int = Field(1024, ge=1, description="spark.sql.execution.arrow.maxRecordsPerBatch")
    driver_java_options: str = Field(
        "-XX:+UseParallelGC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m",
        description=(
            "JVM options of the local driver (its only JVM). The default suits short batch jobs on few cores: "
            "the throughput collector, and the quick JIT compiler only, whose compile time is a fraction of "
            "C2's (measured on 2 cores: a 10,000-file ingest 109 -> 98 s). With the quick compiler alone the "
            "JVM reserves only 48 MiB for compiled code, which a 10,000-file ingest filled ('CodeCache is "
            "full. Compiler has been disabled'), so the cache is raised to 256 MiB (reserved, committed as "
            "used). Set '' for the JVM's defaults."
        ),
    )
    class_archive: bool = Field(
        True,
        description=(
            "Start the local JVM with the class archive (class-data sharing) that `radlake setup-jars` builds "
            "for this machine's Java and jars, if there is one. Measured on 2 cores: session start 5.7 -> 2.9 s "
            "(job times change within noise). false: neither build nor use it."
        ),
    )
    worker_preload: list[str] = Field(
        default_factory=lambda: ["torch", "torchvision.models.detection", "mlflow.pyfunc"],
        description=(
            "Modules the Python worker daemon of a local session or standalone cluster imports before it forks "
            "its workers (radlake.worker_daemon), so that no worker imports them again: a scoring UDF's worker "
            "otherwise spends about 6 CPU-s importing torch, torchvision and MLflow, after every idle spell. "
            "[]: pyspark's own daemon. Databricks and Spark Connect servers keep their own daemon."
        ),
    )
    extra: dict[str, str] = Field(default_factory=dict, description="Any other spark.* settings.")
    jars_dir: Path | None = Field(
        None, description="Delta Lake jars folder; default <python prefix>/share/radlake/jars (filled by make setup)."
    )

    @property
    def resolved_jars_dir(self) -> Path:
        """Folder of the Delta jars: beside the installed packages, so they match pyspark's version."""
        return (
            Path(os.path.abspath(self.jars_dir)) if self.jars_dir else Path(sys.prefix) / "share" / "radlake" / "jars"
        )


class LabelsConfig(_Section):
    """Annotations import and the train / validation / test split (by study)."""

    file: str | None = Field(None, description="Default labels file for `radlake labels import`.")
    split_seed: int = Field(0, description="Seed of the study-level split; change it only to start a new split.")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="Share of studies in validation.")
    test_fraction: float = Field(0.15, ge=0, lt=1, description="Share of studies in the frozen test split.")

    @model_validator(mode="after")
    def _fractions_leave_training(self) -> LabelsConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave studies for training (sum < 1)")
        return self


class LoaderConfig(_Section):
    """The Parquet cache and torch loader of training data (``radlake.data``)."""

    cache_dir: Path | None = Field(None, description="Parquet cache folder; default <work_dir>/cache/loader.")
    row_group_bytes: int = Field(16 << 20, ge=1 << 16, description="Target bytes per Parquet row group.")
    num_workers: int = Field(1, ge=0, description="torch DataLoader worker processes per training process.")


class AugmentConfig(_Section):
    """Training-time augmentations (:mod:`radlake.data.transforms`; none at evaluation).

    Geometry is in pixels of the network input. Appearance follows what differs between
    scanners and sites: coil bias, point-spread function, noise, bit depth, contrast.
    """

    enabled: bool = True
    scale_range: tuple[float, float] = Field((0.85, 1.15), description="Random zoom factor range.")
    translate_fraction: float = Field(
        0.08,
        ge=0,
        le=0.5,
        description="Random shift, fraction of the input side (physical inputs: of the training window, "
        "which can then reach past the frame's edges and cut bodies).",
    )
    gamma_range: tuple[float, float] = Field((0.7, 1.4), description="Random intensity gamma range.")
    contrast_range: tuple[float, float] = Field(
        (0.75, 1.3), description="Random contrast factor about mid-grey, applied to the [0, 1] intensities."
    )
    noise_std: float = Field(
        0.05, ge=0, description="Rician noise of a std drawn up to this, on the [0, 1] normalised intensities."
    )
    bias_strength: float = Field(
        0.25, ge=0, description="Std of the log gain of a smooth multiplicative bias field (0: none)."
    )
    blur_sigma_px: float = Field(
        1.0, ge=0, description="Half the samples are blurred by a Gaussian of std up to this, input pixels."
    )
    min_bits: int = Field(
        6, ge=1, le=8, description="30 % of the samples are quantised to 2**b grey levels, b in [min_bits, 8]."
    )
    flip_vertical: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of a top-bottom flip. Off for whole sagittal frames (the sacrum is at the "
        "bottom); on for Schmorl's crops, where a node of the superior endplate mirrors one of the inferior.",
    )
    flip_horizontal: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of a left-right flip (on a sagittal image: anterior-posterior). Off for whole "
        "frames; on for Schmorl's crops, where a node may sit anywhere along the endplate.",
    )


class DetectorConfig(_Section):
    """One detector's model and training settings (``train.vertebra``, ``train.schmorl``)."""

    experiment: str | None = Field(
        None, description="MLflow experiment of its runs; default <mlflow.experiment>-<detector>."
    )
    backbone: Literal["tiny", "resnet18_fpn", "resnet50_fpn"] = Field(
        "tiny", description="tiny: a small conv FPN for CPUs; the others are torchvision backbones."
    )
    weights: Path | None = Field(None, description="Local backbone or model weights (.pt); none are downloaded.")
    image_size: int = Field(
        256,
        ge=32,
        description="Side in pixels of the square training input: a window of the field of view when "
        "input_spacing_mm is set, else every input letterboxed.",
    )
    input_spacing_mm: float | None = Field(
        None,
        gt=0,
        description="Resample every frame to this pixel size (mm) before the network, from its PixelSpacing: "
        "a 256 px, 1.2 mm frame and a 512 px, 0.6 mm one then show the same anatomy at the same size. "
        "Unset: letterbox to image_size (the Schmorl's detector, whose crops are already sized by their vertebra).",
    )
    batch_size: int = Field(8, ge=1, description="Images per step per process.")
    epochs: int = Field(30, ge=1)
    max_train_minutes: float | None = Field(10, gt=0, description="Hard stop of training after this wall time.")
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    num_processes: int = Field(2, ge=1, description="DDP processes (TorchDistributor num_processes).")
    use_gpu: bool = False
    local_mode: bool = Field(
        True, description="TorchDistributor local_mode: processes on the driver (False: on the workers)."
    )
    score_threshold: float = Field(0.3, ge=0, le=1, description="Lowest score the pyfunc returns.")
    nms_iou: float = Field(0.5, gt=0, le=1)
    detections_per_image: int = Field(30, ge=1)
    val_images_logged: int = Field(6, ge=0, description="Validation images drawn with boxes in the run.")
    val_every_epochs: int = Field(
        1,
        ge=1,
        description="Evaluate on the validation split every this many epochs (and after the last): validation "
        "takes its time out of max_train_minutes. A sweep's pruner sees the validated epochs only.",
    )
    negatives_per_positive: float | None = Field(
        None,
        ge=0,
        description="Training split only: keep about this many images without a box per image with one "
        "(drawn by seed); unset keeps every image.",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    promotion_floors: dict[str, float] = Field(
        default_factory=dict,
        description="Absolute floors on the training run's metrics (logged names, e.g. test_map_50): a model under "
        "any of them is registered but never becomes champion, even on an empty registry.",
    )


#: Where ``train.vertebra`` differs from :class:`DetectorConfig`'s defaults: frames resampled to
#: 1 mm pixels and cut to 288 px windows (288 mm of field of view; at 1.25 mm the bodies span
#: under three stride-8 cells and FCOS's boxes stayed half a body off for the whole CPU
#: budget), class-agnostic NMS at IoU 0.3 (vertebral bodies do not overlap: a box that
#: overlaps another by a third is a duplicate), validation every third epoch, and the floors a
#: vertebra model must reach on its test split to become champion.
VERTEBRA_DEFAULTS: dict[str, Any] = {
    "input_spacing_mm": 1.0,
    "image_size": 288,
    "nms_iou": 0.3,
    "val_every_epochs": 3,
    # A wrong level misleads, an uncertain one does not: with a 4-study test split, one series cut
    # above the sacrum leaves a quarter of the bodies honestly uncertain (seen on the demo's).
    "promotion_floors": {"test_map_50": 0.8, "test_level_id_rate": 0.5, "test_level_right_or_uncertain_rate": 0.9},
}

#: Where ``train.schmorl`` differs from :class:`DetectorConfig`'s defaults. Vertebra crops
#: are small and nodes few: 128 px crops upsampled to 256 px (a node spans a few
#: stride-8 cells), two crops without a node per crop with one in training (most crops
#: hold none), and a low score floor so that the FROC curve reaches 4 false positives
#: per image. Measured on the demo's crops (24 studies, nodes in 70 % of vertebrae, 10
#: minutes on 2 cores): end-to-end sensitivity at 1 FP per frame 0.60 with batches of 8;
#: 0.68 with the flips added.
SCHMORL_DEFAULTS: dict[str, Any] = {
    "image_size": 256,
    "batch_size": 8,
    "epochs": 40,
    "max_train_minutes": 10,
    "score_threshold": 0.05,
    "detections_per_image": 10,
    "negatives_per_positive": 2.0,
    # The validation crops take most of an epoch's time: validate every tenth (and at the end).
    "val_every_epochs": 10,
    # Nodes are a few pixels of the crop: the site augmentations that blur, bias and quantise
    # whole frames wash them out (measured: crop AP@0.3 0.02 after 10 minutes with them, 0.57
    # with these); gamma and noise stay.
    "augment": {"contrast_range": (0.9, 1.1), "noise_std": 0.03, "bias_strength": 0.0, "blur_sigma_px": 0.0,
                "min_bits": 8, "flip_vertical": 0.5, "flip_horizontal": 0.5},
    "promotion_floors": {"test_ap_30": 0.3},
}  # fmt: skip


class TrainConfig(_Section):
    """The detectors radlake trains (keys not given take :data:`VERTEBRA_DEFAULTS` / :data:`SCHMORL_DEFAULTS`)."""

    vertebra: DetectorConfig = Field(default_factory=lambda: DetectorConfig(**VERTEBRA_DEFAULTS))
    schmorl: DetectorConfig = Field(default_factory=lambda: DetectorConfig(**SCHMORL_DEFAULTS))

    @model_validator(mode="before")
    @classmethod
    def _detector_defaults_under_partial_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, defaults in (("vertebra", VERTEBRA_DEFAULTS), ("schmorl", SCHMORL_DEFAULTS)):
                given = data.get(name)
                if isinstance(given, dict):
                    merged = {**defaults, **given}
                    if isinstance(defaults.get("augment"), dict) and isinstance(given.get("augment"), dict):
                        merged["augment"] = {**defaults["augment"], **given["augment"]}
                    data = {**data, name: merged}
        return data


class CropsConfig(_Section):
    """Vertebra crops for the second stage (``radlake crops``; :mod:`radlake.models.crops`)."""

    vertebra_model: str | None = Field(
        None, description="Vertebra detector URI (models:/ or runs:/); default models:/<models.vertebra>@champion."
    )
    source: Literal["predicted", "ground_truth", "both"] = Field(
        "both",
        description="Crops around the vertebra model's boxes (the second stage learns its real errors), "
        "around the labelled boxes, or both (twice the nodes to learn from, and two framings of each).",
    )
    margin_fraction: float = Field(
        0.25, ge=0, le=2, description="Margin around a vertebra box, as a fraction of its height (y) and width (x)."
    )
    size: int = Field(128, ge=16, description="Side of the square crop, pixels.")
    min_score: float = Field(0.3, ge=0, le=1, description="Lowest vertebra score that gets a crop.")

    def model_uri(self, models: ModelsConfig) -> str:
        """The vertebra model URI to use: the configured one, else the champion of ``models.vertebra``."""
        return self.vertebra_model or f"models:/{models.vertebra}@champion"


class ScoreConfig(_Section):
    """Batch scoring of the archive (``radlake score``; :mod:`radlake.score`).

    Crops for the second stage are cut with ``crops.margin_fraction`` and ``crops.size``,
    which must be the settings the Schmorl's model was trained with.
    """

    vertebra_model: str | None = Field(
        None, description="Vertebra detector URI (models:/ or runs:/); default models:/<models.vertebra>@champion."
    )
    schmorl_model: str | None = Field(
        None, description="Schmorl's-node detector URI; default models:/<models.schmorl>@champion."
    )
    vertebra_threshold: float = Field(
        0.3, ge=0, le=1, description="Lowest vertebra score kept (and cropped for the second stage)."
    )
    schmorl_threshold: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Lowest Schmorl's-node score kept. The demo's model over its whole archive: 0.80 sensitivity "
        "at 0.29 false positives per frame at 0.4; 0.82 at 1.34 at 0.3; 0.65 at 0.07 at 0.5.",
    )
    batch_size: int = Field(8, ge=1, description="Images (or crops) per forward pass inside the UDFs.")
    scan_tasks_per_slot: int = Field(
        4,
        ge=1,
        description=(
            "Scoring reads images in at least this many tasks per task slot (Spark's "
            "spark.sql.files.minPartitionNum for the scoring query), split between the table's row groups "
            "(ingest.images_row_group_frames), so that no core idles while the last large task of a small "
            "table runs. A large table is split into 128 MB tasks anyway."
        ),
    )
    merge_iou: float = Field(
        0.3, gt=0, le=1, description="NMS IoU merging the same node found in two overlapping crops (source pixels)."
    )
    level_min_probability: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Posterior of a vertebra's level (decoded over its whole stack) below which the level is "
        "reported uncertain instead of named.",
    )
    artifact_studies: int = Field(
        1,
        ge=0,
        description="Studies whose review PNGs (review/) and DICOM SR (sr/, with sr/summary.json) the score run logs "
        "as artifacts: those it scored with the strongest Schmorl's-node finding first. 0: none.",
    )
    artifact_slices: int = Field(
        5, ge=1, description="Central sagittal slices per series in the score run's review PNGs."
    )

    def model_uris(self, models: ModelsConfig) -> tuple[str, str]:
        """(vertebra, Schmorl's) model URIs: the configured ones, else the champions of ``models``."""
        return (
            self.vertebra_model or f"models:/{models.vertebra}@champion",
            self.schmorl_model or f"models:/{models.schmorl}@champion",
        )


class EvaluateConfig(_Section):
    """External validation of registered models (``radlake evaluate``; :mod:`radlake.workflow.evaluate`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    schema_: str | None = Field(
        None,
        alias="schema",
        description="Unity Catalog schema of the evaluation tables (catalog set); default <storage.schema>_evaluation. "
        "Locally they go under <storage.root>/evaluation/<archive>-<hash> or --root.",
    )
    schmorl_threshold: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Lowest Schmorl's-node score kept while scoring the evaluation archive, so that the FROC curve "
        "reaches 4 false positives per image (the operating point is still score.schmorl_threshold); at most "
        "score.schmorl_threshold.",
    )


class RadlakeConfig(_Section):
    """The whole configuration of one environment."""

    environment: Literal["local", "dev", "prod", "test"] = "local"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    crops: CropsConfig = Field(default_factory=CropsConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    def with_vertebra_model(self, uri: str) -> RadlakeConfig:
        """A copy whose ``crops.vertebra_model`` is ``uri`` (the vertebra model behind crops and Schmorl's runs)."""
        return self.model_copy(update={"crops": self.crops.model_copy(update={"vertebra_model": uri})})


def find_config_file(name_or_path: str | os.PathLike[str]) -> Path | None:
    """Locate a configuration by path or by environment name.

    Parameters
    ----------
    name_or_path
        A path to a YAML file, or a name such as ``local`` looked up as
        ``<name>.yml`` in ``$RADLAKE_CONF_DIR`` and then ``./conf``.

    Returns
    -------
    Path | None
        The file, or ``None`` for the name ``local`` when no file exists (the
        schema's defaults are the local configuration).

    Raises
    ------
    ConfigError
        If a path or a name other than ``local`` names no file.
    """
    text = os.fspath(name_or_path)
    candidate = Path(text)
    if candidate.suffix in {".yml", ".yaml"} or os.sep in text:
        if not candidate.is_file():
            raise ConfigError(f"Configuration file '{text}' does not exist.")
        return candidate
    folders = [Path(os.environ[CONF_DIR_ENV])] if os.environ.get(CONF_DIR_ENV) else []
    folders.append(Path("conf"))
    for folder in folders:
        for suffix in (".yml", ".yaml"):
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path
    if text == "local":
        return None
    searched = ", ".join(str(f) for f in folders)
    raise ConfigError(f"No configuration named '{text}' (looked for {text}.yml in {searched}).")


def load_config(
    name_or_path: str | os.PathLike[str] = "local",
    *,
    overrides: list[str] | tuple[str, ...] = (),
) -> RadlakeConfig:
    """Load and validate a configuration, then apply ``key=value`` overrides.

    Parameters
    ----------
    name_or_path
        Environment name (``local``, ``dev``, ``prod``) or YAML file path.
    overrides
        ``dotted.key=value`` strings; values are parsed as YAML.

    Returns
    -------
    RadlakeConfig

    Raises
    ------
    ConfigError
        If the file is not valid YAML, names an unknown key, or a value has the
        wrong type; the message names the key.
    """
    path = find_config_file(name_or_path)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"Configuration file '{path}' is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"Configuration file '{path}' must hold a mapping, got {type(loaded).__name__}.")
        data = loaded or {}
    source = str(path) if path else "built-in defaults"
    for item in overrides:
        key, value = _parse_override(item)
        depth = _check_key(key)
        parts = key.split(".")
        if depth < len(parts) - 1:  # below a free-form mapping: the rest is one key, the value its text
            parts = [*parts[:depth], ".".join(parts[depth:])]
            value = item.partition("=")[2].strip()
        _set_dotted(data, parts, value)
    try:
        return RadlakeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, source)) from exc


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Override '{item}' must look like section.key=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"Override '{item}': value is not valid YAML: {exc}") from exc
    return key, value


def _check_key(dotted: str) -> int:
    """Raise ConfigError naming ``dotted`` if it is not a key of the schema.

    Returns how many of its dotted parts name schema fields: fewer than all when the key
    goes below a free-form mapping (``spark.extra.spark.eventLog.dir`` → 2).
    """
    model: type[BaseModel] | None = RadlakeConfig
    walked: list[str] = []
    for part in dotted.split("."):
        if model is None:  # below a free-form mapping (e.g. spark.extra.<any spark key>)
            return len(walked)
        fields = _field_names(model)
        if part not in fields:
            hint = difflib.get_close_matches(part, list(fields), n=1)
            where = ".".join(walked) or "the top level"
            suggestion = f" (did you mean '{'.'.join([*walked, hint[0]])}'?)" if hint else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(
                f"Unknown config key '{dotted}': '{part}' is not a key of {where}{suggestion}. Known keys: {known}."
            )
        walked.append(part)
        model = fields[part]
    return len(walked)


def _field_names(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    names: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        sub = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
        names[field.alias or name] = sub
    return names


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown config key '{key}'")
        else:
            lines.append(f"  '{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def config_as_yaml(config: RadlakeConfig) -> str:
    """Render a configuration as YAML, with every default filled in."""
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
