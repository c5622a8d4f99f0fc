"""The ingestion job end to end on a synthetic archive plus real and hostile files."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pyspark.sql import functions as F

from dicom_files import TEST_FILES, rle_with_a_cut_frame, write_bad_files
from radlake.errors import ConfigError
from radlake.ingest import job as ingest_job
from radlake.ingest.job import run_ingest
from radlake.ingest.listing import ArchiveNotFoundError, ListedFile, list_archive, pack_tasks, unseen_files
from radlake.synth.archive import generate_archive
from radlake.synth.params import SynthConfig
from radlake.tables import Table, TableRef, table_ref

PHI_TAGS = ("PatientName", "PatientBirthDate", "PatientID", "AccessionNumber", "InstitutionName")


#: The tables an ingest run writes (labels and splits come later).
INGEST_TABLES = (Table.INSTANCES, Table.SERIES, Table.IMAGES, Table.QUARANTINE, Table.DUPLICATES, Table.INGEST_FILES)


def _phi_values(archive: Path) -> set[str]:
    """Every patient-identifying value in the source files (folders and zip members)."""
    values: set[str] = set()

    def collect(ds):
        for tag in PHI_TAGS:
            value = str(ds.get(tag, "") or "")
            if len(value) >= 4:  # whole values: a single name part may recur in de-identification's fake names
                values.add(value)

    for path in archive.rglob("*"):
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    if not name.endswith("/") and not name.endswith(".json"):
                        collect(pydicom.dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True))
        elif path.is_file() and path.name != "labels.json":
            collect(pydicom.dcmread(path, stop_before_pixels=True))
    return values


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Synthetic studies plus real pydicom files and hostile inputs."""
    root = tmp_path_factory.mktemp("archive")
    generate_archive(root / "synth", SynthConfig(studies=3, seed=7, image_size=128, zip_fraction=0.34))
    real = root / "real"
    real.mkdir()
    for name in ("MR_small.dcm", "CT_small.dcm"):
        shutil.copy(TEST_FILES / name, real / name)
    shutil.copytree(TEST_FILES / "dicomdirtests" / "98892003" / "MR2", real / "scout")
    write_bad_files(
        root / "bad",
        entropy="radlake-test-truncated",
        frame_cut=rle_with_a_cut_frame(5, entropy="radlake-test-frame-cut"),
    )
    return root


@pytest.fixture(scope="module")
def ingested(make_config, spark, archive, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest-root")
    cfg = make_config(root, "ingest.image_rule=modality = 'MR'", "ingest.images_row_group_frames=4")
    first = run_ingest(spark, cfg, archive=str(archive))
    return cfg, first


def _read(spark, cfg, table):
    return table_ref(cfg, table).read(spark)


def test_images_are_written_in_row_groups_of_the_configured_frames(spark, ingested):
    """So that a scan of a few large files splits into a task per core (score.scan_tasks_per_slot)."""
    import pyarrow.parquet as pq

    cfg, _ = ingested
    ref = table_ref(cfg, Table.IMAGES)
    properties = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {ref.sql_name}").collect()}
    assert properties["parquet.block.row.count.limit"] == "4"
    files = [pq.ParquetFile(f).metadata for f in Path(ref.path).glob("*.parquet")]
    groups = [m.row_group(i).num_rows for m in files for i in range(m.num_row_groups)]
    assert sum(groups) == _read(spark, cfg, Table.IMAGES).count()
    assert max(groups) == 4 and any(m.num_row_groups > 1 for m in files)
    # a frame is never repeated: its pixels skip the dictionary the writer would try in every row group
    assert properties["parquet.enable.dictionary#pixels"] == "false"
    pixels = files[0].schema.to_arrow_schema().get_field_index("pixels")
    plane = files[0].schema.to_arrow_schema().get_field_index("plane")
    assert not any("DICTIONARY" in e for e in files[0].row_group(0).column(pixels).encodings)
    assert any("DICTIONARY" in e for e in files[0].row_group(0).column(plane).encodings)


def test_every_file_ends_in_exactly_one_table(spark, archive, ingested):
    cfg, summary = ingested
    instances = _read(spark, cfg, Table.INSTANCES)
    quarantine = _read(spark, cfg, Table.QUARANTINE)
    assert summary.files_seen == sum(1 for p in archive.rglob("*") if p.is_file())
    assert summary.new_instances == instances.count() > 0
    # The zip with a ../ member: the escaping member is quarantined, the good one ingested.
    evil = quarantine.where(F.col("path").endswith("evil.zip")).collect()
    assert [r.member for r in evil] == ["../escape.dcm"]
    failed_names = {Path(r.path).name for r in quarantine.where("stage = 'header' OR stage = 'source'").collect()}
    assert {"empty.dcm", "notes.txt", "random.dcm", "header_cut.dcm", "labels.json", "pixels_cut.dcm"} <= failed_names
    # A file cut in its pixel data is caught in the header pass, with its SOPInstanceUID and the sizes.
    cut_pixels = quarantine.where(F.col("path").endswith("pixels_cut.dcm")).first()
    assert cut_pixels.error_class == "TruncatedFile" and cut_pixels.sop_instance_uid
    assert "8192 bytes declared" in cut_pixels.error_message
    # A frame cut inside intact RLE items is only found by decoding.
    pixel_failures = {Path(r.path).name: r for r in quarantine.where("stage = 'pixels'").collect()}
    assert set(pixel_failures) == {"frame5_cut.dcm"}
    # A frame that fails ends its instance: the frames before it are kept, the failure names the frame.
    cut = pixel_failures["frame5_cut.dcm"]
    assert cut.frame_index == 5
    kept = _read(spark, cfg, Table.IMAGES).where(F.col("sop_instance_uid") == cut.sop_instance_uid)
    assert sorted(r.frame_index for r in kept.collect()) == [0, 1, 2, 3, 4]
    ingested_paths = {(r.path, r.member) for r in instances.select("path", "member").collect()}
    quarantined_paths = {(r.path, r.member) for r in quarantine.where("stage <> 'pixels'").collect()}
    assert not ingested_paths & quarantined_paths


def test_a_byte_identical_copy_is_recorded_as_a_duplicate_of_the_kept_one(spark, archive, ingested):
    cfg, summary = ingested
    # CT_small.dcm is stored twice (real/ and inside evil.zip) with identical bytes: one instance, one duplicate.
    instances = _read(spark, cfg, Table.INSTANCES)
    ct_uid = pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPInstanceUID
    [kept] = instances.where(F.col("sop_instance_uid") == ct_uid).collect()
    [copy] = _read(spark, cfg, Table.DUPLICATES).collect()
    assert (copy.sop_instance_uid, copy.same_bytes, copy.kept_content_sha256) == (ct_uid, True, kept.content_sha256)
    assert {(kept.path, kept.member), (copy.path, copy.member)} == {
        (f"file:{archive / 'bad' / 'evil.zip'}", "ok/inside.dcm"),
        (f"file:{archive / 'real' / 'CT_small.dcm'}", None),
    }
    assert (copy.kept_path, copy.kept_member) == (kept.path, kept.member)
    assert summary.duplicates == 1 and summary.unchanged_instances == 0
    assert summary.conflicts == 0 and summary.quarantined == 8  # 7 bad files + the ../ member


def test_no_phi_reaches_any_table(spark, archive, ingested):
    cfg, _ = ingested
    phi = _phi_values(archive / "synth")
    assert len(phi) > 5
    for table in INGEST_TABLES:
        df = _read(spark, cfg, table)
        text_columns = [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"]
        if not text_columns:
            continue
        blob = "\n".join("\t".join(str(v) for v in row) for row in df.select(*text_columns).collect())
        leaked = [value for value in phi if value in blob]
        assert not leaked, f"{table.value} holds PHI: {leaked[:5]}"
    instances = _read(spark, cfg, Table.INSTANCES).where("patient_id IS NOT NULL")
    assert instances.count() > 0
    header = json.loads(instances.first().header_json)
    assert header["00120062"]["Value"] == ["YES"]  # PatientIdentityRemoved


def test_scout_series_splits_into_three_stacks(spark, ingested):
    cfg, _ = ingested
    scout_uid = pydicom.dcmread(TEST_FILES / "dicomdirtests" / "98892003" / "MR2" / "4950").SeriesInstanceUID
    stacks = _read(spark, cfg, Table.SERIES).where(F.col("series_instance_uid") == scout_uid).collect()
    assert sorted(s.plane for s in stacks) == ["AXIAL", "CORONAL", "SAGITTAL"]


def test_sagittal_stacks_are_ordered_by_position(spark, ingested):
    cfg, _ = ingested
    stacks = _read(spark, cfg, Table.SERIES).where("plane = 'SAGITTAL' AND slice_count >= 10").collect()
    assert len(stacks) == 3
    for stack in stacks:
        positions = [s.position_mm for s in stack.slices]
        assert positions == sorted(positions)
        steps = np.diff(positions)
        assert np.allclose(steps, stack.slice_spacing_mm, rtol=0.01)
        assert not stack.uneven_spacing and not stack.has_gaps and not stack.has_duplicate_positions


def test_images_match_pydicom_and_stack_order(spark, archive, ingested):
    cfg, summary = ingested
    images = _read(spark, cfg, Table.IMAGES)
    assert summary.new_images == images.count() > 0
    row = images.where(F.col("sop_instance_uid") == pydicom.dcmread(TEST_FILES / "MR_small.dcm").SOPInstanceUID).first()
    from radlake.dicom.pixels import row_values

    got = row_values(row)
    expected = pydicom.dcmread(TEST_FILES / "MR_small.dcm").pixel_array.astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    # slice_index agrees with the series table's order
    stack = _read(spark, cfg, Table.SERIES).where(F.col("series_key") == row.series_key).first()
    order = [(s.sop_instance_uid, s.frame_index) for s in stack.slices]
    assert order.index((row.sop_instance_uid, row.frame_index)) == row.slice_index


def test_rerun_is_a_no_op_and_new_files_are_ingested_alone(spark, archive, ingested, tmp_path):
    cfg, first = ingested
    versions = {t: table_ref(cfg, t).delta_table(spark).history(1).first().version for t in INGEST_TABLES}
    again = run_ingest(spark, cfg, archive=str(archive))
    assert again.files_ingested == 0 and again.files_unchanged == again.files_seen
    assert again.new_instances == again.new_images == again.quarantined == 0
    for table in (Table.INSTANCES, Table.IMAGES, Table.QUARANTINE):
        assert _read(spark, cfg, table).count() == _read(spark, cfg, table).dropDuplicates().count()
    assert table_ref(cfg, Table.INSTANCES).delta_table(spark).history(1).first().version >= versions[Table.INSTANCES]

    extra = archive / "later"
    extra.mkdir()
    shutil.copy(TEST_FILES / "MR_small_implicit.dcm", extra / "implicit.dcm")
    changed = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    changed.PixelData = (changed.pixel_array + 1).astype(changed.pixel_array.dtype).tobytes()
    changed.save_as(extra / "edited.dcm")
    later = run_ingest(spark, cfg, archive=str(archive))
    assert later.files_ingested == 2 and later.new_instances == 0
    # Same SOPInstanceUID as the stored MR_small.dcm. In another transfer syntax, the same content: a
    # duplicate. With other pixel values: a conflict, never an overwrite.
    assert later.duplicates == 1 and later.conflicts == 1
    copy = _read(spark, cfg, Table.DUPLICATES).where(F.col("path").endswith("implicit.dcm")).first()
    assert copy.same_bytes is False and copy.kept_path.endswith("real/MR_small.dcm")
    assert copy.transfer_syntax_uid == pydicom.uid.ImplicitVRLittleEndian
    conflict = _read(spark, cfg, Table.QUARANTINE).where("stage = 'conflict'").first()
    assert conflict.path.endswith("edited.dcm") and "(other pixel values)" in conflict.error_message
    assert _read(spark, cfg, Table.INSTANCES).where(F.col("sop_instance_uid") == changed.SOPInstanceUID).count() == 1


def test_killed_run_restarts_without_loss_or_duplicates(make_config, spark, archive, tmp_path, monkeypatch):
    cfg = make_config(tmp_path / "root")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during the pixel stage")

    monkeypatch.setattr(ingest_job, "_pixel_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(spark, cfg, archive=str(archive / "synth"))
    assert _read(spark, cfg, Table.INSTANCES).count() > 0
    assert _read(spark, cfg, Table.INGEST_FILES).count() == 0  # the ledger is written last
    monkeypatch.undo()
    resumed = run_ingest(spark, cfg, archive=str(archive / "synth"))
    instances = _read(spark, cfg, Table.INSTANCES)
    assert resumed.new_instances == 0 and resumed.unchanged_instances == instances.count()
    images = _read(spark, cfg, Table.IMAGES)
    assert resumed.new_images == images.count() > 0
    assert images.select("sop_instance_uid", "frame_index").distinct().count() == images.count()
    sagittal = instances.where("modality = 'MR' AND plane = 'SAGITTAL'").count()
    assert images.count() == sagittal


def test_run_killed_after_the_pixels_but_before_the_instances_commit_restarts_cleanly(
    make_config, spark, archive, tmp_path, monkeypatch
):
    """The pixel pass appends while the instances are written: its images may commit first."""
    cfg = make_config(tmp_path / "root")
    merge, append = TableRef.merge, TableRef.append

    def killed(write):
        def instances_killed(ref, *args, **kwargs):
            if ref.table is Table.INSTANCES:
                raise KeyboardInterrupt("killed before the instances commit")
            return write(ref, *args, **kwargs)

        return instances_killed

    monkeypatch.setattr(TableRef, "merge", killed(merge))  # a MERGE into a stored table
    monkeypatch.setattr(TableRef, "append", killed(append))  # the append into a table this run created
    with pytest.raises(KeyboardInterrupt):
        run_ingest(spark, cfg, archive=str(archive / "synth"))
    written = _read(spark, cfg, Table.IMAGES).count()
    assert written > 0 and _read(spark, cfg, Table.INSTANCES).count() == 0
    assert _read(spark, cfg, Table.INGEST_FILES).count() == 0
    monkeypatch.undo()
    resumed = run_ingest(spark, cfg, archive=str(archive / "synth"))
    instances = _read(spark, cfg, Table.INSTANCES)
    assert resumed.new_instances == instances.count() > 0 and resumed.new_images == 0
    images = _read(spark, cfg, Table.IMAGES)
    assert images.count() == written == instances.where("modality = 'MR' AND plane = 'SAGITTAL'").count()
    assert images.select("sop_instance_uid", "frame_index").distinct().count() == images.count()
    # Every image carries its place in the stack the series table holds.
    slices = _read(spark, cfg, Table.SERIES).select("series_key", F.posexplode("slices").alias("i", "s"))
    placed = images.join(
        slices.select("series_key", "i", "s.sop_instance_uid", "s.frame_index"), ["sop_instance_uid", "frame_index"]
    )
    assert placed.where("slice_index = i").count() == images.count()


def test_slices_arriving_later_renumber_the_images_already_stored(make_config, spark, tmp_path):
    archive = tmp_path / "archive"
    generate_archive(archive, SynthConfig(studies=1, seed=11, image_size=128, zip_fraction=0.0))
    held = tmp_path / "held"
    held.mkdir()
    sagittal = sorted((archive / "study0000" / "SE02").iterdir())
    for path in sagittal[::2]:  # every other slice of the stack arrives in a later run
        shutil.move(path, held / path.name)
    cfg = make_config(tmp_path / "root")
    run_ingest(spark, cfg, archive=str(archive))
    before = {r.sop_instance_uid: r.slice_index for r in _read(spark, cfg, Table.IMAGES).collect()}
    assert sorted(before.values()) == list(range(len(sagittal) // 2))
    for path in held.iterdir():
        shutil.move(path, archive / "study0000" / "SE02" / path.name)
    later = run_ingest(spark, cfg, archive=str(archive))
    assert later.new_images == len(sagittal) - len(before)
    stack = _read(spark, cfg, Table.SERIES).where("plane = 'SAGITTAL'").collect()
    assert len(stack) == 1 and stack[0].slice_count == len(sagittal)
    place = {s.sop_instance_uid: i for i, s in enumerate(stack[0].slices)}
    after = {r.sop_instance_uid: r.slice_index for r in _read(spark, cfg, Table.IMAGES).collect()}
    assert after == place
    assert any(after[uid] != index for uid, index in before.items())  # earlier images were moved


def test_a_widened_image_rule_decodes_stored_instances_at_their_place_in_the_stored_stacks(
    make_config, spark, tmp_path
):
    archive = tmp_path / "archive"
    generate_archive(archive, SynthConfig(studies=2, seed=12, image_size=128, zip_fraction=0.0))
    held = tmp_path / "held"
    shutil.move(archive / "study0001", held)
    run_ingest(spark, make_config(tmp_path / "root"), archive=str(archive))  # default rule: sagittal MR only
    shutil.move(held, archive / "study0001")
    wide = make_config(tmp_path / "root", "ingest.image_rule=modality = 'MR'")
    run_ingest(spark, wide, archive=str(archive))  # the new study, and study0000's other planes
    place = {
        (s.sop_instance_uid, s.frame_index): i
        for stack in _read(spark, wide, Table.SERIES).collect()
        for i, s in enumerate(stack.slices)
    }
    images = _read(spark, wide, Table.IMAGES).collect()
    planes = {r.plane for r in images}
    assert {"SAGITTAL", "AXIAL", "CORONAL"} <= planes
    assert len(images) == len(place)  # every MR frame once
    assert {(r.sop_instance_uid, r.frame_index): r.slice_index for r in images} == place


def test_slice_indices_follow_the_stacks_frame_by_frame_not_the_claimed_frame_count():
    slices = [{"sop_instance_uid": "x", "frame_index": 1}, {"sop_instance_uid": "y", "frame_index": 0}]
    slices.append({"sop_instance_uid": "x", "frame_index": 0})
    records = [
        {"sop_instance_uid": "x", "expected_frames": 2**31},  # a hostile NumberOfFrames
        {"sop_instance_uid": "y", "expected_frames": 1},
        {"sop_instance_uid": "z", "expected_frames": 1},  # in no stack
    ]
    ingest_job._add_slice_indices(records, [{"series_key": "s", "slices": slices}])
    assert [r["slice_indices"] for r in records] == [[2, 0], [1], []]


def test_bad_arguments_fail_before_any_work(make_config, spark, tmp_path):
    cfg = make_config(tmp_path / "root")
    with pytest.raises(ArchiveNotFoundError, match="does not exist"):
        run_ingest(spark, cfg, archive=str(tmp_path / "nowhere"))
    bad_rule = make_config(tmp_path / "root", "ingest.image_rule=modalty = 'MR'")
    with pytest.raises(ConfigError, match="ingest.image_rule"):
        run_ingest(spark, bad_rule, archive=str(tmp_path))
    with pytest.raises(ConfigError, match="No archive"):
        run_ingest(spark, cfg)
    assert not (tmp_path / "root" / "warehouse" / "instances").exists()


def test_pack_tasks_balances_bytes():
    sizes = [100] + [10] * 10
    tasks = pack_tasks(sizes, partition_bytes=100, partition_files=100, min_tasks=2)
    load = {t: sum(s for s, tt in zip(sizes, tasks, strict=True) if tt == t) for t in set(tasks)}
    assert sorted(load.values()) == [100, 100]
    assert pack_tasks([], partition_bytes=1, partition_files=1, min_tasks=2) == []
    assert len(set(pack_tasks([1] * 10, partition_bytes=10**9, partition_files=3, min_tasks=1))) == 4


def test_pack_tasks_balances_cost_and_fills_every_slot():
    # Three expensive files (e.g. JPEG 2000) and nine cheap ones of the same size.
    sizes = [100] * 12
    costs = [18.0] * 3 + [1.0] * 9
    tasks = pack_tasks(sizes, partition_bytes=10**9, partition_files=100, min_tasks=3, costs=costs, slots=2)
    assert len(set(tasks)) == 4  # 3 rounded up to a multiple of 2 slots
    load = {t: sum(c for c, tt in zip(costs, tasks, strict=True) if tt == t) for t in set(tasks)}
    assert max(load.values()) == 18.0  # each expensive file alone; the cheap ones share the fourth task
    with pytest.raises(ValueError, match="costs"):
        pack_tasks(sizes, partition_bytes=1, partition_files=1, min_tasks=1, costs=[1.0])


def test_unseen_files_compares_path_size_and_time_with_the_ledger(spark, tmp_path):
    folder = tmp_path / "listing"
    (folder / "a").mkdir(parents=True)
    for name in ("a/one.dcm", "two.dcm", "three.dcm"):
        (folder / name).write_bytes(b"x" * 10)
    listed = list_archive(spark, str(folder))
    assert sorted(Path(f.path.removeprefix("file:")).name for f in listed) == ["one.dcm", "three.dcm", "two.dcm"]
    assert all(f.path.startswith("file:/") and f.file_size == 10 for f in listed)
    by_name = {Path(f.path).name: f for f in listed}
    # The ledger as the job writes it: one.dcm unchanged, two.dcm since modified, three.dcm never seen.
    changed = by_name["two.dcm"]._replace(modification_time=by_name["two.dcm"].modification_time.replace(year=2001))
    ledger = spark.createDataFrame(
        [tuple(by_name["one.dcm"]), tuple(changed)], "path string, file_size long, modification_time timestamp"
    )
    unseen = unseen_files(listed, ledger)
    assert sorted(Path(f.path).name for f in unseen) == ["three.dcm", "two.dcm"]
    assert isinstance(unseen[0], ListedFile)
    assert unseen_files([], ledger) == []


def _copies_archive(root: Path) -> Path:
    """One instance four times: cut short (first by path), RLE, explicit VR, implicit VR."""
    archive = root / "copies"
    for folder, name in (("a_cut", "MR_truncated.dcm"), ("b", "MR_small_RLE.dcm"), ("c", "MR_small.dcm")):
        (archive / folder).mkdir(parents=True)
        shutil.copy(TEST_FILES / name, archive / folder / name)
    shutil.copy(TEST_FILES / "MR_small_implicit.dcm", archive / "c" / "MR_small_implicit.dcm")
    return archive


@pytest.mark.parametrize("listing", ["as listed", "reversed"])
def test_the_kept_copy_is_a_sound_one_whatever_the_listing_order(make_config, spark, tmp_path, monkeypatch, listing):
    archive = _copies_archive(tmp_path)
    if listing == "reversed":
        listed = ingest_job.list_archive
        monkeypatch.setattr(ingest_job, "list_archive", lambda *a, **k: list(reversed(listed(*a, **k))))
    cfg = make_config(tmp_path / "root")
    summary = run_ingest(spark, cfg, archive=str(archive))
    assert (summary.new_instances, summary.duplicates, summary.conflicts) == (1, 2, 0)
    [kept] = _read(spark, cfg, Table.INSTANCES).collect()
    assert kept.path.endswith("b/MR_small_RLE.dcm")  # the first sound copy by path, whatever the order
    copies = {Path(r.path).name: r for r in _read(spark, cfg, Table.DUPLICATES).collect()}
    assert set(copies) == {"MR_small.dcm", "MR_small_implicit.dcm"}
    assert all(not c.same_bytes and c.kept_path == kept.path for c in copies.values())
    [cut] = _read(spark, cfg, Table.QUARANTINE).collect()  # the damaged copy, before it by path, is refused
    assert cut.path.endswith("MR_truncated.dcm") and cut.error_class == "TruncatedFile"
    assert cut.sop_instance_uid == kept.sop_instance_uid


def test_an_images_table_written_before_the_transform_columns_stays_readable_and_gets_them(
    make_config, spark, tmp_path
):
    """A float32-era ``images`` table (values in any compact dtype, no transform columns) reads as before;
    the next ingest into it adds the columns (its old rows keeping nulls: the identity) and the row-group limit."""
    from radlake.dicom.pixels import TRANSFORM_COLUMNS, VALUE_COLUMNS, decode_frames, encode_pixels, row_values
    from radlake.ingest.schema import IMAGES, with_value_columns

    cfg = make_config(tmp_path / "root", "ingest.image_rule=has_pixels")
    ref = table_ref(cfg, Table.IMAGES)
    old_schema = type(IMAGES)([f for f in IMAGES.fields if f.name not in TRANSFORM_COLUMNS])
    [before] = decode_frames((TEST_FILES / "CT_small.dcm").read_bytes())  # HU: int16 values, as radlake stored them
    buf, dtype = encode_pixels(before.pixels)
    old_row = {f.name: None for f in old_schema.fields}
    old_row.update(sop_instance_uid="1.2.old", frame_index=0, height=128, width=128, dtype=dtype, pixels=buf)
    spark.createDataFrame([tuple(old_row[f.name] for f in old_schema.fields)], old_schema).write.format("delta").save(
        ref.path
    )
    old = with_value_columns(ref.read(spark)).select(*VALUE_COLUMNS).first()
    assert old.rescale_slope is None and row_values(old).tobytes() == before.pixels.tobytes()

    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", archive / "CT_small.dcm")
    run_ingest(spark, cfg, archive=str(archive))
    table = ref.read(spark)
    assert set(TRANSFORM_COLUMNS) <= set(table.columns)
    rows = {r.sop_instance_uid: r for r in table.select("sop_instance_uid", *VALUE_COLUMNS).collect()}
    ct_uid = pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPInstanceUID
    assert rows["1.2.old"].rescale_slope is None and rows["1.2.old"].dtype == "int16"
    assert (rows[ct_uid].dtype, rows[ct_uid].rescale_intercept, rows[ct_uid].invert) == ("int16", -1024.0, False)
    for row in rows.values():  # both generations read as the same values
        assert row_values(row).tobytes() == before.pixels.tobytes()
    assert table_ref(cfg, Table.IMAGES).add_missing_columns(spark, IMAGES) == []
    frames = str(cfg.ingest.images_row_group_frames)  # and the row-group layout of its later writes
    assert ref.set_properties(spark, {"parquet.block.row.count.limit": frames}) == {}
