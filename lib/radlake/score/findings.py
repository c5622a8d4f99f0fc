"""``study_findings``: the findings of each series for one model pair, rebuilt from ``predictions``,
and the findings summary of a score run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from radlake.config import RadlakeConfig
from radlake.models.levels import LEVELS
from radlake.score.schema import MODEL_PAIR_FIELDS, MODEL_PAIR_KEYS, STUDY_FINDINGS, model_pair_filter
from radlake.tables import Table, table_ref
from radlake.vocabulary import LevelStatus

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def update_study_findings(
    spark: SparkSession, config: RadlakeConfig, vertebra_uri: str, schmorl_uri: str, series_keys: DataFrame, run_id: str
) -> None:
    """Rebuild the ``study_findings`` rows of ``series_keys`` for one model pair from all its ``predictions``."""
    predictions = (
        table_ref(config, Table.PREDICTIONS)
        .read(spark)
        .where(model_pair_filter(vertebra_uri, schmorl_uri))
        .join(series_keys, "series_key", "left_semi")
    )
    pair_columns = [f.name for f in MODEL_PAIR_FIELDS]
    series = predictions.groupBy("series_key").agg(
        F.first("study_instance_uid").alias("study_instance_uid"),
        F.first("series_instance_uid").alias("series_instance_uid"),
        F.first("plane").alias("plane"),
        F.count("*").cast("int").alias("frames_scored"),
        F.array_distinct(
            F.flatten(F.collect_list(F.expr("filter(transform(vertebrae, v -> v.level), x -> x IS NOT NULL)")))
        ).alias("levels_seen"),
        F.sum(F.expr(f"size(filter(vertebrae, v -> v.level_status = '{LevelStatus.UNCERTAIN.value}'))"))
        .cast("int")
        .alias("vertebrae_uncertain"),
        F.sum(F.expr(f"size(filter(schmorl_nodes, n -> n.parent_level_status = '{LevelStatus.UNCERTAIN.value}'))"))
        .cast("int")
        .alias("nodes_level_uncertain"),
        F.max("max_schmorl_score").alias("max_score"),
        *[F.first(c).alias(c) for c in pair_columns],
    )
    nodes = predictions.select("series_key", "sop_instance_uid", "frame_index", F.explode("schmorl_nodes").alias("n"))
    levels = nodes.groupBy(
        "series_key", F.col("n.parent_level").alias("level"), F.col("n.parent_level_status").alias("level_status")
    ).agg(
        F.max("n.score").alias("max_score"),
        F.count("*").cast("int").alias("nodes"),
        F.countDistinct("sop_instance_uid", "frame_index").cast("int").alias("frames"),
        F.array_sort(F.collect_set("n.endplate")).alias("endplates"),
        F.max_by(F.struct("sop_instance_uid", "frame_index"), "n.score").alias("best"),
    )
    per_series = levels.groupBy("series_key").agg(
        F.collect_list(
            F.struct(
                "level",
                "level_status",
                "max_score",
                "nodes",
                "frames",
                "endplates",
                F.col("best.sop_instance_uid").alias("best_sop_instance_uid"),
                F.col("best.frame_index").alias("best_frame_index"),
            )
        ).alias("level_findings")
    )
    rows = (
        series.join(per_series, "series_key", "left")
        .withColumn("level_findings", F.coalesce(_level_sort("level_findings", "level"), F.array()))
        .withColumn("levels_seen", _level_sort("levels_seen"))
        .withColumn("levels_with_nodes", F.expr("filter(transform(level_findings, f -> f.level), x -> x IS NOT NULL)"))
        .withColumn("score_run_id", F.lit(run_id))
        .withColumn("updated_at", F.lit(datetime.now(UTC)))
        .select(*STUDY_FINDINGS.fieldNames())
    )
    table_ref(config, Table.STUDY_FINDINGS).merge(
        spark,
        rows,
        keys=["series_key", *MODEL_PAIR_KEYS],
        update_columns=[c for c in STUDY_FINDINGS.fieldNames() if c not in ("series_key", *MODEL_PAIR_KEYS)],
        schema=STUDY_FINDINGS,
    )


def findings_summary(
    spark: SparkSession, config: RadlakeConfig, vertebra_uri: str, schmorl_uri: str, *, limit: int = 10
) -> list[dict]:
    """The series of one model pair with the highest Schmorl's-node scores: study, series, levels and scores."""
    rows = (
        table_ref(config, Table.STUDY_FINDINGS)
        .read(spark)
        .where(model_pair_filter(vertebra_uri, schmorl_uri))
        .where(F.size("levels_with_nodes") > 0)
        .orderBy(F.desc("max_score"), "series_key")
        .limit(limit)
        .collect()
    )
    return [
        {
            "study_instance_uid": r["study_instance_uid"],
            "series_key": r["series_key"],
            "levels": {(f["level"] or "uncertain"): round(float(f["max_score"]), 3) for f in r["level_findings"]},
        }
        for r in rows
    ]


def _level_sort(array_col: str, key: str | None = None) -> Any:
    """``array_col`` sorted head to feet by level (:data:`LEVELS`; unknown levels first, uncertain ones last)."""
    order = "array(" + ", ".join(f"'{level}'" for level in LEVELS) + ")"
    pick = (lambda v: f"{v}.{key}") if key else (lambda v: v)

    def rank(v: str) -> str:
        return f"coalesce(array_position({order}, {pick(v)}), {len(LEVELS) + 1})"

    return F.expr(f"array_sort({array_col}, (l, r) -> int({rank('l')} - {rank('r')}))")
