"""Every file pydicom and pydicom-data ship for their own tests, ingested in one run."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import data_store
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, pixel_array
from pyspark.sql import functions as F

from radlake.config import load_config
from radlake.dicom.pixels import PREFERRED_DECODERS, STORED_DTYPES, VALUE_COLUMNS, decode_frames, frame_values
from radlake.dicom.sources import iter_members, read_bytes
from radlake.ingest.job import run_ingest
from radlake.tables import Table, table_ref

SOURCES = {
    "pydicom": Path(pydicom.__file__).parent / "data" / "test_files",
    "pydicom-data": Path(data_store.__file__).parent / "data",
}


@dataclass(frozen=True)
class RealFiles:
    """Every test file of pydicom and pydicom-data, ingested once (every instance with pixels into ``images``)."""

    config: Any
    files: set[str]
    summary: Any


@pytest.fixture(scope="module", autouse=True)
def generated_code(spark):
    """This module runs Spark SQL as commands do, with generated code (the other tests interpret it:
    ``INTERPRETED_SQL`` in ``conftest.py``)."""
    before = {key: spark.conf.get(key) for key in ("spark.sql.codegen.factoryMode", "spark.sql.codegen.wholeStage")}
    spark.conf.set("spark.sql.codegen.factoryMode", "FALLBACK")
    spark.conf.set("spark.sql.codegen.wholeStage", "true")
    yield
    for key, value in before.items():
        spark.conf.set(key, value)


@pytest.fixture(scope="module")
def real_files(spark, tmp_path_factory) -> RealFiles:
    root = tmp_path_factory.mktemp("real-files")
    archive = root / "archive"
    archive.mkdir()
    for name, folder in SOURCES.items():
        shutil.copytree(folder, archive / name)
    files = {f"file:{p}" for p in archive.rglob("*") if p.is_file()}
    cfg = load_config(
        overrides=[f"storage.root={root / 'root'}", "spark.master=local[2]", "ingest.image_rule='has_pixels'"]
    )
    return RealFiles(cfg, files, run_ingest(spark, cfg, archive=str(archive)))


def test_every_pydicom_test_file_is_accounted_for_in_exactly_one_table(spark, real_files):
    cfg, files, summary = real_files.config, real_files.files, real_files.summary
    assert len(files) > 240
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


def _instance_bytes(path: str, member: str | None) -> bytes:
    data = read_bytes(path)
    if member is None:
        return data
    [item] = [i for i in iter_members(path, data, max_member_bytes=1 << 30) if i.member == member]
    return item.data


def _modality_values(ds: pydicom.Dataset, stored: np.ndarray, frame_index: int) -> np.ndarray:
    """pydicom's modality values of one frame (float64): ``apply_modality_lut`` with the frame's functional
    group for an enhanced image; MONOCHROME1 inverted over the rescaled stored range, as radlake does."""
    source: pydicom.Dataset = ds
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        group = groups[frame_index if len(groups) > 1 else 0] if groups else None
        if group is not None and group.get("PixelValueTransformationSequence"):
            source = group.PixelValueTransformationSequence[0]
            break
    values = np.asarray(apply_modality_lut(stored, source), dtype=np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        bits = int(ds.BitsStored)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation == 1 else (0, 2**bits - 1)
        slope, intercept = float(source.get("RescaleSlope", 1.0)), float(source.get("RescaleIntercept", 0.0))
        values = ((lo * slope + intercept) + (hi * slope + intercept)) - values
    return values


def test_stored_pixels_round_trip_exactly_to_pydicom(spark, real_files):
    """Every ``images`` row of the real files, through :func:`frame_values`:

    - a frame kept as stored (uint8, uint16, int16) holds pydicom's ``pixel_array`` bytes, and its values in
      float64 are pydicom's ``apply_modality_lut`` (MONOCHROME1 inverted over the stored range) bit for bit;
    - every frame's float32 values are those radlake gave before frames were stored as integers
      (:func:`decode_frames`), bit for bit; frames stored as float32 say so with the identity transform.
    """
    cfg = real_files.config
    images = table_ref(cfg, Table.IMAGES).read(spark)
    instances = table_ref(cfg, Table.INSTANCES).read(spark).select("sop_instance_uid", "path", "member")
    rows = images.join(instances, "sop_instance_uid").select("path", "member", "frame_index", *VALUE_COLUMNS)
    by_instance: dict[tuple[str, str | None], list] = {}
    for row in rows.collect():
        by_instance.setdefault((row.path, row.member), []).append(row)
    kept = as_values = 0
    for (path, member), frames in sorted(by_instance.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        data = _instance_bytes(path, member)
        reference = {f.frame_index: f.pixels for f in decode_frames(data) if f.error is None}
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        plugin = PREFERRED_DECODERS.get(str(ds.file_meta.get("TransferSyntaxUID", "")), "")
        for row in frames:
            name = f"{path} {member or ''} frame {row.frame_index}"
            transform = {k: row[k] for k in ("rescale_slope", "rescale_intercept", "invert", "bits_stored")}
            values = frame_values(row.pixels, row.dtype, row.height, row.width, **transform)
            assert values.tobytes() == reference[row.frame_index].tobytes(), name
            if row.dtype not in STORED_DTYPES:
                assert row.dtype == "float32" and transform == IDENTITY, name
                as_values += 1
                continue
            stored = pixel_array(ds, index=row.frame_index, decoding_plugin=plugin)
            assert row.pixels == stored.astype(stored.dtype.newbyteorder("<")).tobytes(), name
            exact = frame_values(row.pixels, row.dtype, row.height, row.width, **transform, float64=True)
            assert exact.tobytes() == _modality_values(ds, stored, row.frame_index).tobytes(), name
            kept += 1
    assert kept > 60 and as_values > 10, (kept, as_values)
    # What the tables show: the rescale of CT (HU) and of the MR2 files, MONOCHROME1 inverted.
    mr_uid = pydicom.dcmread(SOURCES["pydicom"] / "MR_small.dcm").SOPInstanceUID
    ct_uid = pydicom.dcmread(SOURCES["pydicom"] / "CT_small.dcm").SOPInstanceUID
    rg1_uid = pydicom.dcmread(SOURCES["pydicom-data"] / "RG1_UNCR.dcm").SOPInstanceUID
    shown = {
        r.sop_instance_uid: (r.dtype, r.rescale_slope, r.rescale_intercept, r.invert, r.bits_stored)
        for r in images.where(F.col("sop_instance_uid").isin(mr_uid, ct_uid, rg1_uid)).collect()
    }
    assert shown == {
        mr_uid: ("int16", 1.0, 0.0, False, 16),
        ct_uid: ("int16", 1.0, -1024.0, False, 16),
        rg1_uid: ("uint16", 1.0, 0.0, True, 15),
    }


IDENTITY = {"rescale_slope": 1.0, "rescale_intercept": 0.0, "invert": False, "bits_stored": None}
