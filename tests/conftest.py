"""Shared fixtures: one local Spark + Delta session for the whole test run, in a temporary root."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from radlake.config import RadlakeConfig, load_config
from radlake.tables import Table, table_ref


@pytest.fixture(scope="session")
def radlake_root(tmp_path_factory: pytest.TempPathFactory):
    """A fresh ``storage.root`` for the session: warehouse, MLflow store and caches go here."""
    return tmp_path_factory.mktemp("radlake-root")


@pytest.fixture(scope="session")
def config(radlake_root) -> RadlakeConfig:
    """The local configuration with everything stored under the session's temporary root."""
    return load_config(
        "local",
        overrides=[
            f"storage.root={radlake_root}",
            "environment=test",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=2g",
        ],
    )


@pytest.fixture(scope="session")
def spark(config):
    """The local Delta-enabled Spark session (built once, stopped at the end)."""
    from radlake.spark import get_spark

    session = get_spark(config)
    yield session
    session.stop()


# A labelled synthetic archive, shared by the data, training and registry tests.

#: A small archive: 4 studies (one with row spacing != column spacing), 5 sagittal slices of 128 px,
#: one zipped study and Schmorl's nodes in most studies.
SYNTH = {
    "studies": 4,
    "seed": 3,
    "image_size": 128,
    "sagittal_slices": 5,
    "axial_slices": 1,
    "coronal_slices": 1,
    "zip_fraction": 0.25,
    "node_fraction": 0.5,
}


def data_config(root: Path, *overrides: str) -> RadlakeConfig:
    """The local configuration with its own ``storage.root`` (and any extra ``key=value``)."""
    base = [f"storage.root={root}", "environment=test", "spark.master=local[2]", "spark.shuffle_partitions=2"]
    return load_config("local", overrides=[*base, *overrides])


@dataclass(frozen=True)
class LabelledArchive:
    """The synthetic archive after ``ingest``, ``labels import`` and ``labels split``."""

    config: RadlakeConfig
    archive: Path
    labels_path: Path
    labels: dict[str, Any]
    ingest: Any  # radlake.ingest.job.IngestSummary
    imported: Any  # radlake.data.labels.LabelsImportSummary
    splits: Any  # radlake.data.splits.SplitSummary


@pytest.fixture(scope="session")
def labelled_archive(spark, tmp_path_factory) -> LabelledArchive:
    """Generate, ingest and label a 4-study archive once, in a storage root of its own."""
    from radlake.data.labels import import_labels
    from radlake.data.splits import assign_splits
    from radlake.ingest import run_ingest
    from radlake.synth import SynthConfig, generate_archive

    root = tmp_path_factory.mktemp("data-archive")
    archive = root / "archive"
    summary = generate_archive(archive, SynthConfig(**SYNTH))
    cfg = data_config(root / "radlake")
    ingest = run_ingest(spark, cfg, archive=str(archive))
    imported = import_labels(spark, cfg, summary.labels_path)
    splits = assign_splits(spark, cfg)
    labels = json.loads(summary.labels_path.read_text())
    return LabelledArchive(cfg, archive, summary.labels_path, labels, ingest, imported, splits)


#: (sop_instance_uid, frame_index, study_instance_uid, height, width, pixel_spacing [row, column] mm)
Frame = tuple[str, int, str, int, int, Sequence[float] | None]


@pytest.fixture(scope="session")
def add_images(spark) -> Callable[[RadlakeConfig, Sequence[Frame]], None]:
    """Append hand-made rows (metadata only, no pixels) to a configuration's ``images`` table."""
    from radlake.ingest.schema import IMAGES

    def add(config: RadlakeConfig, frames: Sequence[Frame]) -> None:
        ref = table_ref(config, Table.IMAGES)
        ref.ensure(spark, IMAGES)
        values = {f.name: None for f in IMAGES.fields}
        rows = []
        for sop, frame, study, height, width, spacing in frames:
            row = dict(values)
            row.update(
                sop_instance_uid=sop,
                frame_index=frame,
                study_instance_uid=study,
                series_instance_uid=f"{study}.1",
                series_key=f"{study}.1/SAGITTAL",
                slice_index=frame,
                plane="SAGITTAL",
                height=height,
                width=width,
                pixel_spacing=list(spacing) if spacing is not None else None,
                dtype="float16",
            )
            rows.append(tuple(row[f.name] for f in IMAGES.fields))
        spark.createDataFrame(rows, IMAGES).write.format("delta").mode("append").save(ref.path)

    return add


@pytest.fixture(scope="session")
def make_config() -> Callable[..., RadlakeConfig]:
    """:func:`data_config` as a fixture: ``make_config(root, "labels.split_seed=1", ...)``."""
    return data_config
