"""``make demo``: every stage that exists, end to end, on a synthetic archive and the local default.

Now: synthetic archive → ingest. Each later stage adds its step here.
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
    print("[demo] tables:")
    for status in list_tables(spark, config):
        print(f"    {status.table:<14} version {status.version!s:>4}  rows {status.rows!s:>7}  {status.location}")
    print(f"[demo] archive and labels: {out.resolve()} (labels.json)")
    print("[demo] list the tables again: .venv/bin/radlake tables")
    print(f"[demo] MLflow UI: .venv/bin/{ui_command(config)}")
