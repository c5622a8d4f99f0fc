"""The registered pair of models, end to end, on another labelled archive (a held-out synthetic seed).

The held-out archive gets tables of its own (``storage.root`` = ``root``) while MLflow
stays the main configuration's store, so the models are the registered ones: its
files are ingested, its labels imported, its vertebra crops made with the vertebra
model (``predicted``), and :func:`radlake.train.schmorl.end_to_end_metrics` scores
every labelled frame, not only a test split. Nothing of the held-out archive reaches
the training tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from radlake.config import RadlakeConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def held_out_config(config: RadlakeConfig, root: str | Path) -> RadlakeConfig:
    """``config`` with its tables under ``root`` and MLflow still at ``config``'s stores."""
    tracking = config.mlflow.resolved_tracking_uri(config.storage)
    artifacts = config.mlflow.artifact_location or (config.storage.root_dir / "mlartifacts").as_uri()
    return config.model_copy(
        update={
            "storage": config.storage.model_copy(update={"root": Path(root), "warehouse": None}),
            "mlflow": config.mlflow.model_copy(
                update={
                    "tracking_uri": tracking,
                    "registry_uri": config.mlflow.registry_uri or tracking,
                    "artifact_location": artifacts,
                }
            ),
            "crops": config.crops.model_copy(update={"source": "predicted"}),
        }
    )


def evaluate_held_out(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    archive: str | Path,
    labels_file: str | Path,
    root: str | Path,
    vertebra_model: str,
    schmorl_model: str,
) -> dict[str, float]:
    """End-to-end metrics (``e2e_*``) of the two models over every labelled frame of ``archive``."""
    from radlake.data.crops import make_crops
    from radlake.data.splits import import_labels_and_split
    from radlake.ingest import run_ingest
    from radlake.registry.resolve import resolve_model_uri
    from radlake.tables import table_ref
    from radlake.train.schmorl import SCHMORL_TABLES, end_to_end_metrics

    held = held_out_config(config, root)
    run_ingest(spark, held, archive=str(archive))
    import_labels_and_split(spark, held, labels_file)
    crops = make_crops(spark, held, vertebra_model=vertebra_model)
    pinned = held.with_vertebra_model(crops.vertebra_model["uri"])
    versions = {t.value: table_ref(held, t).version(spark) for t in SCHMORL_TABLES}
    schmorl = resolve_model_uri(schmorl_model)
    return end_to_end_metrics(spark, pinned, versions, schmorl.uri, split=None)
