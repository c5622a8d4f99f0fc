"""Every file pydicom and pydicom-data ship for their own tests, ingested in one run."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import data_store
import pydicom
from pyspark.sql import functions as F

from radlake.config import load_config
from radlake.ingest.job import run_ingest
from radlake.tables import Table, table_ref

SOURCES = {
    "pydicom": Path(pydicom.__file__).parent / "data" / "test_files",
    "pydicom-data": Path(data_store.__file__).parent / "data",
}


def test_every_pydicom_test_file_is_accounted_for_in_exactly_one_table(spark, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name, folder in SOURCES.items():
        shutil.copytree(folder, archive / name)
    files = {f"file:{p}" for p in archive.rglob("*") if p.is_file()}
    assert len(files) > 240
    cfg = load_config(
        overrides=[f"storage.root={tmp_path / 'root'}", "spark.master=local[2]", "ingest.image_rule='has_pixels'"]
    )
    summary = run_ingest(spark, cfg, archive=str(archive))
    assert summary.files_seen == len(files)

    def places(table: Table, where: str = "true") -> Counter:
        rows = table_ref(cfg, table).read(spark).where(where).select("path", "member").collect()
        return Counter((r.path, r.member) for r in rows)

    instances, duplicates = places(Table.INSTANCES), places(Table.DUPLICATES)
    refused = places(Table.QUARANTINE, "stage <> 'pixels'")  # a pixel failure is about a stored instance
    everywhere = instances + duplicates + refused
    assert max(everywhere.values()) == 1  # no copy in two places, or twice in one
    assert {path for path, _ in everywhere} == files  # no file dropped (zip members count for their file)
    # pydicom's one MR instance in eight encodings, and its truncated copy.
    mr_uid = pydicom.dcmread(SOURCES["pydicom"] / "MR_small.dcm").SOPInstanceUID
    stored = table_ref(cfg, Table.INSTANCES).read(spark).where(F.col("sop_instance_uid") == mr_uid)
    copies = table_ref(cfg, Table.DUPLICATES).read(spark).where(F.col("sop_instance_uid") == mr_uid)
    assert stored.count() == 1 and copies.count() >= 7
    quarantine = table_ref(cfg, Table.QUARANTINE).read(spark)
    truncated = quarantine.where(F.col("path").endswith("/MR_truncated.dcm")).first()
    assert truncated.error_class == "TruncatedFile" and truncated.sop_instance_uid == mr_uid
    assert quarantine.where("stage = 'skipped'").count() == summary.dicomdir_skipped > 0  # DICOMDIRs
    # What the decoders cannot read is a pixel failure of a stored instance, never a crash of the run.
    assert summary.new_images > 200
