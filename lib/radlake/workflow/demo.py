"""``make demo``: every stage that exists, end to end, on a synthetic archive and the local default.

Now: synthetic archive → ingest → labels (and the study split) → train the vertebra
detector → register and promote it. Each later stage adds its step here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from radlake.config import RadlakeConfig
from radlake.tracking import ui_command


def _archive_matches(out: Path, config: RadlakeConfig) -> bool:
    """True if ``out`` already holds the synthetic archive of exactly this configuration."""
    labels = out / "labels.json"
    if not labels.is_file():
        return False
    try:
        recorded = json.loads(labels.read_text()).get("config")
    except (OSError, ValueError):
        return False
    return recorded == config.synth.model_dump(mode="json")


def run_demo(config: RadlakeConfig, *, out: str | Path, workers: int = 2) -> None:
    """Write (or reuse) the synthetic archive, ingest it, and print where everything is."""
    from radlake.ingest import run_ingest
    from radlake.spark import get_spark
    from radlake.synth import generate_archive
    from radlake.tables import list_tables

    out = Path(out)
    t0 = time.perf_counter()
    if _archive_matches(out, config):
        print(f"[demo] reusing the synthetic archive in {out}")
    else:
        if out.exists():
            raise SystemExit(f"[demo] {out} exists but is not this configuration's archive; remove it or pick --out")
        summary = generate_archive(out, config.synth, workers=workers)
        print(
            f"[demo] wrote {summary.n_files} DICOM instances ({summary.n_studies} studies) to {out} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    spark = get_spark(config)
    result = run_ingest(spark, config, archive=str(out))
    print("[demo] ingest:", json.dumps(result.as_dict(), indent=2))
    from radlake.data.splits import import_labels_and_split
    from radlake.registry.promote import register_and_promote
    from radlake.train.run import get_stage, train_detector

    labels, splits = import_labels_and_split(spark, config, out / "labels.json")
    print("[demo] labels:", json.dumps(_brief(labels.as_dict()), indent=2))
    print("[demo] splits:", json.dumps(_brief(splits.as_dict()), indent=2))
    t_train = time.perf_counter()
    trained = train_detector(spark, config, "vertebra")
    wanted = ("test_map_50", "test_map", "test_detection_rate", "test_level_id_rate", "test_study_all_levels")
    shown = {k: round(trained.metrics[k], 4) for k in wanted if k in trained.metrics}
    print(f"[demo] trained the vertebra detector in {time.perf_counter() - t_train:.0f} s: run {trained.run_id}")
    print("[demo] test metrics:", json.dumps(shown))
    promotion = register_and_promote(config, get_stage("vertebra"), trained.run_id)
    print(f"[demo] registered {promotion.model_name} version {promotion.version}: {promotion.reason}")
    print("[demo] tables:")
    for status in list_tables(spark, config):
        print(f"    {status.table:<14} version {status.version!s:>4}  rows {status.rows!s:>7}  {status.location}")
    print(f"[demo] archive and labels: {out.resolve()} (labels.json)")
    print("[demo] list the tables again: .venv/bin/radlake tables")
    print(f"[demo] load the champion: mlflow.pyfunc.load_model('models:/{config.models.vertebra}@champion')")
    print(f"[demo] MLflow UI: .venv/bin/{ui_command(config)}  then open http://127.0.0.1:5000")
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s")


def _brief(summary: dict, limit: int = 5) -> dict:
    """A summary with long lists cut to their first ``limit`` items (and their count)."""
    return {
        k: (v[:limit] + [f"... {len(v) - limit} more"] if isinstance(v, list) and len(v) > limit else v)
        for k, v in summary.items()
    }
