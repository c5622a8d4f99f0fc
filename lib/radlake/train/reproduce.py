"""``radlake reproduce --run-id ID``: train again from a logged run's configuration and data versions.

The new run reads the logged ``config/config.yml`` artifact (storage and MLflow
settings are taken from the current configuration, so a run can be reproduced on
another machine or workspace) and the same Delta versions (tag
``radlake.data_versions``), then both runs' metrics are put side by side. On CPU the
same seed, code and data give the same metrics within :data:`CPU_TOLERANCE`
(floating-point reductions in DDP and BLAS threads are not bit-exact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
import yaml

from radlake.config import RadlakeConfig
from radlake.models.resolve import ModelNotFoundError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Largest absolute difference of a metric that still counts as reproduced on CPU.
CPU_TOLERANCE = 0.02


@dataclass(frozen=True)
class Reproduction:
    """Both runs' metrics and which differ by more than the tolerance."""

    original_run_id: str
    new_run_id: str
    metrics: dict[str, tuple[float, float]]
    tolerance: float

    @property
    def mismatched(self) -> list[str]:
        return [k for k, (a, b) in self.metrics.items() if abs(a - b) > self.tolerance]

    def table(self) -> str:
        lines = [f"{'metric':<32} {'original':>10} {'reproduced':>10} {'diff':>8}"]
        for key, (a, b) in sorted(self.metrics.items()):
            flag = "  !" if abs(a - b) > self.tolerance else ""
            lines.append(f"{key:<32} {a:>10.4f} {b:>10.4f} {b - a:>+8.4f}{flag}")
        return "\n".join(lines)


def reproduce(spark: SparkSession, config: RadlakeConfig, run_id: str) -> Reproduction:
    """Retrain the run ``run_id`` (see the module docstring).

    Raises
    ------
    ModelNotFoundError
        If the run does not exist or was not a radlake training run.
    """
    from radlake.tracking import configure_mlflow
    from radlake.train.run import train_detector

    configure_mlflow(config)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ModelNotFoundError(f"No MLflow run '{run_id}' in {mlflow.get_tracking_uri()}") from None
    tags = run.data.tags
    if "radlake.detector" not in tags or "radlake.data_versions" not in tags:
        raise ModelNotFoundError(f"Run '{run_id}' is not a radlake training run (no radlake.detector tag)")
    logged = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config/config.yml"))
    logged["storage"] = config.storage.model_dump(mode="json", by_alias=True)
    logged["mlflow"] = config.mlflow.model_dump(mode="json")
    logged["spark"] = config.spark.model_dump(mode="json")
    replay = RadlakeConfig.model_validate(logged)
    result = train_detector(
        spark,
        replay,
        tags["radlake.detector"],
        versions=json.loads(tags["radlake.data_versions"]),
        run_name=f"reproduce-{run_id[:8]}",
        tags={"radlake.reproduces": run_id},
    )
    keys = sorted(k for k in run.data.metrics if k.startswith(("test_", "val_")) or k == "train_loss")
    metrics = {k: (float(run.data.metrics[k]), float(result.metrics.get(k, float("nan")))) for k in keys}
    return Reproduction(run_id, result.run_id, metrics, CPU_TOLERANCE)
