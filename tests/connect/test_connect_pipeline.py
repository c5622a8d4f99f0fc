"""radlake over Spark Connect gives the tables a classic local session gives (``make connect-test``).

The same inputs go through radlake's command line twice, each command a process of its
own: once on a classic local session, once as a Spark Connect client
(``--set spark.remote=sc://127.0.0.1:<port>``) of the server the ``connect_server``
fixture starts (Delta, ``local[2]``). A Spark Connect client has no SparkContext, so
this runs every Spark Connect path of radlake: no broadcast, accumulator or JVM handle,
Delta tables through SQL rather than ``delta.tables.DeltaTable``.

The archive: two synthetic studies (one zipped) with their labels, plus real and hostile
files: a copy of an instance (a duplicate), a copy with other pixel values under the same
SOPInstanceUID (compared on the executors: a conflict), an instance whose pixels are cut
short and one with a frame cut short (pixel failures), empty, random, truncated and non-DICOM files, and a zip with a
member that climbs out of it. Then every table (ingest's six, annotations and splits;
then vertebra crops, predictions and study findings from a registered pair of models) is
read with delta-rs and compared row for row on its keys, leaving out the run ids and
timestamps. Marked ``connect``, which ``make test`` leaves out.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml

from dicom_files import TEST_FILES, rle_with_a_cut_frame, write_bad_files
from radlake.config import RadlakeConfig, load_config
from radlake.tables import Table, table_ref
from spark_daemons import run_command

pytestmark = pytest.mark.connect

#: Seconds one command may take.
COMMAND_TIMEOUT_S = 600
MODES = ("classic", "connect")

SETTINGS: dict[str, Any] = {
    "environment": "test",
    "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"},
    "ingest": {"image_rule": "modality = 'MR'"},  # also the real MR files, and the one with a cut frame
    "crops": {"size": 64, "source": "both", "min_score": 0.0},
    "score": {"vertebra_threshold": 0.0, "schmorl_threshold": 0.0},
}
SYNTH = {
    "studies": 2,
    "seed": 11,
    "image_size": 128,
    "sagittal_slices": 5,
    "axial_slices": 1,
    "coronal_slices": 1,
    "zip_fraction": 0.5,
    "node_fraction": 0.5,
}

#: Each table's key, and the columns that name a run or its time (they differ between the two runs).
KEYS = {
    Table.INSTANCES: ("sop_instance_uid",),
    Table.SERIES: ("series_key",),
    Table.IMAGES: ("sop_instance_uid", "frame_index"),
    Table.QUARANTINE: ("quarantine_id",),
    Table.DUPLICATES: ("duplicate_id",),
    Table.INGEST_FILES: ("path", "file_size", "modification_time"),
    Table.ANNOTATIONS: ("annotation_id",),
    Table.SPLITS: ("study_instance_uid",),
    Table.VERTEBRA_CROPS: ("crop_id",),
    Table.PREDICTIONS: ("sop_instance_uid", "frame_index", "vertebra_model_uri", "schmorl_model_uri"),
    Table.STUDY_FINDINGS: ("series_key", "vertebra_model_uri", "schmorl_model_uri"),
}
RUN_COLUMNS = frozenset(
    {
        "ingest_run_id",
        "ingested_at",
        "recorded_at",
        "quarantined_at",
        "updated_run_id",
        "updated_at",
        "import_run_id",
        "imported_at",
        "assign_run_id",
        "assigned_at",
        "crops_run_id",
        "created_at",
        "score_run_id",
        "scored_at",
    }
)


def _hostile_files(root: Path) -> None:
    """Real instances, copies of one of them and files that must end in the quarantine."""
    mr = (TEST_FILES / "MR_small.dcm").read_bytes()
    real = root / "real"
    real.mkdir()
    (real / "MR_small.dcm").write_bytes(mr)
    shutil.copy(TEST_FILES / "CT_small.dcm", real / "CT_small.dcm")
    copies = root / "copies"
    copies.mkdir()
    (copies / "MR_small_again.dcm").write_bytes(mr)  # same bytes: a duplicate
    other = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    other.PixelData = bytes(reversed(other.PixelData))  # same SOPInstanceUID, other pixels: a conflict
    buffer = io.BytesIO()
    other.save_as(buffer)
    (copies / "MR_small_other_pixels.dcm").write_bytes(buffer.getvalue())
    # frames 0-4 decode, then a failure; the detectors take frames with a spacing: the file has none
    frame_cut = rle_with_a_cut_frame(5, entropy="radlake-connect-test-frame-cut", pixel_spacing=[0.5, 0.5])
    write_bad_files(root / "bad", entropy="radlake-connect-test-pixels-cut", frame_cut=frame_cut)


def _last_json_object(text: str) -> dict[str, Any]:
    """The JSON object a command printed last (it starts with a line that is just ``{``)."""
    start = text.rindex("\n{\n") + 1 if "\n{\n" in text else text.index("{\n")
    return json.loads(text[start:])


class Runs:
    """The two storage roots (classic, Spark Connect) and radlake's command line against each."""

    def __init__(self, root: Path, server) -> None:
        self.root = root
        self.server = server
        self.conf = root / "conf.yml"
        settings = {**SETTINGS, "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}}
        self.conf.write_text(yaml.safe_dump(settings))
        self.seconds: dict[str, float] = {}

    def config(self, mode: str) -> RadlakeConfig:
        return load_config(str(self.conf), overrides=[f"storage.root={self.root / mode}"])

    def radlake(self, mode: str, step: str, *args: str) -> tuple[str, str]:
        """Run ``python -m radlake <args>`` on a classic local session or over Spark Connect."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        out, err = logs / f"{mode}-{step}.out", logs / f"{mode}-{step}.err"
        command = [sys.executable, "-m", "radlake", *args, "--conf", str(self.conf)]
        command += ["--set", f"storage.root={self.root / mode}"]
        if mode == "connect":
            command += ["--set", f"spark.remote={self.server.url}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARK_REMOTE", "SPARK_CONNECT"))}
        env["RADLAKE_DEID_KEY"] = "radlake-connect-test"  # the same pseudonyms in both runs
        started = time.monotonic()
        returncode = run_command(command, cwd=self.root, env=env, out=out, err=err, timeout_s=COMMAND_TIMEOUT_S)
        self.seconds[f"{mode}-{step}"] = round(time.monotonic() - started, 1)
        if returncode != 0:
            server = f"\nserver log:\n{self.server.logs()}" if mode == "connect" else ""
            pytest.fail(f"radlake {step} ({mode}) exited with {returncode}:\n{_tail(err)}{server}")
        return out.read_text(errors="replace"), err.read_text(errors="replace")


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="module")
def runs(connect_server, tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("connect-runs"), connect_server)


@pytest.fixture(scope="module")
def archive(runs) -> tuple[Path, Path]:
    """(archive folder, its labels file): two synthetic studies plus real and hostile files."""
    from radlake.synth.archive import generate_archive
    from radlake.synth.params import SynthConfig

    root = runs.root / "archive"
    summary = generate_archive(root / "synth", SynthConfig(**SYNTH))
    _hostile_files(root)
    return root, summary.labels_path


@pytest.fixture(scope="module")
def ingested(runs, archive) -> dict[str, dict[str, dict]]:
    """Per mode: the summaries of ``ingest`` and ``labels import`` (which also assigns splits)."""
    folder, labels = archive
    summaries: dict[str, dict[str, dict]] = {}
    for mode in MODES:
        out, _ = runs.radlake(mode, "ingest", "ingest", "--archive", str(folder))
        summaries[mode] = {"ingest": _last_json_object(out)}
        out, _ = runs.radlake(mode, "labels", "labels", "import", "--file", str(labels))
        summaries[mode].update(_last_json_object(out))
    (runs.root / "seconds.json").write_text(json.dumps(runs.seconds, indent=2))
    return summaries


def _normal(value: Any) -> Any:
    """``value`` with floats at 12 significant digits (sums over other partitions may differ in the last bits)."""
    if isinstance(value, float):
        return value if math.isnan(value) or math.isinf(value) else float(f"{value:.12g}")
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _rows(config: RadlakeConfig, table: Table) -> tuple[list[str], dict[tuple, dict]]:
    """(column names, rows by key without the run columns) of ``table``, read with delta-rs (no JVM)."""
    from deltalake import DeltaTable

    data = DeltaTable(table_ref(config, table).path).to_pyarrow_table()
    rows: dict[tuple, dict] = {}
    for row in data.to_pylist():
        key = tuple(row[k] for k in KEYS[table])
        assert key not in rows, f"{table.value}: key {key} twice"
        rows[key] = {k: _normal(v) for k, v in row.items() if k not in RUN_COLUMNS}
    return [f"{f.name}: {f.type} {'' if f.nullable else 'NOT NULL'}" for f in data.schema], rows


def _assert_same_table(runs: Runs, table: Table) -> int:
    """Assert that the classic and the Spark Connect run wrote the same rows (and columns); return the rows."""
    classic_columns, classic = _rows(runs.config("classic"), table)
    connect_columns, connect = _rows(runs.config("connect"), table)
    assert connect_columns == classic_columns, table.value
    assert sorted(connect, key=repr) == sorted(classic, key=repr), f"{table.value}: other keys"
    differ = [key for key in classic if classic[key] != connect[key]]
    details = [
        {c: (classic[key][c], connect[key][c]) for c in classic[key] if classic[key][c] != connect[key][c]}
        for key in differ[:3]
    ]
    assert not differ, f"{table.value}: {len(differ)} rows differ, e.g. {differ[:3]}: {str(details)[:3000]}"
    return len(classic)


INGEST_TABLES = (
    Table.INSTANCES,
    Table.SERIES,
    Table.IMAGES,
    Table.QUARANTINE,
    Table.DUPLICATES,
    Table.INGEST_FILES,
)


def test_ingest_and_labels_over_spark_connect_equal_a_classic_run(runs, ingested):
    volatile = {"run_id", "seconds", "phase_seconds"}
    summaries = {mode: {step: {k: v for k, v in s.items() if k not in volatile} for step, s in steps.items()}
                 for mode, steps in ingested.items()}  # fmt: skip
    assert summaries["connect"] == summaries["classic"]
    ingest = summaries["classic"]["ingest"]
    # Every path of the job ran: duplicates, a conflict (compared on the executors), pixel failures.
    assert ingest["new_instances"] > 0 and ingest["new_images"] > 0
    assert ingest["duplicates"] >= 1 and ingest["conflicts"] >= 1 and ingest["quarantined"] >= 6
    rows = {table: _assert_same_table(runs, table) for table in (*INGEST_TABLES, Table.ANNOTATIONS, Table.SPLITS)}
    assert rows[Table.INSTANCES] == ingest["new_instances"]
    assert rows[Table.IMAGES] == ingest["new_images"]
    assert rows[Table.ANNOTATIONS] == summaries["classic"]["labels"]["inserted"] > 0
    assert rows[Table.SPLITS] == summaries["classic"]["splits"]["studies_in_images"] == SYNTH["studies"] + 2  # 2 real


def test_a_second_ingest_over_spark_connect_finds_nothing_new(runs, ingested, archive):
    out, _ = runs.radlake("connect", "ingest-again", "ingest", "--archive", str(archive[0]))
    again = _last_json_object(out)
    assert again["files_ingested"] == 0 and again["files_unchanged"] == again["files_seen"] > 0
    assert again["series"] == ingested["connect"]["ingest"]["series"]


def _register_models(config: RadlakeConfig) -> None:
    """Log an untrained, seeded, confident pair of detectors and make each the champion of its registered model."""
    import mlflow
    import pandas as pd
    import torch

    from radlake.dicom.pixels import encode_pixels
    from radlake.models.detector import REGRESSION_BIAS, build_detector, schmorl_spec, vertebra_spec
    from radlake.models.pyfunc import log_detector
    from radlake.tracking import configure_mlflow

    buf, dtype = encode_pixels(np.zeros((64, 64), np.float32))
    example = pd.DataFrame([{"pixels": buf, "dtype": dtype, "height": 64, "width": 64, "pixel_spacing": [1.0, 1.0]}])
    configure_mlflow(config)
    specs = (
        (vertebra_spec(image_size=128, score_threshold=0.0, detections_per_image=6), config.models.vertebra, 1),
        (schmorl_spec(image_size=64, score_threshold=0.0, detections_per_image=3), config.models.schmorl, 2),
    )
    for spec, name, seed in specs:
        torch.manual_seed(seed)
        model = build_detector(spec)
        torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
        torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 3.0)
        with mlflow.start_run(run_name=f"connect-test-{spec.name}"):
            info = log_detector(model, spec, input_example=example, registered_model_name=name)
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", str(info.registered_model_version))


def test_crops_and_score_over_spark_connect_equal_a_classic_run(runs, ingested):
    _register_models(runs.config("classic"))  # one MLflow store for both runs: the same model versions
    for mode in MODES:
        runs.radlake(mode, "crops", "crops")
        runs.radlake(mode, "score", "score")
    (runs.root / "seconds.json").write_text(json.dumps(runs.seconds, indent=2))
    rows = {table: _assert_same_table(runs, table) for table in KEYS if table not in (*INGEST_TABLES,)}
    assert rows[Table.VERTEBRA_CROPS] > 0
    assert rows[Table.PREDICTIONS] == ingested["classic"]["ingest"]["new_images"]
    assert rows[Table.STUDY_FINDINGS] > 0
