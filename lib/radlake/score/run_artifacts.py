"""What a score run shows in MLflow besides its numbers: review PNGs and the DICOM SR of its top studies.

After ``radlake score`` has written its rows, :func:`log_score_artifacts` picks up to
``score.artifact_studies`` of the studies the run scored, the strongest Schmorl's-node
finding first (then the most vertebrae found, then the UID), among those with sagittal
frames, and logs into the active (score) run:

* ``review/<StudyInstanceUID>/*.png``: the central ``score.artifact_slices`` sagittal slices
  of each series with the boxes of the run's model pair drawn (:func:`radlake.score.review.write_review`,
  what ``radlake review`` writes);
* ``sr/<StudyInstanceUID>/SR_<pair digest>.dcm``: the study's TID 1500 DICOM SR
  (:func:`radlake.score.sr.export_sr`, what ``radlake export-sr`` writes);
* ``sr/summary.json``: the SR export summary of those studies (``files`` as paths in the
  run's artifacts, the measurement-group counts), and the review files of each study.

Everything is written to a temporary folder first, then logged; nothing lands in the
storage's work folder. A run that scored nothing logs nothing.

Example
-------
>>> with run_scope(run_name="score"):                                              # doctest: +SKIP
...     logged = log_score_artifacts(spark, config, run_id=run_id, model_pair=(v, s))
>>> logged["artifacts"][:2]                                                         # doctest: +SKIP
['review/1.2.3/3f2a9c1e0b7d_series2_slice003.png', 'review/1.2.3/3f2a9c1e0b7d_series2_slice004.png']
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from radlake.config import RadlakeConfig
from radlake.dicom.geometry import Plane
from radlake.tables import Table, table_ref

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["REVIEW_FOLDER", "SR_FOLDER", "SR_SUMMARY", "log_score_artifacts", "studies_to_show"]

#: Artifact folder of the review PNGs (one sub-folder per study).
REVIEW_FOLDER = "review"
#: Artifact folder of the DICOM SR files (one sub-folder per study) and their summary.
SR_FOLDER = "sr"
#: Artifact path of the SR export summary.
SR_SUMMARY = f"{SR_FOLDER}/summary.json"


def studies_to_show(spark: SparkSession, config: RadlakeConfig, run_id: str, limit: int) -> list[str]:
    """Up to ``limit`` StudyInstanceUIDs the score run ``run_id`` wrote sagittal rows for, best finding first.

    Ordered by the study's highest Schmorl's-node score (studies without a node last), then
    by vertebrae found (most first), then by UID.

    Raises
    ------
    ValueError
        If ``limit`` < 0.
    """
    if limit < 0:
        raise ValueError(f"Argument 'limit' must be >= 0, got {limit}.")
    if limit == 0:
        return []
    rows = (
        table_ref(config, Table.PREDICTIONS)
        .read(spark)
        .where((F.col("score_run_id") == run_id) & (F.col("plane") == Plane.SAGITTAL.value))
        .groupBy("study_instance_uid")
        .agg(F.max("max_schmorl_score").alias("best"), F.sum("n_vertebrae").alias("vertebrae"))
        .orderBy(F.desc_nulls_last("best"), F.desc("vertebrae"), "study_instance_uid")
        .limit(limit)
        .collect()
    )
    return [r["study_instance_uid"] for r in rows]


def log_score_artifacts(
    spark: SparkSession, config: RadlakeConfig, *, run_id: str, model_pair: Sequence[str]
) -> dict[str, Any]:
    """Log the review PNGs and DICOM SR of the run's top studies into the active MLflow run (the score run).

    Parameters
    ----------
    spark
        The Spark session.
    config
        Locates the tables; ``score.artifact_studies`` and ``score.artifact_slices`` say how many
        studies and slices.
    run_id
        The score run: the ``score_run_id`` of the rows to show.
    model_pair
        ``(vertebra_model_uri, schmorl_model_uri)`` of the run, as pinned in its rows.

    Returns
    -------
    dict
        ``studies`` (the UIDs shown), ``artifacts`` (every path logged, relative to the run's
        artifact root, sorted) and ``sr`` (the SR summary, as in ``sr/summary.json``).
    """
    import mlflow

    from radlake.score.review import write_review
    from radlake.score.sr import export_sr

    studies = studies_to_show(spark, config, run_id, config.score.artifact_studies)
    if not studies:
        return {"studies": [], "artifacts": [], "sr": None}
    pair = (model_pair[0], model_pair[1])
    with tempfile.TemporaryDirectory(prefix="radlake-score-artifacts-") as tmp:
        root = Path(tmp)
        reviews, exports = {}, []
        for uid in studies:
            review = write_review(
                spark,
                config,
                study_uid=uid,
                out_dir=root / REVIEW_FOLDER / uid,
                model_pair=pair,
                max_slices=config.score.artifact_slices,
            )
            reviews[uid] = [_relative(f, root) for f in review.files]
            exports.append(export_sr(spark, config, out_dir=root / SR_FOLDER, study_uid=uid, model_pair=pair))
        summary = _sr_summary(exports, root, studies, reviews)
        (root / SR_SUMMARY).parent.mkdir(parents=True, exist_ok=True)
        (root / SR_SUMMARY).write_text(json.dumps(summary, indent=2))
        artifacts = sorted(_relative(p, root) for p in root.rglob("*") if p.is_file())
        mlflow.log_artifacts(str(root))
    return {"studies": studies, "artifacts": artifacts, "sr": summary}


def _relative(path: str | Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _sr_summary(exports, root: Path, studies: list[str], reviews: dict[str, list[str]]) -> dict[str, Any]:
    """One SR export summary for the studies exported one by one (paths relative to the artifact root)."""
    counts = (
        "studies",
        "studies_without_findings",
        "measurement_groups",
        "vertebra_groups",
        "schmorl_groups",
        "frames_skipped",
    )
    return {
        "out_dir": SR_FOLDER,
        "files": [_relative(f, root) for e in exports for f in e.files],
        **{key: sum(getattr(e, key) for e in exports) for key in counts},
        "seconds": round(sum(e.seconds for e in exports), 2),
        "studies_shown": studies,
        "review_files": reviews,
    }
